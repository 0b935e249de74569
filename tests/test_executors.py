"""Executors: worker checks, ordered results, errors, thread limits, pool life cycle, Ctrl-C."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import _workers
import numba
import numpy as np
import pytest
from _procs import alive as _alive
from _procs import descendants as _descendants
from threadpoolctl import threadpool_info

from kernels import executors

REPO = Path(__file__).resolve().parents[1]
KINDS = executors.EXECUTOR_KINDS


@pytest.fixture(autouse=True)
def _close_pools():
    executors.shutdown_pools()
    yield
    executors.shutdown_pools()


def _wait_until_gone(pids, timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = {p for p in pids if _alive(p)}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")


# ---------------------------------------------------------------------------
# resolve_workers
# ---------------------------------------------------------------------------


def test_none_means_every_core_this_process_may_use() -> None:
    assert executors.resolve_workers(None) == executors.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        assert executors.cpu_count() == len(os.sched_getaffinity(0))
    assert 1 <= executors.cpu_count() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("workers", [1, 2, 7, np.int64(3), np.uint8(2), np.int32(1)])
def test_whole_numbers_are_accepted(workers) -> None:
    got = executors.resolve_workers(workers)
    assert got == int(workers) and type(got) is int


@pytest.mark.parametrize("workers", [0, -1, -100, np.int64(0)])
def test_workers_below_one_is_a_value_error(workers) -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        executors.resolve_workers(workers)


@pytest.mark.parametrize("workers", [1.5, 2.0, "2", True, False, [2], np.float64(2)])
def test_workers_of_another_type_is_a_type_error(workers) -> None:
    with pytest.raises(TypeError, match="workers must be an int"):
        executors.resolve_workers(workers)


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(ValueError, match="serial, threads, processes"):
        executors.get_executor("gpu", 1)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_workers_start_no_pool(kind: str) -> None:
    with pytest.raises(ValueError, match="workers"):
        executors.run_chunks(kind, _workers.square, [1, 2], 0)
    with pytest.raises(TypeError, match="workers"):
        executors.run_chunks(kind, _workers.square, [1, 2], "2")
    assert executors._pools == {}


# ---------------------------------------------------------------------------
# run_chunks: order and errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_results_come_back_in_task_order(kind: str, workers: int, reuse: bool) -> None:
    tasks = list(range(40))
    got = executors.run_chunks(kind, _workers.square, tasks, workers, reuse=reuse)
    assert got == [x * x for x in tasks]
    assert executors.run_chunks(kind, _workers.square, [], workers, reuse=reuse) == []


@pytest.mark.parametrize("kind", KINDS)
def test_lambdas_travel_to_every_executor(kind: str) -> None:
    # multiprocess pickles with dill, so a closure works on the process pool too.
    k = 3
    assert executors.run_chunks(kind, lambda x: x + k, [1, 2, 3], 2) == [4, 5, 6]


@pytest.mark.parametrize("kind", KINDS)
def test_a_worker_exception_reaches_the_caller_with_its_type_and_message(kind: str) -> None:
    with pytest.raises(_workers.TaskFailed, match="task 3 failed on purpose"):
        executors.run_chunks(kind, _workers.fail_on, range(8), 2)
    with pytest.raises(ValueError, match="bad task 2"):
        executors.run_chunks(kind, _workers.value_error_on, range(8), 2, reuse=False)


def test_a_failed_process_pool_is_terminated_and_forgotten() -> None:
    executors.run_chunks("processes", _workers.square, range(4), 2)
    executor = executors._pools[("processes", 2)]
    pids = executor.pids()
    assert len(pids) == 2
    with pytest.raises(_workers.TaskFailed):
        executors.run_chunks("processes", _workers.fail_on, range(8), 2)
    assert ("processes", 2) not in executors._pools
    assert executor.pids() == []
    assert _wait_until_gone(pids) == set()
    with pytest.raises(RuntimeError, match="closed"):
        executor.map(_workers.square, [1])
    # The next call starts a fresh pool and works.
    assert executors.run_chunks("processes", _workers.square, [5], 2) == [25]


# ---------------------------------------------------------------------------
# limit_threads
# ---------------------------------------------------------------------------


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info()]


@pytest.fixture
def numba_threads_at_most():
    """numba's pool set to its maximum first, so a cap and its undoing both show."""
    before = numba.get_num_threads()
    limit = int(numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(limit)
    yield limit
    numba.set_num_threads(before)


def test_limit_threads_caps_numba_and_blas_and_restores_them(numba_threads_at_most) -> None:
    limit = numba_threads_at_most
    blas_before = _blas_threads()
    with executors.limit_threads(1):
        assert numba.get_num_threads() == 1
        assert all(n == 1 for n in _blas_threads())
    assert numba.get_num_threads() == limit
    assert _blas_threads() == blas_before


def test_limit_threads_restores_after_an_exception(numba_threads_at_most) -> None:
    limit = numba_threads_at_most
    blas_before = _blas_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with executors.limit_threads(1):
            assert numba.get_num_threads() == 1
            raise RuntimeError("inside")
    assert numba.get_num_threads() == limit
    assert _blas_threads() == blas_before


def test_limit_threads_above_numbas_pool_is_capped_not_an_error(numba_threads_at_most) -> None:
    limit = numba_threads_at_most
    with executors.limit_threads(limit + 10):
        assert numba.get_num_threads() == limit
    if limit >= 2:
        with executors.limit_threads(2):
            assert numba.get_num_threads() == 2
            assert all(n <= 2 for n in _blas_threads())


def test_nested_limits_restore_each_level_and_numpy_calls_leave_numba_alone(
        numba_threads_at_most) -> None:
    """The inner limit finds the pools at 1 already (and touches nothing), the outer
    one still restores them; ``numba_pool=False`` caps the BLAS pools only."""
    limit = numba_threads_at_most
    blas_before = _blas_threads()
    with executors.limit_threads(1):
        with executors.limit_threads(1):
            assert numba.get_num_threads() == 1 and all(n == 1 for n in _blas_threads())
        assert numba.get_num_threads() == 1 and all(n == 1 for n in _blas_threads())
    assert numba.get_num_threads() == limit and _blas_threads() == blas_before
    with executors.limit_threads(1, numba_pool=False):
        assert numba.get_num_threads() == limit and all(n == 1 for n in _blas_threads())
    assert _blas_threads() == blas_before


def test_limit_threads_without_pools_caps_numba_alone(numba_threads_at_most) -> None:
    """``pools=False`` (the numba decode step: no BLAS call inside) leaves the BLAS pools
    as they are and still caps and restores numba's."""
    limit = numba_threads_at_most
    blas_before = _blas_threads()
    with executors.limit_threads(1, pools=False):
        assert numba.get_num_threads() == 1 and _blas_threads() == blas_before
    assert numba.get_num_threads() == limit and _blas_threads() == blas_before


def test_a_sigint_during_teardown_waits_for_its_end(sigint_handled) -> None:
    """sigint_deferred: the interrupt is raised when the block ends, not inside it; not
    again while one is being handled; not with reraise=False; the handler comes back."""
    before = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with executors.sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append(1)  # reached: the signal did not stop the block
    assert done == [1] and signal.getsignal(signal.SIGINT) is before
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        with executors.sigint_deferred():  # the first interrupt's clean-up
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    with executors.sigint_deferred(reraise=False):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before


def test_run_chunks_caps_threads_while_it_runs(numba_threads_at_most) -> None:
    seen = executors.run_chunks("serial", lambda _: numba.get_num_threads(), [0], 1)
    assert seen == [1]
    assert numba.get_num_threads() == numba_threads_at_most


def test_process_workers_run_one_thread() -> None:
    got = executors.run_chunks("processes", lambda _: numba.get_num_threads(), range(4), 2)
    assert got == [1, 1, 1, 1]


# ---------------------------------------------------------------------------
# Pool life cycle: warm (reuse=True) and cold (reuse=False)
# ---------------------------------------------------------------------------


@needs_proc
def test_warm_process_pool_keeps_its_workers() -> None:
    first = executors.run_chunks("processes", _workers.pid_of, range(8), 2, reuse=True)
    executor = executors.get_executor("processes", 2, reuse=True)
    assert executors._pools[("processes", 2)] is executor
    pids = executor.pids()
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    assert set(first) <= set(pids) and os.getpid() not in first
    second = executors.run_chunks("processes", _workers.pid_of, range(8), 2, reuse=True)
    assert executors.get_executor("processes", 2) is executor
    assert executor.pids() == pids
    assert set(second) <= set(pids)
    executors.shutdown_pools()
    assert executors._pools == {}
    assert _wait_until_gone(pids) == set()


@needs_proc
def test_cold_process_pool_leaves_no_live_workers() -> None:
    first = set(executors.run_chunks("processes", _workers.pid_of, range(8), 2, reuse=False))
    assert first and os.getpid() not in first
    assert executors._pools == {}
    assert not any(_alive(p) for p in first)  # close() joined them before returning
    second = set(executors.run_chunks("processes", _workers.pid_of, range(8), 2, reuse=False))
    assert first.isdisjoint(second)  # a new pool each time
    assert not any(_alive(p) for p in second)


def test_warm_thread_pool_is_shared_and_cold_one_is_shut_down() -> None:
    def pool_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("kernelrace")}

    before = pool_threads()
    executors.run_chunks("threads", _workers.square, range(8), 2, reuse=False)
    assert pool_threads() == before
    executors.run_chunks("threads", _workers.square, range(8), 2, reuse=True)
    executor = executors._pools[("threads", 2)]
    assert executors.get_executor("threads", 2) is executor
    executors.shutdown_pools()
    assert pool_threads() == before


