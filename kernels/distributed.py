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

import atexit
import contextlib
import functools
import logging
import os
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kernels.executors import Executor, _forget, resolve_workers, shutdown_pools

#: The environment variable holding a scheduler address (``tcp://HOST:PORT``).
SCHEDULER_ENV = "KERNELRACE_SCHEDULER"
#: Seconds to wait for a scheduler to answer before giving up with a RuntimeError.
CONNECT_TIMEOUT_S = 10.0
#: How long a step waits for a cluster that has no worker at the moment (a nanny
#: restarting lost ones) before it fails.
WORKER_WAIT_S = 60.0
#: A NumPy array this large (bytes) in a task tuple is scattered once, not pickled per task.
SCATTER_BYTES = 64 * 1024
#: Owners (attention caches) whose shards an executor keeps on its workers at once; the
#: least recently used beyond this many are released.
KEPT_OWNERS = 2
#: New items on a worker become a block of their own; its two newest blocks are then
#: merged (on the worker) while the older holds at most this many times the newer's
#: items. Like a binary counter: O(log n) blocks per worker, each item copied O(log n)
#: times as a cache grows one token per step.
MERGE_RATIO = 2


@functools.cache
def _close_ours_first() -> None:
    """At exit, close the warm pools before Dask's own exit hook closes the clusters:
    exit hooks run newest first, and Dask's was registered when Dask was imported, after
    kernels.executors registered :func:`shutdown_pools`. Ours closes each cluster quietly
    (:meth:`DaskExecutor.close`); Dask's, in any order, printed one's shutdown to stderr at
    INFO (14 lines at the end of ``kernelrace verify``)."""
    atexit.register(shutdown_pools)


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


#: The name Dask's Nanny gives the worker processes it spawns (distributed/nanny.py).
_NANNY_PROCESS_NAME = "Dask Worker process (from Nanny)"
_main_hidden = False


def _hide_main_from_nanny_workers() -> None:
    """Spawn Dask's nanny workers without re-running the caller's main script.

    Dask starts each worker with multiprocessing's spawn, which re-runs the caller's
    ``__main__`` in the new process (as ``__mp_main__``) so that functions defined there
    can be unpickled. An unguarded script (no ``if __name__ == "__main__":``), piped
    code or a notebook then starts a cluster again inside every worker, and the Nanny
    fails to start. Workers do not need the main module: kernelrace's tasks live in
    importable modules, and Dask sends functions and classes defined in ``__main__`` by
    value. So, once per process, spawn's preparation data for a process named as Dask's
    nanny names its workers loses the main module's path and name, for the first start
    and for every restart after a worker dies (the nanny restarts it in this process,
    later, with ``__main__`` as it is then). Other processes are spawned as before.
    """
    global _main_hidden
    if _main_hidden:
        return
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        if name == _NANNY_PROCESS_NAME:
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = preparation_data
    _main_hidden = True


def _is_future(value: Any) -> bool:
    return type(value).__name__ == "Future" and type(value).__module__.startswith("distributed")


def resolve_handle(handle: dict[str, Any]) -> dict[str, Any]:
    """Inside a task: a :meth:`DaskExecutor.share` handle with any future still in it
    replaced by its value. Dask resolves futures nested in a task's arguments itself; this
    covers versions that do not."""
    if not any(_is_future(v) for v in handle.values()):
        return handle
    return {k: v.result() if _is_future(v) else v for k, v in handle.items()}


# ---------------------------------------------------------------------------
# Shards kept on the workers between calls (Executor.share_split)
# ---------------------------------------------------------------------------


@dataclass
class _Block:
    """Items of the split arrays held by one worker: ``ranges`` in the order its arrays
    hold them, and a future per array name."""

    address: str
    ranges: list[tuple[int, int]]
    futures: dict[str, Any]

    @property
    def size(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)


@dataclass
class _Shards:
    """What one executor keeps of one owner's arrays on its workers."""

    signature: tuple
    addresses: tuple[str, ...]
    generation: int
    whole: dict[str, Any]
    blocks: list[_Block] = field(default_factory=list)

    def futures(self) -> list[Any]:
        return list(self.whole.values()) + [f for b in self.blocks for f in b.futures.values()]


