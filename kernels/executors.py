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

Faults (docs/reliability.md):

- Workers never import the caller's ``__main__``: kernel tasks live in ``kernels``, so a
  script without an ``if __name__ == "__main__":`` guard, code piped to ``python -`` and
  ``python -c`` work as a guarded script does (:func:`_make_context`).
- A worker that dies (SIGKILL, the out-of-memory killer, a crash) is noticed within
  :data:`WATCH_INTERVAL_S`: the caller gets :class:`WorkerLost` with the worker's exit code
  or signal and a hint, and the pool is torn down without waiting on a lock the dead
  worker held (:func:`_stop_pool`).
- Workers die with their parent (``PR_SET_PDEATHSIG`` on Linux), so a killed caller leaves
  no worker running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import io
import operator
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

EXECUTOR_KINDS = ("serial", "threads", "processes")

#: The one map from strategy to executor. Every kernel offers each of these strategies
#: (with an ``inner`` chunk kernel) and hands its chunk tasks to the executor kind named
#: here; adding an executor is one class, one kind in :func:`get_executor` and one entry
#: here, nothing in any kernel.
POOL_STRATEGIES = {"threaded": "threads", "multiprocess": "processes"}


def executor_kind(strategy: str) -> str:
    """The executor kind a pool strategy runs on (KeyError for any other strategy)."""
    return POOL_STRATEGIES[strategy]


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


#: Linux prctl(2) option: the signal a process gets when the thread that forked it dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(owner_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this worker when its parent dies (Linux; a no-op elsewhere).

    A worker's parent is the forkserver, which exits when every holder of the write end
    of its "alive" pipe is gone. The owning process holds one, and multiprocess hands
    every forkserver child one too (for children of its own, which pool workers never
    start), so the worker closes its copy here: then a caller killed by SIGKILL or the
    OOM killer ends its forkserver, and the forkserver's end ends the workers, instead of
    each running its chunk to the end. The signal is armed after the fork, so an owner
    that died in between is checked for by pid.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        from multiprocess import forkserver

        server = forkserver._forkserver
        alive_fd = getattr(server, "_forkserver_alive_fd", None)
        if alive_fd is not None and getattr(server, "_forkserver_pid", None) is None:
            # Only in a forkserver child: the owner's copy has the server's pid beside it.
            server._forkserver_alive_fd = None
            os.close(alive_fd)
    except (ImportError, AttributeError, OSError):  # pragma: no cover - other internals
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
        return
    if owner_pid is not None:
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # pragma: no cover - the pid now belongs to another user
            os._exit(1)


def _worker_init(owner_pid: int | None = None) -> None:
    """Runs in each pool process: one thread per process, Ctrl-C is the parent's job, and
    the worker dies with its parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(owner_pid)
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


class Executor:
    """The executor interface: run chunk tasks, results in task order.

    A new executor subclasses this and implements ``__init__(workers)``, ``map`` and
    ``close``; :func:`register_executor` then gives every kernel a strategy on it. What is
    particular to an executor stays in it: :meth:`share` (how large arrays reach the
    tasks) and :meth:`thread_limit` (how many BLAS/numba threads the caller allows).
    """

    kind = "abstract"
    workers = 1

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


class WorkerLost(RuntimeError):
    """A process-pool worker exited while the pool was open; its task is lost.

    ``exitcode`` is the worker's exit status as multiprocess reports it: ``-N`` for a
    worker killed by signal N, else the code it exited with.
    """

    def __init__(self, pid: int | None, exitcode: int) -> None:
        self.pid = pid
        self.exitcode = exitcode
        super().__init__(
            f"a process-pool worker (pid {pid}) {describe_exit(exitcode)}. The pool was "
            "stopped and its work lost; the next call starts a fresh pool"
        )


def describe_exit(exitcode: int) -> str:
    """How a worker ended and the likely cause, for :class:`WorkerLost`'s message."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"was killed by {name} (exit code {exitcode})"
        if -exitcode == signal.SIGKILL:
            return how + (
                ": most often the out-of-memory killer (see `dmesg`) or `kill -9`; try a "
                "smaller size or fewer workers"
            )
        if -exitcode in (signal.SIGSEGV, signal.SIGBUS):
            return how + (
                ": a crash in compiled code; SIGBUS on a shared-memory array usually "
                "means /dev/shm is full"
            )
        return how + ": something outside kernelrace sent it that signal"
    return f"exited with code {exitcode}: " + (
        "a worker exits by itself only when it cannot start or run a task, and its "
        "traceback is on stderr above (for example a task function whose module the "
        "worker cannot import)"
    )