# ---------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------

# A script file with a main guard, like a user's program: forkserver workers import the
# main module by path (as __mp_main__), and the guard keeps them from running it.
_CTRL_C_SCRIPT = """
import json
import signal

# Ctrl-C at a terminal reaches a foreground process; a shell that started this test run
# in the background may have passed SIGINT down as ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)

from kernels import executors, sieve

if __name__ == "__main__":
    executor = executors.get_executor("processes", 2, reuse=True)
    print(json.dumps(executor.pids()), flush=True)
    # Minutes of work on the warm pool above; SIGINT arrives long before it ends.
    sieve.count_primes(10**11, strategy="multiprocess", workers=2, inner="numpy")
    print("finished", flush=True)
"""


@needs_proc
def test_ctrl_c_during_a_multiprocess_count_leaves_no_orphans(tmp_path) -> None:
    script = tmp_path / "count_forever.py"
    script.write_text(_CTRL_C_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "the script did not start its pool within 120 s"
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        workers = json.loads(line)
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        time.sleep(1.0)  # let the count start on the workers
        assert proc.poll() is None
        # The forkserver, resource tracker and workers: everything the script started.
        started = _descendants(proc.pid)
        assert set(workers) <= started
        forkservers = {
            p for p in started if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()
        }
        assert forkservers - set(workers), "the script's forkserver was not found"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "finished" not in out
    assert "KeyboardInterrupt" in err and "executor.map" in err  # interrupted mid-count
    assert _wait_until_gone(started) == set(), "processes outlived the interrupted script"


def test_a_shared_cache_travels_to_process_workers_by_name_not_as_a_copy() -> None:
    """A ``shared=True`` cache shows read-only views of its segments: the process pool
    must still send them by name. (Once it did not, and copied a 32k GQA cache, 268 MB,
    into temporary segments at every decode step.)"""
    from kernels import attention, shared_memory
    from kernels.process_pool import ProcessExecutor

    cache = attention.make_cache(attention.SMALL_CONFIGS["gqa-small"], capacity=8,
                                 shared=True)
    try:
        own = {spec.name for spec in cache.segment_specs().values()}
        with ProcessExecutor.share(None, cache.arrays()) as specs:  # type: ignore[arg-type]
            assert {spec.name for spec in specs.values()} == own
        partial = cache.k[:, :, :4]  # not the whole segment: must be copied
        assert shared_memory.spec_of(partial) is None
    finally:
        cache.close()
