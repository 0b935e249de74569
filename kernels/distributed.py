"""The ``distributed`` strategy's executor: chunk tasks on a Dask distributed cluster.

One more :class:`kernels.executors.Executor`, kind ``dask``; no kernel knows about it.
Without a scheduler address it starts a ``LocalCluster`` of ``workers`` single-threaded
worker processes on this machine (once: :func:`kernels.executors.get_executor` keeps it
warm, :func:`kernels.executors.shutdown_pools` closes it at exit). With an address (the
``scheduler=`` argument, else ``KERNELRACE_SCHEDULER`` in the environment, which
``kernelrace run --scheduler`` sets) it connects to a running cluster and never starts or
stops one; ``workers`` is then the number of tasks kept in flight.

What travels (docs/distributed.md): each task is pickled on its own, so large arrays are
never embedded in it. :meth:`DaskExecutor.share` scatters the arrays to every worker once
and hands tasks futures, which Dask resolves to the arrays on the worker; a NumPy array of
:data:`SCATTER_BYTES` or more passed directly in a task tuple (the sieve's base primes) is
scattered once per :meth:`~DaskExecutor.map` call in the same way.

Faults: a worker that dies is restarted by its nanny and the scheduler reruns its tasks;
a task's exception is re-raised in the caller; Ctrl-C (or any error) cancels the futures
still pending; a scheduler that does not answer within :data:`CONNECT_TIMEOUT_S` is a
RuntimeError naming its address.

Dask is an optional dependency (``pip install '.[distributed]'``): this module imports it
only when an executor is made, so that it imports, and the strategy reports itself
unavailable, without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from kernels.executors import Executor, _forget, resolve_workers

#: The environment variable holding a scheduler address (``tcp://HOST:PORT``).
SCHEDULER_ENV = "KERNELRACE_SCHEDULER"
#: Seconds to wait for a scheduler to answer before giving up with a RuntimeError.
CONNECT_TIMEOUT_S = 10.0
#: A NumPy array this large (bytes) in a task tuple is scattered once, not pickled per task.
SCATTER_BYTES = 64 * 1024

# Set in each LocalCluster worker before it imports anything: one BLAS/OpenMP/numba
# thread per single-threaded worker process, so that ``workers=k`` means k cores.
_WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def scheduler_address(scheduler: str | None = None) -> str | None:
    """The scheduler to connect to: ``scheduler``, else ``$KERNELRACE_SCHEDULER``, else None
    (start a LocalCluster)."""
    address = scheduler if scheduler is not None else os.environ.get(SCHEDULER_ENV, "")
    return address.strip() or None


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """While a LocalCluster starts its workers: hide the caller's main script from them.

    Dask starts each worker with multiprocessing's spawn, which re-runs the caller's
    ``__main__`` in the new process (as ``__mp_main__``) so that functions defined there
    can be unpickled. An unguarded script (no ``if __name__ == "__main__":``) then starts
    a cluster again inside every worker, and the Nanny fails to start. kernelrace's tasks
    live in importable modules and Dask sends functions defined in ``__main__`` by value,
    so workers do not need the main module: spawn asks for it only when ``__main__`` has
    a ``__spec__`` name or a ``__file__``, and both are hidden for the start-up (as
    :func:`kernels.process_pool._make_context` does for process pools). A worker that the
    Nanny restarts later (after a crash) is spawned with the main module visible again.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _is_future(value: Any) -> bool:
    return type(value).__name__ == "Future" and type(value).__module__.startswith("distributed")


def resolve_handle(handle: dict[str, Any]) -> dict[str, Any]:
    """Inside a task: a :meth:`DaskExecutor.share` handle with any future still in it
    replaced by its value. Dask resolves futures nested in a task's arguments itself; this
    covers versions that do not."""
    if not any(_is_future(v) for v in handle.values()):
        return handle
    return {k: v.result() if _is_future(v) else v for k, v in handle.items()}


