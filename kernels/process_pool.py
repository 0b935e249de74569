"""Process pools for :mod:`kernels.executors`: the ``processes`` executor and its life.

Process pools use the ``multiprocess`` package (dill pickling, so closures and
lambdas travel) with the ``forkserver`` start method on Linux (``spawn`` elsewhere):
numba starts its own thread pool (OpenMP/TBB/workqueue) and NumPy's BLAS starts
threads too, and ``fork`` after threads have started copies locks in whatever state
the other threads left them, which deadlocks at random. ``forkserver`` forks each
worker from a small single-threaded server process that preloads the kernels, so it
is safe and still cheaper than ``spawn``. Every pool worker is capped to one thread.

Faults (docs/reliability.md):

- Workers never import the caller's ``__main__``: kernel tasks live in ``kernels``, so a
  script without an ``if __name__ == "__main__":`` guard, code piped to ``python -`` and
  ``python -c`` work as a guarded script does (:func:`_make_context`).
- A worker that dies (SIGKILL, the out-of-memory killer, a crash) is noticed within
  :data:`WATCH_INTERVAL_S`: the caller gets :class:`WorkerLost` with the worker's exit code
  or signal and a hint, and the pool is torn down without waiting on a lock the dead
  worker held (:func:`_stop_pool`).
- Workers die with their parent (``PR_SET_PDEATHSIG`` on Linux), so a killed caller leaves
  no worker running; semaphores left by a SIGKILLed process group are removed later
  (:func:`remove_stale_semaphores`).
- Large arrays reach the workers through shared memory (:meth:`ProcessExecutor.share`,
  :mod:`kernels.shared_memory`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from kernels.executors import (
    Executor,
    _forget,
    forkserver_preload,
    resolve_workers,
    sigint_deferred,
)

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
# glibc's sem_open creates the file as /dev/shm/sem.XXXXXX (6 random characters), fills
# and maps it, links it to its name and unlinks the temporary one: a process killed
# before the fill (a SIGKILLed group starting a pool) leaves an empty file that no name
# leads to. Only empty ones are taken: a filled one looks like a semaphore some program
# named with 6 letters and keeps on purpose (named semaphores outlive their users).
_GLIBC_TEMPORARY = re.compile(r"sem\.[A-Za-z0-9]{6}")


def _mapped_shm_inodes(pids: Iterable[int] | None = None) -> set[int] | None:
    """Inodes of /dev/shm files mapped by any process whose maps this user can read (or by
    any of ``pids``), or None when /proc cannot be read. glibc creates a named semaphore
    under a temporary name and links it to the real one, so its creator's maps show the
    temporary (deleted) name: the inode is what identifies the file."""
    inodes: set[int] = set()
    try:
        entries = os.listdir("/proc") if pids is None else [str(p) for p in pids]
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

    Empty glibc temporary files (``sem.XXXXXX``, left by a process killed inside
    ``sem_open``) go by the same rule, but never younger than
    :data:`STALE_SEMAPHORE_AGE_S`: a live ``sem_open`` holds one unmapped for an instant.
    """
    try:
        names = [n for n in os.listdir("/dev/shm")
                 if n.startswith(SEMAPHORE_PREFIX) or _GLIBC_TEMPORARY.fullmatch(n)]
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
            pool = name.startswith(SEMAPHORE_PREFIX)
            age = min_age_s if pool else max(min_age_s, STALE_SEMAPHORE_AGE_S)
            if (st.st_uid != os.getuid() or st.st_ino in mapped or now - st.st_mtime < age
                    or (not pool and st.st_size != 0)):
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


#: Seconds ``_stop_pool`` waits for a pool's result handler before it ends the handler's
#: read (it sees the sentinel within milliseconds unless a dead worker cut a result short).
RESULT_HANDLER_WAIT_S = 1.0


def _stop_pool(pool: Any) -> None:
    """Tear ``pool`` down now, even when a dead worker holds one of its queue locks.

    ``Pool.terminate`` alone can hang for ever after a worker died: an idle worker holds
    the task queue's read lock while it waits, a worker writing a result holds the result
    queue's write lock, and terminate takes both. So: stop the worker handler (no more
    replacements), kill every worker, free the locks the dead left held, then let
    ``terminate`` join the pool's threads, ending the result handler's read if a killed
    worker left a result cut short in its pipe. A Ctrl-C meanwhile waits for the end
    (:func:`kernels.executors.sigint_deferred`): cut short, the teardown left the
    interpreter's exit hanging on the pool.
    """
    with sigint_deferred():
        _stop_pool_now(pool)


def _stop_pool_now(pool: Any) -> None:
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
    # A worker killed while it wrote a result leaves part of it in the result pipe: the
    # result handler then waits for the rest for ever, sentinel or not, and terminate
    # waited with it (a Ctrl-C that hung, 4 times in 25 on a loaded 2-core AMD EPYC).
    # So terminate's join of it waits RESULT_HANDLER_WAIT_S; then, every worker dead and
    # the sentinel sent, nothing writes to the pipe again: closing the last write end
    # ends the handler's read at EOF once what is buffered has been read, and it returns.
    results = getattr(pool, "_result_handler", None)
    if results is not None:
        join = results.join

        def join_or_end_read(timeout: float | None = None) -> None:
            join(RESULT_HANDLER_WAIT_S)
            if results.is_alive():
                with contextlib.suppress(Exception):
                    pool._outqueue._writer.close()
                join(10)

        results.join = join_or_end_read
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
