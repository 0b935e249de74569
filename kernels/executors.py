"""Executors: run a list of independent chunk tasks serially, on threads or on processes.

Every kernel hands its chunks to one of these; none of them knows about kernels. The
contract is ``executor.map(fn, tasks) -> list`` with results in task order, exceptions
re-raised in the caller as the worker raised them, and nothing left running after an
error or Ctrl-C.

Process pools use the ``multiprocess`` package (dill pickling, so closures and
lambdas travel) with the ``forkserver`` start method on Linux (``spawn`` elsewhere):
numba starts its own thread pool (OpenMP/TBB/workqueue) and NumPy's BLAS starts
threads too, and ``fork`` after threads have started copies locks in whatever state
the other threads left them, which deadlocks at random. ``forkserver`` forks each
worker from a small single-threaded server process that preloads the kernels, so it
is safe and still cheaper than ``spawn``.

Thread limits: with ``workers=k``, BLAS and numba are capped to k threads for the
duration of the call (:func:`limit_threads`), and every pool worker is capped to one
thread, so that ``workers=k`` means k cores and not k times the BLAS pool.

Pools are cached by ``(kind, workers)`` and reused across calls ("warm"); pass
``reuse=False`` (or call :func:`shutdown_pools`) to measure a cold start.
"""

from __future__ import annotations

import atexit
import contextlib
import operator
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

EXECUTOR_KINDS = ("serial", "threads", "processes")

# Modules the forkserver imports once, so that forked workers start with them loaded.
FORKSERVER_PRELOAD = ["numpy", "numba", "kernels.sieve", "kernels.montecarlo", "kernels.attention"]


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# The most workers a call may ask for: a few per core is enough to measure
# oversubscription, while thousands would start thousands of threads or processes.
# Never below 8, so that a 1-core machine can still run the 2- to 8-worker cases.
MAX_WORKERS_PER_CORE = 4
MIN_MAX_WORKERS = 8


def max_workers() -> int:
    """The largest ``workers`` accepted here: 4 x the usable cores, and at least 8."""
    return max(MIN_MAX_WORKERS, MAX_WORKERS_PER_CORE * cpu_count())


def resolve_workers(workers: int | None) -> int:
    """Check ``workers`` (an int in [1, :func:`max_workers`]) and turn ``None`` into all
    cores. Raises before any work starts."""
    if workers is None:
        return cpu_count()
    if isinstance(workers, bool):
        # bool is an int subclass: without this, workers=True would quietly mean 1.
        raise TypeError(f"workers must be an int >= 1 or None, got bool {workers!r}")
    if not isinstance(workers, int):
        try:
            workers = operator.index(workers)  # numpy integers are fine
        except TypeError:
            raise TypeError(
                f"workers must be an int >= 1 or None, got {type(workers).__name__}"
            ) from None
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (or None for all cores), got {workers}")
    if workers > max_workers():
        raise ValueError(
            f"workers must be <= {max_workers()} ({MAX_WORKERS_PER_CORE} x the {cpu_count()} "
            f"usable cores, at least {MIN_MAX_WORKERS}), got {workers}"
        )
    return int(workers)


# ---------------------------------------------------------------------------
# Thread limits
# ---------------------------------------------------------------------------


def _numba_threads_limit() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def limit_threads(workers: int) -> Iterator[None]:
    """Cap BLAS/OpenMP pools (threadpoolctl) and numba's pool to ``workers`` threads.

    Restores both on exit. numba's cap cannot exceed NUMBA_NUM_THREADS (fixed when
    numba's pool starts), so the cap is ``min(workers, NUMBA_NUM_THREADS)``.
    """
    import numba
    from threadpoolctl import threadpool_limits

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(workers, _numba_threads_limit())))
    try:
        with threadpool_limits(limits=workers):
            yield
    finally:
        numba.set_num_threads(previous)


