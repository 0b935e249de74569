"""The ``distributed`` strategy (kernels/distributed.py, Dask): every kernel's answers on
a LocalCluster, availability without Dask, and the faults (a worker killed mid-run,
Ctrl-C, a scheduler that does not answer).

One LocalCluster of 2 workers serves the whole module (executors.get_executor's warm
cache) and is shut down at the end; Dask tests are skipped where it is not installed.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kernels import executors, registry

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2


@pytest.fixture(scope="module")
def cluster():
    """The warm 2-worker LocalCluster executor, closed when the module's tests end."""
    pytest.importorskip("distributed")
    executor = executors.get_executor("dask", WORKERS)
    yield executor
    executor.close()


# ---------------------------------------------------------------------------
# Availability (no Dask needed)
# ---------------------------------------------------------------------------


def test_every_kernel_offers_distributed_with_inners():
    assert executors.POOL_STRATEGIES["distributed"] == "dask"
    for kernel in registry.kernel_names():
        spec = registry.spec(kernel)
        assert "distributed" in spec.strategy_names()
        assert spec.inners("distributed") == registry.INNERS


def test_missing_dask_makes_the_strategy_unavailable_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(executors.POOL_REQUIRES, "distributed",
                        ("kernelrace_no_such_module", "distributed"))
    for kernel in registry.kernel_names():
        info = {i.name: i for i in registry.strategies(kernel)}["distributed"]
        assert not info.available
        assert "pip install '.[distributed]'" in info.reason
        assert ("distributed", "numba") not in registry.variants(kernel)
        with pytest.raises(RuntimeError, match=r"distributed.*unavailable.*\[distributed\]"):
            registry.require_available(registry.kernel_module(kernel), "distributed")
    # Other pool strategies are untouched.
    assert executors.pool_unavailable_reason("multiprocess") is None


def test_executor_contract_flags():
    from kernels.distributed import DaskExecutor

    assert executors.shares_host_memory("processes")
    assert not executors.shares_host_memory("dask")
    assert DaskExecutor.warm_key(2)[0] == 2


# ---------------------------------------------------------------------------
# Answers: every kernel, every chunk kernel, the same checks as every strategy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("inner", registry.INNERS)
@pytest.mark.parametrize("kernel", registry.kernel_names())
def test_verify_distributed(cluster, kernel, inner):
    checks = registry.kernel_module(kernel).verify("distributed", inner, WORKERS)
    assert checks
    bad = [(c.name, c.detail) for c in checks if not c.ok]
    assert not bad, bad


def test_pool_is_warm_and_single_threaded(cluster):
    assert executors.get_executor("dask", WORKERS) is cluster
    assert cluster.owns_cluster() and cluster.cluster_workers() == WORKERS

    def limits(_):
        import numba
        from threadpoolctl import threadpool_info

        return numba.get_num_threads(), max(
            (i["num_threads"] for i in threadpool_info()), default=1)

    assert cluster.map(limits, [0, 1]) == [(1, 1), (1, 1)]


def test_task_error_reaches_the_caller(cluster):
    def fail(x):
        if x == 3:
            raise ValueError("task 3 failed")
        return x

    with pytest.raises(ValueError, match="task 3 failed"):
        cluster.map(fail, list(range(6)))
    assert cluster.map(fail, [0, 1]) == [0, 1]  # still usable


def test_shared_arrays_reach_tasks_nested_in_tuples(cluster):
    import numpy as np

    def read(task):
        handle, i = task
        return float(executors.shared_arrays(handle)["x"][i])

    for step in range(3):  # each call scatters afresh, under keys of its own
        arrays = {"x": np.arange(100_000, dtype=np.float64) + step}
        with cluster.share(arrays) as handle:
            assert cluster.map(read, [(handle, i) for i in (0, 5, 99_999)]) == [
                step, 5 + step, 99_999 + step]


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------


