"""The ``distributed`` strategy (kernels/distributed.py, Dask): every kernel's answers on
a LocalCluster, availability without Dask, and the faults (a worker killed mid-run,
Ctrl-C, a scheduler that does not answer).

One LocalCluster of 2 workers serves the whole module (executors.get_executor's warm
cache) and is shut down at the end; Dask tests are skipped where it is not installed.
"""

from __future__ import annotations

import importlib
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
from _procs import alive as _alive

from kernels import executors, registry

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2


@pytest.fixture(autouse=True)
def _split_as_asked(monkeypatch):
    """These tests are about how a split cache travels: every attention step is split as
    asked, whatever attention's minimum grain says for such small caches (one test below
    checks the grain itself)."""
    decode = importlib.import_module("kernels.attention.decode")  # the module, not decode()
    monkeypatch.setattr(decode, "MIN_GRAIN", {})


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


_RESTART = """
import os, signal, time
from kernels import executors
cluster = executors.get_executor("dask", 2)
victim = cluster.pids()[0]
os.kill(victim, signal.SIGKILL)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # until the nanny has restarted it
    time.sleep(0.2)
    try:
        pids = cluster.pids()
    except Exception:
        continue
    if len(pids) == 2 and victim not in pids:
        break
print(sieve.count_primes(10**6, strategy="distributed", workers=2), flush=True)
"""


@pytest.mark.parametrize("how", ["script", "stdin", "restart"])
def test_distributed_works_without_a_main_guard(tmp_path, how: str) -> None:
    """Dask spawns its workers, and spawn re-runs the caller's main script in each: an
    unguarded script used to start a cluster inside every worker ("Nanny failed to
    start"). Nanny workers are spawned with the main module hidden, also when the nanny
    restarts one that died ("restart": the script kills a worker, then counts again)."""
    pytest.importorskip("distributed")
    script = tmp_path / "unguarded.py"
    code = _UNGUARDED + (_RESTART if how == "restart" else "")
    script.write_text(code)
    if how == "stdin":
        done = subprocess.run([sys.executable, "-"], input=code, cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)
    else:
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["78498"] * (2 if how == "restart" else 1)
    assert "failed to start" not in done.stderr


# ---------------------------------------------------------------------------
# Scale
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sieve_1e10_distributed(cluster):
    from kernels import sieve

    n = 10**10
    assert sieve.count_primes(n, strategy="distributed", workers=WORKERS) == sieve.KNOWN_PI[n]


# ---------------------------------------------------------------------------
# Attention: shards kept on the workers between decode steps
# ---------------------------------------------------------------------------


def test_shard_planning_helpers():
    from kernels import distributed as D

    assert D.missing_ranges([], 10) == [(0, 10)]
    assert D.missing_ranges([(0, 4), (6, 8)], 10) == [(4, 6), (8, 10)]
    assert D.missing_ranges([(6, 12), (0, 6)], 10) == []
    assert D.fill_levels([0, 0], 7) == [4, 3]
    assert D.fill_levels([10, 4], 1) == [0, 1]
    assert D.fill_levels([10, 4], 10) == [2, 8]
    assert sum(D.fill_levels([3, 9, 1], 5)) == 5
    assert D.take_ranges([(0, 3), (5, 9)], 5) == ([(0, 3), (5, 7)], [(7, 9)])
    # A block holding items 100-110 then 0-5: those below 104 sit at offsets 0-4, 10-15.
    assert D.block_pieces([(100, 110), (0, 5)], 104) == [(0, 4), (10, 15)]


def _warm(cluster):
    """The warm executor now (an earlier test may have replaced the fixture's)."""
    return executors.get_executor("dask", WORKERS)


def _decode_both(cache, query):
    from kernels import attention as A

    got = A.decode(cache, query, strategy="distributed", inner="numba", workers=WORKERS)
    want = A.decode(cache, query, strategy="numpy", workers=1)
    scale = float(abs(want).max())
    assert abs(got - want).max() <= 2e-5 * max(1.0, scale) + 2e-4 * scale


@pytest.mark.parametrize("preset", ["gqa-small", "mla-small"])
def test_attention_shards_stay_on_the_workers_and_only_new_tokens_travel(cluster, preset):
    import gc

    from kernels import attention as A

    cluster = _warm(cluster)
    cache = A.make_cache(A.SMALL_CONFIGS[preset], capacity=200)
    A.fill_random(cache, 120, seed=0)
    query = A.random_query(cache, seed=5)
    _decode_both(cache, query)
    first = cluster.kept_blocks(cache)
    assert sorted(len(r) for _, r in first) == [1, 1]  # one shard per worker, not a copy each
    assert sorted(rs[0] for _, rs in first) == [(0, 60), (60, 120)]
    _decode_both(cache, query)
    assert cluster.kept_blocks(cache) == first  # nothing sent again
    for step in range(5):  # a decode loop: one token per step
        A.fill_random(cache, 1, seed=10 + step)
        _decode_both(cache, query)
    kept = cluster.kept_blocks(cache)
    ranges = sorted(r for _, rs in kept for r in rs)
    assert ranges[:2] == [(0, 60), (60, 120)]  # the old shards stayed where they were
    assert sum(hi - lo for lo, hi in ranges) == 125
    assert sorted(set(a for a, _ in kept)) == sorted(set(a for a, _ in first))
    cache.length = 110  # a prefix: no write, the shards serve it
    _decode_both(cache, query)
    assert cluster.kept_blocks(cache) == kept
    A.fill_random(cache, 3, seed=99)  # overwrites tokens 110-112: blocks holding them go
    _decode_both(cache, query)
    ranges = sorted(r for _, rs in cluster.kept_blocks(cache) for r in rs)
    assert ranges[0] == (0, 60) and ranges[-1][1] == 113  # the rest was sent again
    assert sum(hi - lo for lo, hi in ranges) == 113
    del cache
    gc.collect()
    assert cluster._kept == {}  # the owner is gone: so are its shards