def missing_ranges(held: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The parts of [0, length) that no range in ``held`` covers, in order."""
    out, at = [], 0
    for lo, hi in sorted(held):
        if lo > at:
            out.append((at, min(lo, length)))
        at = max(at, hi)
        if at >= length:
            break
    if at < length:
        out.append((at, length))
    return [(lo, hi) for lo, hi in out if hi > lo]


def fill_levels(loads: list[int], new: int) -> list[int]:
    """How many of ``new`` items each worker gets so that loads end as even as they can
    (water-filling: the least loaded first; ties to the earlier worker)."""
    lo, hi = min(loads), max(loads) + new
    while lo < hi:  # the lowest level T with sum(max(0, T - load)) >= new
        mid = (lo + hi) // 2
        if sum(max(0, mid - x) for x in loads) >= new:
            hi = mid
        else:
            lo = mid + 1
    give = [max(0, lo - x) for x in loads]
    extra = sum(give) - new
    for i in sorted(range(len(loads)), key=lambda i: (-give[i], -i)):
        if extra == 0:
            break
        if give[i] > 0:
            give[i] -= 1
            extra -= 1
    return give


def take_ranges(ranges: list[tuple[int, int]], count: int
                ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The first ``count`` items of ``ranges`` (as ranges), and the rest."""
    taken, rest = [], list(ranges)
    while count > 0 and rest:
        lo, hi = rest.pop(0)
        n = min(count, hi - lo)
        taken.append((lo, lo + n))
        if lo + n < hi:
            rest.insert(0, (lo + n, hi))
        count -= n
    return taken, rest


def block_pieces(ranges: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Local [lo, hi) offsets, in a block holding ``ranges`` back to back, of its items
    below ``length``."""
    out, offset = [], 0
    for lo, hi in ranges:
        if lo < length:
            out.append((offset, offset + min(hi, length) - lo))
        offset += hi - lo
    return out


def _take_items(array: Any, axis: int, ranges: list[tuple[int, int]]) -> Any:
    import numpy as np

    index = [slice(None)] * array.ndim
    parts = []
    for lo, hi in ranges:
        index[axis] = slice(lo, hi)
        parts.append(array[tuple(index)])
    return np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts, axis)


def _concat(axis: int, first: Any, second: Any) -> Any:
    """On a worker: two blocks' arrays back to back (a merge of blocks)."""
    import numpy as np

    return np.concatenate([first, second], axis)


def _lost_data(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's way of saying a task's inputs were lost with a worker
    (a cancelled future or a killed worker), not an error of the task itself."""
    import asyncio
    import concurrent.futures

    return (type(exc).__name__ in ("FutureCancelledError", "KilledWorker", "CancelledError")
            and (type(exc).__module__.startswith("distributed")
                 or isinstance(exc, (asyncio.CancelledError,
                                     concurrent.futures.CancelledError))))


def _forget_owner(executor_ref: Any, key: Hashable) -> None:
    """An owner was garbage collected: release its shards."""
    executor = executor_ref()
    if executor is not None:
        executor._watched.discard(key)
        shards = executor._kept.pop(key, None)
        if shards is not None:
            executor._release(shards)


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
        _close_ours_first()
        if self.address is None:
            with warnings.catch_warnings():
                # Without a dashboard the scheduler still serves /health on 8787, or on a
                # free port with a warning when a cluster already holds it: not our concern.
                warnings.filterwarnings("ignore", message="Port .* is already in use")
                _hide_main_from_nanny_workers()
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
        self._kept: dict[Hashable, _Shards] = {}
        self._watched: set[Hashable] = set()

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

    def describe(self) -> dict[str, Any]:
        """The cluster a row's tasks ran on: ``local`` (a LocalCluster this executor
        started) or the scheduler's address, and its worker threads then. With an
        address, ``workers`` is the tasks kept in flight, not the cluster's size."""
        return {"cluster": self.address or "local", "cluster_workers": self.cluster_workers()}

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

    # -- shards kept between calls -------------------------------------------------

    def _addresses(self, parts: int) -> tuple[str, ...]:
        """The first ``parts`` workers' addresses. A cluster that has none at this moment
        (its nannies restarting lost workers) is waited for, up to
        :data:`WORKER_WAIT_S`, instead of failing on an empty list."""
        workers = self.client.scheduler_info().get("workers", {})
        if not workers:
            try:
                self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
            except (TimeoutError, OSError) as exc:
                raise RuntimeError(
                    f"the Dask cluster ({self.address or 'local'}) has no worker (waited "
                    f"{WORKER_WAIT_S:g} s)") from exc
            workers = self.client.scheduler_info().get("workers", {})
        return tuple(sorted(workers))[:max(1, parts)]

    @contextlib.contextmanager
    def share_split(  # noqa: PLR0913
        self, arrays: dict[str, Any], axes: dict[str, int | None], length: int, parts: int,
        *, source: Any = None, what: str = "arrays", hint: str = "",
    ) -> Iterator[list[list[tuple[Any, int, int]]]]:
        """Shards of the split arrays, each on one worker (never broadcast), and one task
        per worker over its shard. With a ``source`` (an attention cache) the shards stay
        on the workers after the call: the next call with the same source sends only
        the items written since (:meth:`first_write_since`) or not sent yet, to the
        least loaded workers, and drops what a write made stale; a worker that left (or
        a new one) makes it start over. Arrays read whole go to every worker once."""
        from kernels import memory

        if length <= 0:
            yield []
            return
        addresses = self._addresses(min(parts, length))
        key = getattr(source, "share_id", None)
        shards = self._kept.pop(key, None) if key is not None else None
        signature = tuple(sorted(
            (name, axes[name], a.dtype.str,
             tuple(n for i, n in enumerate(a.shape) if i != axes[name]))
            for name, a in arrays.items()))
        if shards is not None and (shards.signature != signature
                                   or shards.addresses != addresses
                                   or any(f.status in ("lost", "error", "cancelled")
                                          for f in shards.futures())):
            self._release(shards)
            shards = None
        if shards is None:
            whole = {k: a for k, a in arrays.items() if axes[k] is None}
            if self._cluster is not None:
                per_item = sum(a.nbytes // a.shape[axes[k]] for k, a in arrays.items()
                               if axes[k] is not None)
                memory.check(f"{what}, split between {len(addresses)} Dask workers",
                             per_item * length + sum(a.nbytes for a in whole.values())
                             * len(addresses), hint=hint)
            names = list(whole)
            scattered = (self.client.scatter([whole[k] for k in names], broadcast=True,
                                             hash=False) if names else [])
            shards = _Shards(signature, addresses, 0, dict(zip(names, scattered, strict=True)))
        elif source is not None:
            first = source.first_write_since(shards.generation)
            if first is not None:  # drop every block holding an item written since
                stale = [b for b in shards.blocks if any(hi > first for _, hi in b.ranges)]
                shards.blocks = [b for b in shards.blocks if b not in stale]
                self.client.cancel([f for b in stale for f in b.futures.values()])
        shards.generation = getattr(source, "generation", 0)
        ok = False
        try:
            self._add_items(shards, arrays, axes, length)
            split = []
            for address in addresses:
                pieces = [({**shards.whole, **b.futures}, lo, hi)
                          for b in shards.blocks if b.address == address
                          for lo, hi in block_pieces(b.ranges, length)]
                if pieces:
                    split.append(pieces)
            yield split
            ok = True
        finally:
            if ok and key is not None:
                self._keep(key, source, shards)
            else:  # no owner, or the call failed (a worker lost?): start over next time
                self._release(shards)

    def map_split(  # noqa: PLR0913
        self, fn: Callable[[Any], Any], arrays: dict[str, Any], axes: dict[str, int | None],
        length: int, make_task: Callable[[list[tuple[Any, int, int]]], Any], parts: int, *,
        source: Any = None, what: str = "arrays", hint: str = "",
    ) -> list[Any]:
        """:meth:`Executor.map_split`, once more if a worker was lost during the call: the
        shards it held were scattered, not computed, so Dask cannot rebuild them and the
        tasks that needed them are cancelled; the second try sends them afresh."""
        for attempt in (1, 2):
            try:
                return super().map_split(fn, arrays, axes, length, make_task, parts,
                                         source=source, what=what, hint=hint)
            except Exception as exc:
                if attempt == 2 or not _lost_data(exc):
                    raise
        raise AssertionError("unreachable")

    def _add_items(self, shards: _Shards, arrays: dict[str, Any],
                   axes: dict[str, int | None], length: int) -> None:
        """Send the items of [0, length) that no block holds, evening out the loads."""
        missing = missing_ranges([r for b in shards.blocks for r in b.ranges], length)
        new = sum(hi - lo for lo, hi in missing)
        if new == 0:
            return
        loads = [sum(b.size for b in shards.blocks if b.address == a) for a in shards.addresses]
        split_names = [k for k in arrays if axes[k] is not None]
        for address, count in zip(shards.addresses, fill_levels(loads, new), strict=True):
            if count == 0:
                continue
            ranges, missing = take_ranges(missing, count)
            data = [_take_items(arrays[k], axes[k], ranges) for k in split_names]
            futures = self.client.scatter(data, workers=[address], hash=False)
            shards.blocks.append(_Block(address, ranges, dict(zip(split_names, futures,
                                                                  strict=True))))
            self._merge_newest(shards, address, axes)

    def _merge_newest(self, shards: _Shards, address: str, axes: dict[str, int | None]) -> None:
        mine = [b for b in shards.blocks if b.address == address]
        while len(mine) >= 2 and mine[-2].size <= MERGE_RATIO * mine[-1].size:
            older, newer = mine[-2], mine[-1]
            merged = _Block(address, older.ranges + newer.ranges, {
                k: self.client.submit(_concat, axes[k], older.futures[k], newer.futures[k],
                                      workers=[address], allow_other_workers=False,
                                      pure=False)
                for k in older.futures})
            shards.blocks = [b for b in shards.blocks if b is not older and b is not newer]
            shards.blocks.append(merged)
            mine[-2:] = [merged]

    def _keep(self, key: Hashable, source: Any, shards: _Shards) -> None:
        self._kept[key] = shards  # most recently used last
        if key not in self._watched:  # released when the owner is garbage collected
            self._watched.add(key)
            weakref.finalize(source, _forget_owner, weakref.ref(self), key)
        while len(self._kept) > KEPT_OWNERS:
            self._release(self._kept.pop(next(iter(self._kept))))

    def _release(self, shards: _Shards) -> None:
        with contextlib.suppress(Exception):
            if not self._closed:
                self.client.cancel(shards.futures())
        shards.blocks, shards.whole = [], {}

    def kept_blocks(self, source: Any) -> list[tuple[str, list[tuple[int, int]]]]:
        """(worker address, item ranges) of each block kept for ``source`` (for tests)."""
        shards = self._kept.get(getattr(source, "share_id", None))
        return [] if shards is None else [(b.address, list(b.ranges)) for b in shards.blocks]

    def close(self) -> None:
        """Close the client; stop the LocalCluster if this executor started it."""
        if self._closed:
            return
        kept, self._kept = list(self._kept.values()), {}
        for shards in kept:  # released first: a cluster closing with them logs lost data
            self._release(shards)
        self._closed = True
        _forget(self)
        # Dask's loggers are quiet while a cluster we started lives (silence_logs), and
        # each cluster puts back the levels it found as it closes: with two clusters
        # closed in another order than they started (Dask's own exit hook closes them in
        # any order), the last one's shutdown went to stderr at INFO, 14 lines.
        from distributed.utils import silence_logging_cmgr

        with silence_logging_cmgr(logging.CRITICAL):
            with contextlib.suppress(Exception):
                self._client.close(timeout=10)
            if self._cluster is not None:
                with contextlib.suppress(Exception):
                    self._cluster.close(timeout=30)