def test_worker_killed_mid_run_is_survived(cluster):
    from kernels import sieve

    n = 10**10  # 40 tasks of ~0.2 s each on 2 workers: a few seconds
    sieve.count_primes(10**6, strategy="distributed", workers=WORKERS)  # JIT loaded
    victim = cluster.pids()[0]

    def kill():
        time.sleep(1.0)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        count = sieve.count_primes(n, strategy="distributed", workers=WORKERS)
    finally:
        killer.join()
    assert count == sieve.KNOWN_PI[n]
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)
    # The nanny restarted the worker: the cluster is whole again for later calls.
    deadline = time.monotonic() + 30
    while cluster.cluster_workers() < WORKERS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.cluster_workers() == WORKERS


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scheduler_that_does_not_answer_errors_within_the_timeout(monkeypatch):
    pytest.importorskip("distributed")
    from kernels import distributed as kd

    address = f"tcp://127.0.0.1:{_unused_port()}"
    monkeypatch.setenv(kd.SCHEDULER_ENV, address)
    monkeypatch.setattr(kd, "CONNECT_TIMEOUT_S", 2.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=f"no Dask scheduler answered at {address} within 2 s"):
        executors.get_executor("dask", WORKERS)
    assert time.monotonic() - started < 2.0 + 8.0


def _wait_for_workers(address: str, n: int, timeout: float = 60.0) -> None:
    import distributed

    with distributed.Client(address, timeout=timeout, set_as_default=False) as client:
        client.wait_for_workers(n, timeout=timeout)


def test_a_running_cluster_at_a_scheduler_address_runs_every_kernel(monkeypatch, tmp_path):
    """A real `dask scheduler` and two `dask worker` processes (not a LocalCluster), as a
    user's cluster would be: kernelrace connects through KERNELRACE_SCHEDULER, runs
    every kernel's checks there, and neither starts nor stops the cluster."""
    pytest.importorskip("distributed")
    from kernels import distributed as kd

    address = f"tcp://127.0.0.1:{_unused_port()}"
    env = {**os.environ, **kd._WORKER_ENV}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
         address.rsplit(":", 1)[1], "--no-dashboard"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen(
        [sys.executable, "-m", "dask", "worker", address, "--nworkers", "2", "--nthreads",
         "1", "--no-dashboard"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_workers(address, 2)
        monkeypatch.setenv(kd.SCHEDULER_ENV, address)
        for kernel in registry.kernel_names():
            module = registry.kernel_module(kernel)
            checks = module.verify("distributed", "numba", 2)
            bad = [c for c in checks if not c.ok]
            assert checks and not bad, (kernel, bad[:3])
        executor = executors.get_executor("dask", WORKERS)
        assert executor.address == address
        executors.shutdown_pools()  # closes kernelrace's client only
        assert scheduler.poll() is None and worker.poll() is None, "the cluster was stopped"
        _wait_for_workers(address, 2, timeout=10)
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
        for proc in (worker, scheduler):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


_CTRL_C_SCRIPT = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)
from kernels import executors, sieve
sieve.count_primes(10**6, strategy='distributed', workers=2)
print(*executors.get_executor('dask', 2).pids(), flush=True)
sieve.count_primes(4 * 10**11, strategy='distributed', workers=2)  # minutes of work
print("finished", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone in all but name
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_cancels_and_leaves_no_worker_behind():
    pytest.importorskip("distributed")
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_SCRIPT], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the script did not start its cluster within 120 s"
        line = proc.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, (line, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(1.5)  # well inside the long call
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "finished" not in out
    assert "KeyboardInterrupt" in err, err[-3000:]
    assert waited < 30, f"exited {waited:.1f} s after Ctrl-C"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:  # do not leave them to the next test either
        os.kill(p, signal.SIGKILL)
    assert not left, f"Dask workers {left} outlived their Ctrl-C'd owner"
    print(f"exited {waited:.2f} s after Ctrl-C; workers gone")


_UNGUARDED = """
from kernels import sieve
print(sieve.count_primes(10**6, strategy="distributed", workers=2), flush=True)
"""


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_distributed_works_without_a_main_guard(tmp_path, how: str) -> None:
    """Dask spawns its workers, and spawn re-runs the caller's main script in each: an
    unguarded script used to start a cluster inside every worker ("Nanny failed to
    start"). The LocalCluster starts with the main module hidden from its workers."""
    pytest.importorskip("distributed")
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED)
    if how == "script":
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)
    else:
        done = subprocess.run([sys.executable, "-"], input=_UNGUARDED, cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["78498"]


# ---------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sieve_1e10_distributed(cluster):
    from kernels import sieve

    n = 10**10
    assert sieve.count_primes(n, strategy="distributed", workers=WORKERS) == sieve.KNOWN_PI[n]