def test_attention_shards_are_resent_after_a_worker_dies_between_steps(cluster):
    from kernels import attention as A

    cluster = _warm(cluster)
    cache = A.make_cache(A.SMALL_CONFIGS["gqa-small"], capacity=100)
    A.fill_random(cache, 80, seed=0)
    query = A.random_query(cache, seed=2)
    _decode_both(cache, query)
    os.kill(cluster.pids()[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while cluster.cluster_workers() == WORKERS and time.monotonic() < deadline:
        time.sleep(0.05)  # the scheduler notices the loss
    while cluster.cluster_workers() < WORKERS and time.monotonic() < deadline:
        time.sleep(0.2)  # and the nanny restarts it
    _decode_both(cache, query)


def test_attention_survives_a_worker_killed_during_the_steps(cluster):
    """Scattered shards cannot be recomputed: the tasks that needed a dead worker's are
    cancelled, and the step is run once more with the shards sent afresh."""
    from kernels import attention as A

    cluster = _warm(cluster)
    cache = A.make_cache(A.SMALL_CONFIGS["gqa-small"], capacity=40_000)
    A.fill_random(cache, 40_000, seed=0)
    query = A.random_query(cache, seed=3)
    want = A.decode(cache, query, strategy="numpy", workers=1)
    A.decode(cache, query, strategy="distributed", inner="numba", workers=WORKERS)
    victim = cluster.pids()[0]
    killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
    killer.start()
    steps, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < 2.0 or steps < 5:
            got = A.decode(cache, query, strategy="distributed", inner="numba",
                           workers=WORKERS)
            assert abs(got - want).max() <= 1e-4 * max(1.0, float(abs(want).max()))
            steps += 1
    finally:
        killer.join()
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)


def test_a_result_row_records_the_cluster_and_its_size(cluster):
    from kernels.harness import runner

    point = runner.Point("distributed", "numba", 10**5, WORKERS)
    row = runner.run_point("sieve", point, repeat=1, warmup=0, options={})
    assert row["cluster"] == "local" and row["cluster_workers"] == WORKERS
    assert row["count"] == 9592
    plain = runner.run_point("sieve", runner.Point("numba", None, 10**5, 1), repeat=1,
                             warmup=0, options={})
    assert "cluster" not in plain


def test_a_step_below_the_grain_runs_as_one_task_on_the_warm_cluster(cluster, monkeypatch):
    """Below the minimum grain the step is one task on the same warm 2-worker cluster:
    no second cluster of one worker is started for it."""
    from kernels import attention as A

    decode = importlib.import_module("kernels.attention.decode")
    monkeypatch.setattr(decode, "MIN_GRAIN", {"distributed:numba": 10**9})
    cluster = _warm(cluster)
    cache = A.make_cache(A.SMALL_CONFIGS["gqa-small"], capacity=64)
    A.fill_random(cache, 64, seed=0)
    query = A.random_query(cache, seed=1)
    before = set(executors._pools)
    _decode_both(cache, query)
    assert set(executors._pools) == before
    assert [len(r) for _, r in cluster.kept_blocks(cache)] == [1]  # one shard, one task


def test_a_cluster_with_no_worker_for_a_moment_is_waited_for(monkeypatch):
    """Its nannies restarting lost workers, a cluster has none for a moment: a step waits
    for one instead of failing on an empty list, and says so when none comes."""
    pytest.importorskip("distributed")
    D = importlib.import_module("kernels.distributed")

    class Client:
        def __init__(self, arrive: bool):
            self.arrive, self.waited = arrive, False

        def scheduler_info(self):
            return {"workers": {"tcp://w:1": {}} if self.waited and self.arrive else {}}

        def wait_for_workers(self, n, timeout):
            self.waited = True
            if not self.arrive:
                raise TimeoutError

    executor = object.__new__(D.DaskExecutor)
    executor.address = None
    for arrive in (True, False):
        client = Client(arrive)
        monkeypatch.setattr(D.DaskExecutor, "client", property(lambda self, c=client: c))
        if arrive:
            assert executor._addresses(2) == ("tcp://w:1",)
        else:
            with pytest.raises(RuntimeError, match="has no worker"):
                executor._addresses(2)
        assert client.waited


def test_a_script_with_two_clusters_ends_without_dask_logs():
    """Two warm clusters (1 and 2 workers), closed at exit: Dask's INFO lines about
    retiring workers and closing nannies stay quiet (they filled the end of
    ``kernelrace verify``), and the answers are right."""
    pytest.importorskip("distributed")
    code = ("from kernels import sieve\n"
            "for w in (1, 2):\n"
            "    print(sieve.count_primes(10_000, strategy='distributed', inner='numpy',"
            " workers=w))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1229", "1229"]
    assert " - INFO - " not in done.stderr, done.stderr