#: How often (seconds) a caller waiting on a process pool checks that its workers live.
#: The wait returns as soon as the results are in, so this costs a healthy call nothing;
#: it bounds how long a dead worker goes unnoticed.
WATCH_INTERVAL_S = 0.1

_context_lock = threading.Lock()
_context = None
_pool_class: type | None = None


def _make_context() -> Any:
    """A forkserver context whose workers skip the caller's ``__main__``.

    multiprocess, like multiprocessing, re-runs the caller's main script in every spawn or
    forkserver worker (as ``__mp_main__``) so that functions defined there can be
    unpickled. That is why an unguarded script starts its pool again inside each worker
    (which fails, and Pool replaces the worker, for ever) and why code piped to
    ``python -`` fails (the worker looks for a file named ``<stdin>``). kernelrace's tasks
    live in importable modules and dill sends functions defined in ``__main__`` by value,
    so workers do not need the main module: this Popen drops the two entries of the
    preparation data that ask for it, and is otherwise multiprocess's forkserver Popen
    (``_launch`` is a copy of ``multiprocess.popen_forkserver.Popen._launch``).
    """
    from multiprocess import context as mp_context
    from multiprocess import forkserver, popen_forkserver, reduction, spawn, util

    class PopenWithoutMain(popen_forkserver.Popen):
        def _launch(self, process_obj: Any) -> None:
            prep_data = spawn.get_preparation_data(process_obj._name)
            prep_data.pop("init_main_from_name", None)
            prep_data.pop("init_main_from_path", None)
            buf = io.BytesIO()
            mp_context.set_spawning_popen(self)
            try:
                reduction.dump(prep_data, buf)
                reduction.dump(process_obj, buf)
            finally:
                mp_context.set_spawning_popen(None)
            self.sentinel, w = forkserver.connect_to_new_process(self._fds)
            _parent_w = os.dup(w)
            self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
            with open(w, "wb", closefd=True) as f:
                f.write(buf.getbuffer())
            self.pid = forkserver.read_signed(self.sentinel)

    class KernelWorkerProcess(mp_context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> Any:  # noqa: N802 - multiprocess's name
            return PopenWithoutMain(process_obj)

    class KernelForkServerContext(mp_context.ForkServerContext):
        Process = KernelWorkerProcess

    return KernelForkServerContext()


# The named semaphores multiprocess's locks and queues create under forkserver/spawn.
SEMAPHORE_PREFIX = "sem.mp-"
# A semaphore younger than this is never removed (its creator may not have mapped it yet).
STALE_SEMAPHORE_AGE_S = 10.0


def _mapped_shm_inodes() -> set[int] | None:
    """Inodes of /dev/shm files mapped by any process whose maps this user can read, or
    None when /proc cannot be read. glibc creates a named semaphore under a temporary
    name and links it to the real one, so its creator's maps show the temporary (deleted)
    name: the inode is what identifies the file."""
    inodes: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                for line in f:
                    if "/dev/shm/" in line:
                        inodes.add(int(line.split()[4]))
        except (OSError, ValueError, IndexError):  # gone, or another user's process
            continue
    return inodes


def remove_stale_semaphores(min_age_s: float = STALE_SEMAPHORE_AGE_S) -> list[str]:
    """Unlink this user's ``/dev/shm/sem.mp-*`` semaphores that no process maps; their names.

    A pool's semaphores are unlinked by multiprocess's resource tracker when the pool's
    owner exits; when the whole process group is SIGKILLed, the tracker dies too and they
    stay. Such a semaphore carries no owner pid, but every process using it maps it, so
    one mapped by no process is left over. Files of other users, and files younger than
    ``min_age_s``, are kept. Assumes one pid namespace per /dev/shm, as the shared-memory
    segments' clean-up does.
    """
    try:
        names = [n for n in os.listdir("/dev/shm") if n.startswith(SEMAPHORE_PREFIX)]
    except OSError:  # pragma: no cover - no /dev/shm
        return []
    if not names:
        return []
    mapped = _mapped_shm_inodes()
    if mapped is None:
        return []
    removed = []
    now = time.time()
    for name in names:
        path = os.path.join("/dev/shm", name)
        try:
            st = os.stat(path)
            if st.st_uid != os.getuid() or st.st_ino in mapped or now - st.st_mtime < min_age_s:
                continue
            os.unlink(path)
        except OSError:  # gone already, or not ours to remove
            continue
        removed.append(name)
    return removed


def process_context():
    """The multiprocess context used for every process pool (see the module docstring).

    The first call in a process also removes semaphores left by a killed pool
    (:func:`remove_stale_semaphores`)."""
    global _context
    with _context_lock:
        if _context is None:
            import multiprocess

            with contextlib.suppress(OSError):  # best effort, never a reason to fail
                remove_stale_semaphores()
            if sys.platform.startswith("linux"):
                ctx = _make_context()
                ctx.set_forkserver_preload(forkserver_preload())
            else:  # pragma: no cover - spawn re-imports __main__: scripts need the guard
                ctx = multiprocess.get_context("spawn")
            _context = ctx
        return _context


def _kernel_pool_class() -> type:
    """multiprocess's Pool, recording every worker it starts (see :func:`_first_lost`)."""
    global _pool_class
    with _context_lock:
        if _pool_class is None:
            from multiprocess.pool import Pool

            class KernelPool(Pool):
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    # Before Pool.__init__, which starts the first workers.
                    self.started: list[Any] = []
                    super().__init__(*args, **kwargs)

                # A method, not Pool's staticmethod: Pool calls self.Process(ctx, ...) for
                # the first workers and for every replacement, so each is recorded, even
                # one that dies and is replaced between two of the caller's checks.
                def Process(self, ctx: Any, *args: Any, **kwds: Any) -> Any:  # noqa: N802
                    process = ctx.Process(*args, **kwds)
                    self.started.append(process)
                    return process

            _pool_class = KernelPool
        return _pool_class


def _first_lost(pool: Any) -> Any:
    """A worker of the open ``pool`` that has exited, or None.

    A pool worker exits only when the pool tells it to (no ``maxtasksperchild`` here), so
    an exit while the pool is open is a fault: multiprocess's Pool would quietly start a
    replacement, and the task the dead worker held would never come back.
    """
    handler = getattr(pool, "_worker_handler", None)
    reaped_for_us = handler is not None and handler.is_alive()
    for process in list(pool.started):
        if reaped_for_us:
            # Pool's handler thread waits on the workers' sentinels and reads a dead one's
            # status at once; reading it here too could race it for the status bytes.
            popen = process._popen
            status = None if popen is None else popen.returncode
        else:
            status = process.exitcode
        if status is not None:
            return process
    return None


def _free_lock(lock: Any) -> None:
    """Release ``lock`` if a dead worker left it held.

    Called only once every worker is dead and the worker handler has stopped, so the only
    live holders left are the pool's own threads, which hold it for microseconds: a lock
    still held after this wait belongs to a dead process.
    """
    if lock is None:
        return
    if lock.acquire(timeout=0.5):
        lock.release()
        return
    with contextlib.suppress(ValueError):  # released meanwhile
        lock.release()


def _stop_pool(pool: Any) -> None:
    """Tear ``pool`` down now, even when a dead worker holds one of its queue locks.

    ``Pool.terminate`` alone can hang for ever after a worker died: an idle worker holds
    the task queue's read lock while it waits, a worker writing a result holds the result
    queue's write lock, and terminate takes both. So: stop the worker handler (no more
    replacements), kill every worker, free the locks the dead left held, then let
    ``terminate`` join the pool's threads.
    """
    from multiprocess.pool import TERMINATE

    handler = getattr(pool, "_worker_handler", None)
    if handler is not None and handler.is_alive():
        handler._state = TERMINATE
        pool._change_notifier.put(None)
        handler.join(timeout=10)
    for process in list(pool.started):
        if process.exitcode is None:
            with contextlib.suppress(Exception):
                process.kill()
    for process in list(pool.started):
        process.join(timeout=10)
    _free_lock(getattr(getattr(pool, "_inqueue", None), "_rlock", None))
    _free_lock(getattr(getattr(pool, "_outqueue", None), "_wlock", None))
    pool.terminate()
    pool.join()


class _FromMain:
    """A task function defined in ``__main__``, pickled with the globals it uses.

    Workers do not import the main module (:func:`_make_context`), and dill pickles such
    a function by value but refers its globals to the worker's ``__main__``, where they
    are missing. ``recurse=True`` packs the globals the function uses (modules by name,
    other main-module functions by value) into the pickle instead.
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        import dill

        self._payload = dill.dumps(fn, recurse=True)
        self._fn: Callable[[Any], Any] | None = fn

    def __getstate__(self) -> bytes:
        return self._payload

    def __setstate__(self, payload: bytes) -> None:
        self._payload = payload
        self._fn = None

    def __call__(self, task: Any) -> Any:
        if self._fn is None:
            import dill

            self._fn = dill.loads(self._payload)
        return self._fn(task)


class ProcessExecutor(Executor):
    """Runs tasks on a pool of ``workers`` processes (``multiprocess``, forkserver).

    Each worker ignores SIGINT, runs with one BLAS/numba thread and dies with its parent;
    the parent terminates the whole pool on any exception or Ctrl-C, so no process
    outlives it.

    A dead worker is found by watching the exit status of every worker the pool started,
    checked while the caller waits for results. Not ``concurrent.futures``' broken-pool
    detection: ProcessPoolExecutor pickles with the standard pickler, and the design keeps
    ``multiprocess`` (dill) as the process layer so that closures travel. Not a wait on the
    current workers' sentinels either: Pool's handler thread reaps a dead worker and starts
    a replacement within milliseconds, so only a record of every worker ever started
    (:func:`_kernel_pool_class`) makes sure a quick death is seen.
    """

    kind = "processes"

    def __init__(self, workers: int) -> None:
        self.workers = resolve_workers(workers)
        self._pool = _kernel_pool_class()(
            processes=self.workers,
            initializer=_worker_init,
            initargs=(os.getpid(),),
            context=process_context(),
        )

    def pids(self) -> list[int]:
        """Process ids of the pool's workers (for tests and diagnostics)."""
        return [p.pid for p in self._pool._pool] if self._pool is not None else []

    def lost_worker(self) -> WorkerLost | None:
        """The error for a worker of this open pool that has died, or None if all live."""
        if self._pool is None:
            return None
        dead = _first_lost(self._pool)
        return None if dead is None else WorkerLost(dead.pid, dead.exitcode)

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        if self._pool is None:
            raise RuntimeError("ProcessExecutor is closed")
        try:
            self._raise_if_lost()
            if getattr(fn, "__module__", None) == "__main__":
                fn = _FromMain(fn)
            # chunksize=1: tasks are already coarse chunks. Waiting in short steps keeps
            # the main thread responsive to Ctrl-C and lets it check on the workers.
            async_result = self._pool.map_async(fn, list(tasks), chunksize=1)
            while not async_result.ready():
                async_result.wait(WATCH_INTERVAL_S)
                if not async_result.ready():
                    self._raise_if_lost()
            return async_result.get()
        except BaseException:
            self.terminate()
            raise

    def _raise_if_lost(self) -> None:
        error = self.lost_worker()
        if error is not None:
            raise error

    def terminate(self) -> None:
        """Kill the workers now and wait for them to exit."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            _forget(self)
            _stop_pool(pool)

    def close(self) -> None:
        """Let the workers finish and exit; a pool that lost a worker is stopped instead."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            _forget(self)
            if _first_lost(pool) is not None:
                _stop_pool(pool)
                return
            pool.close()
            # A worker exits when it reads the end-of-work sentinel; one that dies instead,
            # or does not exit, may hold a queue lock the others wait on.
            deadline = time.monotonic() + 30
            for process in list(pool.started):
                process.join(timeout=max(0.0, deadline - time.monotonic()))
            if any(p.exitcode != 0 for p in pool.started):
                _stop_pool(pool)
                return
            pool.join()

    @contextlib.contextmanager
    def share(self, arrays: dict[str, Any], *, what: str = "arrays", hint: str = ""
              ) -> Iterator[dict[str, Any]]:
        """Shared-memory specs of ``arrays`` for the workers to attach
        (:mod:`kernels.shared_memory`). Arrays already held in a segment of this process
        travel as their spec; the others are copied into temporary segments, checked
        against the memory budget first (``what`` and ``hint`` word its error), and
        unlinked when the block exits, on success, error or Ctrl-C alike."""
        from kernels import memory, shared_memory

        specs = {name: shared_memory.spec_of(a) for name, a in arrays.items()}
        copies = {name: a for name, a in arrays.items() if specs[name] is None}
        nbytes = sum(a.nbytes for a in copies.values())
        if copies:
            memory.check(f"a shared-memory copy of {what}", nbytes, shared=nbytes, hint=hint)
        temps: list[Any] = []
        try:
            for name, array in copies.items():
                seg = shared_memory.SharedArray(array.shape, array.dtype)
                temps.append(seg)
                assert seg.array is not None
                seg.array[...] = array
                specs[name] = seg.spec
            yield specs
        finally:
            for seg in temps:
                seg.unlink()


def shared_arrays(handle: dict[str, Any]) -> dict[str, Any]:
    """Inside a task: the arrays an :meth:`Executor.share` handle stands for. In a process
    worker this attaches the segments (once per name, dropping attachments of arrays no
    longer named); elsewhere the handle holds the arrays themselves."""
    from kernels import shared_memory

    names = {v.name for v in handle.values() if isinstance(v, shared_memory.SegmentSpec)}
    if not names:
        return handle
    shared_memory.keep_only(names)
    return {k: shared_memory.attach(v) if isinstance(v, shared_memory.SegmentSpec) else v
            for k, v in handle.items()}


_CLASSES: dict[str, type] = {
    "serial": SerialExecutor,
    "threads": ThreadExecutor,
    "processes": ProcessExecutor,
}


def register_executor(strategy: str, kind: str, cls: type) -> None:
    """Add an executor: ``cls(workers)`` (an :class:`Executor`) becomes kind ``kind``, and
    every kernel offers strategy ``strategy`` on it, with an ``inner`` chunk kernel."""
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        raise TypeError(f"cls must be an Executor subclass, got {cls!r}")
    _CLASSES[kind] = cls
    POOL_STRATEGIES[strategy] = kind


def unregister_executor(strategy: str) -> None:
    """Undo :func:`register_executor` (its warm pools are closed)."""
    kind = POOL_STRATEGIES.pop(strategy)
    if kind not in POOL_STRATEGIES.values():
        _CLASSES.pop(kind, None)
        with _pools_lock:
            pools = [_pools.pop(k) for k in list(_pools) if k[0] == kind]
        for pool in pools:
            pool.close()

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
        raise ValueError(f"executor kind must be one of {', '.join(_CLASSES)}; got {kind!r}")
    workers = resolve_workers(workers)
    if not reuse:
        return _CLASSES[kind](workers)
    with _pools_lock:
        executor = _pools.pop((kind, workers), None)
        broken = None
        if executor is not None and getattr(executor, "lost_worker", lambda: None)():
            # A warm pool whose worker died between calls (killed while idle): no task
            # was lost, so this call starts a fresh pool instead of failing.
            broken, executor = executor, None
        if executor is None:
            executor = _CLASSES[kind](workers)
        _pools[(kind, workers)] = executor  # most recently used last
        stale = [key for key in _pools if key[0] == "threads"][:-MAX_WARM_THREAD_POOLS]
        evicted = [_pools.pop(key) for key in stale]
    if broken is not None:
        broken.terminate()
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


def shutdown_pools() -> None:
    """Close every cached pool (the next call starts cold)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


atexit.register(shutdown_pools)