def _worker_init() -> None:
    """Runs in each pool process: one thread per process, and Ctrl-C is the parent's job."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    # Only before numba is imported: once numba (preloaded by the forkserver) has read
    # NUMBA_NUM_THREADS, changing it makes every later compile in this worker fail with
    # "Cannot set NUMBA_NUM_THREADS ... once the threads have been launched";
    # set_num_threads(1) below caps the pool instead.
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
        import numba

        numba.set_num_threads(1)
    except Exception:  # pragma: no cover - limits are best effort in a worker
        pass


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------


class Executor(Protocol):
    """Runs chunk tasks. ``map`` returns results in task order."""

    kind: str
    workers: int

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """Runs tasks one after another in the calling thread (the baseline)."""

    kind = "serial"

    def __init__(self, workers: int = 1) -> None:
        self.workers = 1

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        return [fn(t) for t in tasks]

    def close(self) -> None:
        pass

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadExecutor:
    """Runs tasks on a pool of ``workers`` threads.

    Threads only run in parallel when the task releases the GIL: numba functions
    compiled with ``nogil=True`` and large NumPy operations do; pure Python does not.
    """

    kind = "threads"

    def __init__(self, workers: int) -> None:
        self.workers = resolve_workers(workers)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="kernelrace"
        )

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        if self._pool is None:
            raise RuntimeError("ThreadExecutor is closed")
        futures = [self._pool.submit(fn, t) for t in tasks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            # On error or Ctrl-C, drop what has not started; running tasks finish
            # (threads cannot be killed) and the exception reaches the caller.
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> ThreadExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_context_lock = threading.Lock()
_context = None


def process_context():
    """The multiprocess context used for every process pool (see the module docstring)."""
    global _context
    with _context_lock:
        if _context is None:
            import multiprocess

            method = "forkserver" if sys.platform.startswith("linux") else "spawn"
            ctx = multiprocess.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
            _context = ctx
        return _context


class ProcessExecutor:
    """Runs tasks on a pool of ``workers`` processes (``multiprocess``, forkserver).

    Each worker ignores SIGINT and runs with one BLAS/numba thread; the parent
    terminates the whole pool on any exception or Ctrl-C, so no process outlives it.
    """

    kind = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = resolve_workers(workers)
        self._pool = process_context().Pool(processes=self.workers, initializer=_worker_init)

    def pids(self) -> list[int]:
        """Process ids of the pool's workers (for tests and diagnostics)."""
        return [p.pid for p in self._pool._pool] if self._pool is not None else []

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        if self._pool is None:
            raise RuntimeError("ProcessExecutor is closed")
        try:
            # chunksize=1: tasks are already coarse chunks; .get() with a timeout keeps
            # the main thread responsive to Ctrl-C.
            async_result = self._pool.map_async(fn, list(tasks), chunksize=1)
            return async_result.get(timeout=1e9)
        except BaseException:
            self.terminate()
            raise

    def terminate(self) -> None:
        """Kill the workers now and wait for them to exit."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()
            pool.join()
            _forget(self)

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            pool.join()
            _forget(self)

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CLASSES: dict[str, type] = {
    "serial": SerialExecutor,
    "threads": ThreadExecutor,
    "processes": ProcessExecutor,
}

# Warm pools, by (kind, workers), oldest use first.
_pools: dict[tuple[str, int], Any] = {}
_pools_lock = threading.Lock()
# Warm thread pools kept at once: a sweep over worker counts would otherwise keep
# every count's threads alive for the life of the process.
MAX_WARM_THREAD_POOLS = 3


def _forget(executor: Any) -> None:
    with _pools_lock:
        for key, value in list(_pools.items()):
            if value is executor:
                del _pools[key]


def get_executor(kind: str, workers: int | None = None, *, reuse: bool = True) -> Any:
    """An executor of ``kind`` ("serial", "threads", "processes") with ``workers`` workers.

    With ``reuse=True`` the pool is cached and shared by later calls (the warm case);
    with ``reuse=False`` a new pool is made and the caller must close it (the cold case).
    """
    if kind not in _CLASSES:
        raise ValueError(f"executor kind must be one of {', '.join(EXECUTOR_KINDS)}; got {kind!r}")
    workers = resolve_workers(workers)
    if not reuse:
        return _CLASSES[kind](workers)
    with _pools_lock:
        executor = _pools.pop((kind, workers), None)
        if executor is None:
            executor = _CLASSES[kind](workers)
        _pools[(kind, workers)] = executor  # most recently used last
        stale = [key for key in _pools if key[0] == "threads"][:-MAX_WARM_THREAD_POOLS]
        evicted = [_pools.pop(key) for key in stale]
    for old in evicted:  # outside the lock: closing waits for running tasks
        old.close()
    return executor


@contextlib.contextmanager
def executor_for(kind: str, workers: int, *, reuse: bool = True) -> Iterator[Any]:
    """Context manager around :func:`get_executor` that closes a cold pool afterwards."""
    executor = get_executor(kind, workers, reuse=reuse)
    try:
        yield executor
    finally:
        if not reuse:
            executor.close()


def run_chunks(
    kind: str,
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int,
    *,
    reuse: bool = True,
) -> list[Any]:
    """Run ``fn`` over ``tasks`` on an executor of ``kind``, with threads capped to ``workers``."""
    # Checked here, not only by the executor: limit_threads runs first and would
    # otherwise fail on a bad value with a message that does not name workers.
    workers = resolve_workers(workers)
    with limit_threads(workers), executor_for(kind, workers, reuse=reuse) as executor:
        return executor.map(fn, tasks)


def shutdown_pools() -> None:
    """Close every cached pool (the next call starts cold)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


atexit.register(shutdown_pools)
