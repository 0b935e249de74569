"""Executors: run a list of independent chunk tasks serially, on threads or on processes.

Every kernel hands its chunks to one of these; none of them knows about kernels. The
contract is ``executor.map(fn, tasks) -> list`` with results in task order, exceptions
re-raised in the caller as the worker raised them, and nothing left running after an
error or Ctrl-C. :data:`POOL_STRATEGIES` is the one map from strategy to executor.

The ``processes`` executor and everything about its workers' life (forkserver start,
dead workers, Ctrl-C, shared memory) is in :mod:`kernels.process_pool`; its public
names are reachable from here too.

Thread limits: with ``workers=k``, BLAS and numba are capped to k threads for the
duration of the call (:func:`limit_threads`), or to 1 per thread of a thread pool, and
every process-pool worker is capped to one thread, so that ``workers=k`` means k cores
and not k times the BLAS pool.

Pools are cached by ``(kind, workers)`` and reused across calls ("warm"); pass
``reuse=False`` (or call :func:`shutdown_pools`) to measure a cold start.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import importlib.util
import operator
import os
import signal
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

EXECUTOR_KINDS = ("serial", "threads", "processes", "dask")

#: The one map from strategy to executor. Every kernel offers each of these strategies
#: (with an ``inner`` chunk kernel) and hands its chunk tasks to the executor kind named
#: here; adding an executor is one class, one kind in :func:`get_executor` and one entry
#: here, nothing in any kernel.
POOL_STRATEGIES = {"threaded": "threads", "multiprocess": "processes", "distributed": "dask"}

#: Pool strategies whose executor needs an optional package: strategy -> (module to
#: import, the pyproject extra that installs it). :func:`pool_unavailable_reason` reads
#: it, and the registry asks it before a kernel's own ``unavailable_reason``.
POOL_REQUIRES: dict[str, tuple[str, str]] = {"distributed": ("distributed", "distributed")}


def executor_kind(strategy: str) -> str:
    """The executor kind a pool strategy runs on (KeyError for any other strategy)."""
    return POOL_STRATEGIES[strategy]


def pool_unavailable_reason(strategy: str) -> str | None:
    """Why pool strategy ``strategy`` cannot run here (its executor's optional package is
    not installed), else None. Looks for the package without importing it (Dask takes
    about a second to import, and listings ask for every strategy)."""
    required = POOL_REQUIRES.get(strategy)
    if required is None:
        return None
    module, extra = required
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return f"{module} is not installed; pip install '.[{extra}]'"


def forkserver_preload() -> list[str]:
    """Modules the forkserver imports once, so that forked workers start with them
    loaded: NumPy, numba and every kernel package found by the registry."""
    from kernels import registry

    return ["numpy", "numba", *(f"kernels.{name}" for name in registry.kernel_names())]


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


@contextlib.contextmanager
def sigint_deferred(*, reraise: bool = True) -> Iterator[None]:
    """Hold SIGINT off while the block runs (a pool's teardown), then raise it.

    A second Ctrl-C, or the copy of the signal that ``timeout -s INT`` sends to the whole
    process group after the one it sends the process, can land while a pool is being torn
    down after the first: it stopped the teardown half-way, leaving workers, queue locks
    and shared memory to the interpreter's exit, which then hung on them. Within the
    block SIGINT is recorded instead; at its end KeyboardInterrupt is raised, unless an
    exception is already on its way (the first interrupt, say) or being handled, or
    ``reraise`` is false (clean-up at the interpreter's exit, where it would only be
    printed). Outside the main thread, or when SIGINT is not handled by a Python
    function, nothing changes.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending and reraise and sys.exc_info()[0] is None:
        raise KeyboardInterrupt


def _numba_threads_limit() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def interrupt_guard() -> Iterator[Callable[[], None]]:
    """For long work done in pieces (docs/reliability.md): yields ``check()``, to call
    between pieces.

    Ctrl-C raises KeyboardInterrupt where it lands, as usual. But when it lands while
    numba compiles, it can land inside a callback that LLVM makes into Python through
    ctypes, and ctypes prints such an exception and drops it ("Exception ignored on
    calling ctypes callback function"): the interrupt would be lost and minutes of work
    would follow. Within the block, SIGINT is also recorded, and ``check()`` raises it
    at the next piece. Outside the main thread, or when SIGINT is not handled by a
    Python function (ignored, or the default), ``check()`` does nothing.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield lambda: None
        return
    pending: list[int] = []

    def record(signum: int, frame: Any) -> None:
        pending.append(signum)
        previous(signum, frame)

    def check() -> None:
        if pending:
            pending.clear()
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, record)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def limit_threads(workers: int, *, numba_pool: bool = True, pools: bool = True
                  ) -> Iterator[None]:
    """Cap BLAS/OpenMP pools (threadpoolctl) and numba's pool to ``workers`` threads.

    Restores both on exit. numba's cap cannot exceed NUMBA_NUM_THREADS (fixed when
    numba's pool starts), so the cap is ``min(workers, NUMBA_NUM_THREADS)``.

    ``pools=False`` caps numba's pool alone, for work whose only parallel code is
    numba's (no BLAS call inside): reading every library's thread count cost 70-80 us
    of a call that streams tens of MiB (AMD EPYC Zen 2), after which Python's own data
    has left the CPU's caches.

    ``numba_pool=False`` is for a call that runs no parallel numba code (a NumPy kernel):
    numba's cap is then left alone, because setting it starts numba's OpenMP threads, and
    torch imported after that runs on numba's libgomp, several times slower (a process
    that times ``numpy`` and then ``torch`` steps, as a benchmark pairing them does).
    """
    if not numba_pool:
        with _pools_limited(workers):
            yield
        return
    import numba

    previous = numba.get_num_threads()
    want = max(1, min(workers, _numba_threads_limit()))
    if want != previous:
        numba.set_num_threads(want)
    try:
        if pools:
            with _pools_limited(workers):
                yield
        else:
            yield
    finally:
        if want != previous:
            numba.set_num_threads(previous)


@contextlib.contextmanager
def _pools_limited(workers: int) -> Iterator[None]:
    """threadpoolctl's ``limit(limits=workers)`` over every pool it found, touching only
    the pools not at ``workers`` already and restoring those: a few us a step where its
    ``limit`` takes 20-35 (it records every library's full description first), which is
    a tenth of a small decode step."""
    changed = []
    try:
        for lib in _threadpools().lib_controllers:
            before = lib.num_threads
            if before is not None and before != workers:
                lib.set_num_threads(workers)
                changed.append((lib, before))
        yield
    finally:
        for lib, before in changed:
            lib.set_num_threads(before)


_controller: tuple[int, Any] | None = None


def _threadpools() -> Any:
    """threadpoolctl's view of the thread pools loaded in this process, made once (it
    reads /proc/self/maps: about 0.5 ms, more than a whole small decode step) and made
    again only when modules were imported since, which is how a new pool (torch's
    OpenMP, say) arrives."""
    global _controller  # noqa: PLW0603 (one per process)
    from threadpoolctl import ThreadpoolController

    loaded = len(sys.modules)
    if _controller is None or _controller[0] != loaded:
        _controller = (loaded, ThreadpoolController())
    return _controller[1]


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------


class Executor:
    """The executor interface: run chunk tasks, results in task order.

    A new executor subclasses this and implements ``__init__(workers)``, ``map`` and
    ``close``; :func:`register_executor` then gives every kernel a strategy on it. What is
    particular to an executor stays in it: :meth:`share` (how large arrays reach the
    tasks) and :meth:`thread_limit` (how many BLAS/numba threads the caller allows).
    """

    kind = "abstract"
    workers = 1
    #: Whether tasks run where they can write into this process's memory (a shared-memory
    #: segment it allocated). False for an executor whose workers may be on other hosts:
    #: a kernel then takes its results from what the tasks return.
    same_host_memory = True

    @classmethod
    def warm_key(cls, workers: int) -> Any:
        """What tells two warm executors of this kind apart in :func:`get_executor`'s cache
        (the worker count; an executor that connects somewhere adds the address)."""
        return workers

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def thread_limit(self, workers: int) -> int:
        """BLAS/numba threads the caller caps itself to while this executor runs tasks.

        ``workers`` by default (tasks run elsewhere, or one at a time here)."""
        return workers

    @contextlib.contextmanager
    def share(self, arrays: dict[str, Any], *, what: str = "arrays", hint: str = ""
              ) -> Iterator[dict[str, Any]]:
        """A handle to ``arrays`` for tasks to carry; :func:`shared_arrays` turns it back
        into the arrays inside a task. In-process executors hand the arrays themselves."""
        yield arrays

    @contextlib.contextmanager
    def share_split(  # noqa: PLR0913
        self, arrays: dict[str, Any], axes: dict[str, int | None], length: int, parts: int,
        *, source: Any = None, what: str = "arrays", hint: str = "",
    ) -> Iterator[list[list[tuple[Any, int, int]]]]:
        """Share ``arrays`` among tasks that split their first ``length`` items along
        ``axes[name]`` (an array whose axis is None is read whole by every task).

        Yields one list of pieces ``(handle, lo, hi)`` per task: the task reads items
        [lo, hi) of each of its pieces' :func:`shared_arrays`, and the pieces of all tasks
        together cover every item once, in no particular order (a task's result must not
        depend on the order of items). ``source``, if given, owns the arrays and only
        appends to them (:class:`GrowingArrays`): an executor that copies the arrays
        elsewhere may keep its copies from one call to the next and send only new items.
        Here: :meth:`share` of the whole arrays, and up to ``parts`` contiguous ranges.
        """
        with self.share(arrays, what=what, hint=hint) as handle:
            yield [[(handle, lo, hi)] for lo, hi in split_range(length, min(parts, length))]

    def describe(self) -> dict[str, Any]:
        """Fields a result row records about where its tasks ran (none by default; the
        Dask executor gives its cluster and the cluster's size)."""
        return {}

    def map_split(  # noqa: PLR0913
        self, fn: Callable[[Any], Any], arrays: dict[str, Any], axes: dict[str, int | None],
        length: int, make_task: Callable[[list[tuple[Any, int, int]]], Any], parts: int, *,
        source: Any = None, what: str = "arrays", hint: str = "",
    ) -> list[Any]:
        """:meth:`map` over the tasks ``make_task(pieces)`` of :meth:`share_split`."""
        with self.share_split(arrays, axes, length, parts, source=source, what=what,
                              hint=hint) as split:
            return self.map(fn, [make_task(pieces) for pieces in split])

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialExecutor(Executor):
    """Runs tasks one after another in the calling thread (the baseline)."""

    kind = "serial"

    def __init__(self, workers: int = 1) -> None:
        self.workers = 1

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        return [fn(t) for t in tasks]


class ThreadExecutor(Executor):
    """Runs tasks on a pool of ``workers`` threads.

    Threads only run in parallel when the task releases the GIL: numba functions
    compiled with ``nogil=True`` and large NumPy operations do; pure Python does not.
    BLAS gets one thread per pool thread (:meth:`thread_limit`): ``workers`` threads
    each calling a ``workers``-thread BLAS would thrash a loaded machine.
    """

    kind = "threads"

    def thread_limit(self, workers: int) -> int:
        return 1

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


def shared_arrays(handle: dict[str, Any]) -> dict[str, Any]:
    """Inside a task: the arrays an :meth:`Executor.share` handle stands for. In a process
    worker this attaches the segments (once per name, dropping attachments of arrays no
    longer named); elsewhere the handle holds the arrays themselves."""
    from kernels import shared_memory

    if "distributed" in sys.modules:  # a Dask task: futures Dask left unresolved
        from kernels.distributed import resolve_handle

        handle = resolve_handle(handle)
    names = {v.name for v in handle.values() if isinstance(v, shared_memory.SegmentSpec)}
    if not names:
        return handle
    shared_memory.keep_only(names)
    return {k: shared_memory.attach(v) if isinstance(v, shared_memory.SegmentSpec) else v
            for k, v in handle.items()}


_CLASSES: dict[str, Any] = {
    "serial": SerialExecutor,
    "threads": ThreadExecutor,
    "processes": "kernels.process_pool.ProcessExecutor",  # imported on first use
    "dask": "kernels.distributed.DaskExecutor",  # imported on first use; Dask is optional
}

# Names that live in kernels.process_pool, reachable as executors.<name>.
_PROCESS_POOL_NAMES = (
    "ProcessExecutor", "WorkerLost", "describe_exit", "process_context",
    "remove_stale_semaphores", "SEMAPHORE_PREFIX", "STALE_SEMAPHORE_AGE_S", "WATCH_INTERVAL_S",
)


def __getattr__(name: str) -> Any:
    if name in _PROCESS_POOL_NAMES:
        from kernels import process_pool

        return getattr(process_pool, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _executor_class(kind: str) -> type:
    cls = _CLASSES[kind]
    if isinstance(cls, str):
        module, _, name = cls.rpartition(".")
        cls = _CLASSES[kind] = getattr(importlib.import_module(module), name)
    return cls


def shares_host_memory(kind: str) -> bool:
    """Whether tasks on executor ``kind`` can write into this process's shared memory
    (:attr:`Executor.same_host_memory`); False means a kernel must return results."""
    return bool(getattr(_executor_class(kind), "same_host_memory", True))


def register_executor(strategy: str, kind: str, cls: type,
                      requires: tuple[str, str] | None = None) -> None:
    """Add an executor: ``cls(workers)`` (an :class:`Executor`) becomes kind ``kind``, and
    every kernel offers strategy ``strategy`` on it, with an ``inner`` chunk kernel.
    ``requires`` is (module, pyproject extra) when the executor needs an optional package:
    the strategy then reports itself unavailable where that module is missing."""
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise TypeError(f"cls must be an Executor subclass, got {cls!r}")
    _CLASSES[kind] = cls
    POOL_STRATEGIES[strategy] = kind
    if requires is not None:
        POOL_REQUIRES[strategy] = requires


def unregister_executor(strategy: str) -> None:
    """Undo :func:`register_executor` (its warm pools are closed)."""
    kind = POOL_STRATEGIES.pop(strategy)
    POOL_REQUIRES.pop(strategy, None)
    if kind not in POOL_STRATEGIES.values():
        _CLASSES.pop(kind, None)
        with _pools_lock:
            pools = [_pools.pop(k) for k in list(_pools) if k[0] == kind]
        for pool in pools:
            pool.close()

# Warm pools, by (kind, the class's warm_key(workers)), oldest use first.
_pools: dict[tuple[str, Any], Any] = {}
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
    """An executor of ``kind`` ("serial", "threads", "processes", "dask") with ``workers``
    workers.

    With ``reuse=True`` the pool is cached and shared by later calls (the warm case);
    with ``reuse=False`` a new pool is made and the caller must close it (the cold case).
    Warm pools are told apart by the class's :meth:`Executor.warm_key` (the worker count,
    and for Dask the scheduler address).
    """
    if kind not in _CLASSES:
        raise ValueError(f"executor kind must be one of {', '.join(_CLASSES)}; got {kind!r}")
    workers = resolve_workers(workers)
    if not reuse:
        return _executor_class(kind)(workers)
    key = (kind, _executor_class(kind).warm_key(workers))
    with _pools_lock:
        executor = _pools.pop(key, None)
        broken = None
        if executor is not None and getattr(executor, "lost_worker", lambda: None)():
            # A warm pool whose worker died between calls (killed while idle): no task
            # was lost, so this call starts a fresh pool instead of failing.
            broken, executor = executor, None
        if executor is None:
            executor = _executor_class(kind)(workers)
        _pools[key] = executor  # most recently used last
        stale = [key for key in _pools if key[0] == "threads"][:-MAX_WARM_THREAD_POOLS]
        evicted = [_pools.pop(key) for key in stale]
    if broken is not None:
        broken.terminate()
    for old in evicted:  # outside the lock: closing waits for running tasks
        old.close()
    return executor


def describe_warm(strategy: str, workers: int) -> dict[str, Any]:
    """:meth:`Executor.describe` of the warm executor ``strategy`` ran on at ``workers``
    ({} for a strategy without an executor, or none warm)."""
    kind = POOL_STRATEGIES.get(strategy)
    if kind is None:
        return {}
    key = (kind, _executor_class(kind).warm_key(workers))
    with _pools_lock:
        executor = _pools.get(key)
    return executor.describe() if executor is not None else {}


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
    """Run ``fn`` over ``tasks`` on an executor of ``kind``, BLAS and numba capped to the
    executor's :meth:`~Executor.thread_limit` (``workers``, or 1 per pool thread)."""
    return run_shared(kind, fn, None, lambda _: tasks, workers, reuse=reuse)


def run_shared(  # noqa: PLR0913
    kind: str,
    fn: Callable[[Any], Any],
    arrays: dict[str, Any] | None,
    make_tasks: Callable[[Any], Sequence[Any]],
    workers: int,
    *,
    reuse: bool = True,
    what: str = "arrays",
    hint: str = "",
) -> list[Any]:
    """:func:`run_chunks` for tasks that read large ``arrays``: the executor shares them
    (:meth:`Executor.share`: shared memory for processes, the arrays themselves for
    threads), ``make_tasks(handle)`` builds the tasks around the handle, and each task
    gets the arrays back with :func:`shared_arrays`."""
    # Checked here, not only by the executor: limit_threads runs first and would
    # otherwise fail on a bad value with a message that does not name workers.
    workers = resolve_workers(workers)
    with executor_for(kind, workers, reuse=reuse) as executor:
        with limit_threads(executor.thread_limit(workers)):
            if arrays is None:
                return executor.map(fn, make_tasks(None))
            with executor.share(arrays, what=what, hint=hint) as handle:
                return executor.map(fn, make_tasks(handle))


class GrowingArrays(Protocol):
    """What :meth:`Executor.share_split` may ask of its ``source`` (a KV cache, say):
    an identity for the owner's life, a count of its writes, and the lowest item index
    written since a given count. Arrays read whole (axis None) never change."""

    share_id: Hashable
    generation: int

    def first_write_since(self, generation: int) -> int | None: ...


def split_range(length: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering [0, length), sizes differing by at most 1."""
    return [(s * length // parts, (s + 1) * length // parts) for s in range(parts)]


def run_split(  # noqa: PLR0913
    kind: str,
    fn: Callable[[Any], Any],
    arrays: dict[str, Any],
    axes: dict[str, int | None],
    length: int,
    make_task: Callable[[list[tuple[Any, int, int]]], Any],
    workers: int,
    *,
    source: GrowingArrays | None = None,
    reuse: bool = True,
    what: str = "arrays",
    hint: str = "",
    parts: int | None = None,
) -> list[Any]:
    """:func:`run_shared` for tasks that split ``length`` items of ``arrays`` between
    them (:meth:`Executor.share_split`): ``make_task(pieces)`` builds one task from its
    pieces; results come back one per task. ``parts`` (default ``workers``): how many
    ways to split, fewer than the pool's workers below a kernel's minimum grain (the
    pool stays the one of ``workers``, warm, not a second one of another size)."""
    workers = resolve_workers(workers)
    parts = workers if parts is None else max(1, min(int(parts), workers))
    with executor_for(kind, workers, reuse=reuse) as executor:
        with limit_threads(executor.thread_limit(workers)):
            return executor.map_split(fn, arrays, axes, length, make_task, parts,
                                      source=source, what=what, hint=hint)


def shutdown_pools() -> None:
    """Close every cached pool (the next call starts cold)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


atexit.register(shutdown_pools)