class DaskExecutor(Executor):
    """Runs tasks on a Dask distributed cluster: a LocalCluster of ``workers``
    single-threaded processes it owns, or a running cluster at a scheduler address.

    Results come back in task order; a task's exception is re-raised here as the worker
    raised it; on any exception or Ctrl-C the pending futures are cancelled. Tasks are
    independent and pure, so a worker lost mid-run costs only the rerun of its tasks.
    """

    kind = "dask"
    #: Tasks run in other processes, possibly on other hosts: they cannot write into the
    #: caller's memory (shared-memory segments included), so results must be returned.
    same_host_memory = False

    def __init__(self, workers: int, *, scheduler: str | None = None,
                 timeout: float | None = None) -> None:
        self.workers = resolve_workers(workers)
        timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
        self.address = scheduler_address(scheduler)
        try:
            import distributed
        except ImportError as exc:
            raise RuntimeError(
                f"the distributed strategy needs Dask ({exc}); pip install '.[distributed]'"
            ) from None
        self._cluster: Any = None
        if self.address is None:
            with warnings.catch_warnings():
                # Without a dashboard the scheduler still serves /health on 8787, or on a
                # free port with a warning when a cluster already holds it: not our concern.
                warnings.filterwarnings("ignore", message="Port .* is already in use")
                with _main_not_reimported():
                    self._cluster = distributed.LocalCluster(
                        n_workers=self.workers, threads_per_worker=1, processes=True,
                        dashboard_address=None, silence_logs=logging.CRITICAL,
                        env=dict(_WORKER_ENV), host="127.0.0.1",
                    )
            try:
                self._client = distributed.Client(self._cluster, set_as_default=False)
            except BaseException:
                self._cluster.close()
                raise
        else:
            try:
                self._client = distributed.Client(
                    self.address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise RuntimeError(
                    f"no Dask scheduler answered at {self.address} within {timeout:g} s "
                    f"({type(exc).__name__}: {exc}); start one (`dask scheduler`) or unset "
                    f"{SCHEDULER_ENV} / drop --scheduler to run on a local cluster"
                ) from None
        self._closed = False

    @classmethod
    def warm_key(cls, workers: int) -> Hashable:
        """Warm executors are kept per worker count and per scheduler address."""
        return (workers, scheduler_address())

    @property
    def client(self) -> Any:
        if self._closed:
            raise RuntimeError("DaskExecutor is closed")
        return self._client

    def owns_cluster(self) -> bool:
        """Whether this executor started its cluster (and so stops it on close)."""
        return self._cluster is not None

    def cluster_workers(self) -> int:
        """Worker threads the cluster has now (its size, which the scheduler reports)."""
        info = self.client.scheduler_info()
        return sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())

    def pids(self) -> list[int]:
        """Process ids of the cluster's workers (for tests and diagnostics)."""
        return sorted(self.client.run(os.getpid).values())

    def _scatter_task_arrays(self, tasks: list[Any]) -> tuple[list[Any], list[Any]]:
        """Tasks with each large NumPy array of a tuple task replaced by a future of it,
        scattered to every worker once per distinct array; and those futures."""
        import numpy as np

        big: dict[int, Any] = {}
        for task in tasks:
            if isinstance(task, tuple):
                for item in task:
                    if isinstance(item, np.ndarray) and item.nbytes >= SCATTER_BYTES:
                        big[id(item)] = item
        if not big:
            return tasks, []
        ids = list(big)
        futures = self.client.scatter([big[i] for i in ids], broadcast=True, hash=False)
        by_id = dict(zip(ids, futures, strict=True))
        out = [tuple(by_id.get(id(item), item) if isinstance(item, np.ndarray) else item
                     for item in task) if isinstance(task, tuple) else task
               for task in tasks]
        return out, futures

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
        client = self.client
        tasks, scattered = self._scatter_task_arrays(list(tasks))
        futures: list[Any] = []
        try:
            if self._cluster is not None:
                # Our own cluster has exactly `workers` single-threaded workers: submit
                # everything, the scheduler feeds them.
                futures = client.map(fn, tasks, pure=False)
                return client.gather(futures)
            return self._map_in_flight(fn, tasks, futures)
        except BaseException:
            # Error or Ctrl-C: nothing pending keeps running for a caller who left.
            with contextlib.suppress(Exception):
                client.cancel(futures + scattered, force=True)
            raise
        finally:
            with contextlib.suppress(Exception):
                client.cancel(scattered)

    def _map_in_flight(self, fn: Callable[[Any], Any], tasks: list[Any],
                       futures: list[Any]) -> list[Any]:
        """On a shared cluster: at most ``workers`` tasks submitted at a time."""
        from distributed import as_completed

        client = self.client
        results: list[Any] = [None] * len(tasks)
        index: dict[Any, int] = {}

        def submit(i: int) -> Any:
            future = client.submit(fn, tasks[i], pure=False)
            futures.append(future)
            index[future.key] = i
            return future

        first = min(self.workers, len(tasks))
        pending = as_completed([submit(i) for i in range(first)], loop=client.loop)
        following = first
        for future in pending:
            results[index[future.key]] = future.result()  # re-raises a task's exception
            future.release()
            if following < len(tasks):
                pending.add(submit(following))
                following += 1
        return results

    @contextlib.contextmanager
    def share(self, arrays: dict[str, Any], *, what: str = "arrays", hint: str = ""
              ) -> Iterator[dict[str, Any]]:
        """Futures of ``arrays``, scattered to every worker once (each worker holds a copy;
        on a LocalCluster that is ``workers`` copies in this machine's memory, checked
        against the memory budget first). Released when the block exits."""
        from kernels import memory

        if self._cluster is not None:
            nbytes = sum(a.nbytes for a in arrays.values())
            memory.check(f"a copy of {what} in each of {self.workers} Dask workers",
                         nbytes * self.workers, hint=hint)
        # A list, not the dict: Dask would take the dict's names as keys, shared by every
        # call (and released by the first call's exit under the next one's tasks).
        names = list(arrays)
        scattered = self.client.scatter([arrays[k] for k in names], broadcast=True, hash=False)
        futures = dict(zip(names, scattered, strict=True))
        try:
            yield futures
        finally:
            with contextlib.suppress(Exception):
                self.client.cancel(list(futures.values()))

    def close(self) -> None:
        """Close the client; stop the LocalCluster if this executor started it."""
        if self._closed:
            return
        self._closed = True
        _forget(self)
        with contextlib.suppress(Exception):
            self._client.close(timeout=10)
        if self._cluster is not None:
            with contextlib.suppress(Exception):
                self._cluster.close(timeout=30)
