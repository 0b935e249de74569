"""Shared-memory arrays: how the process executor hands large arrays to its workers.

The parent creates named segments (``multiprocessing.shared_memory``) and holds the
arrays in them (a kernel may allocate its data there from the start, as attention's
``shared=True`` caches do); pool workers attach by name once and keep the attachment
for later tasks (:func:`attach`), dropping attachments that the current task no longer
names so a warm pool does not pin memory of arrays already freed. Kernels do not use
this module for their tasks: :meth:`kernels.executors.ProcessExecutor.share` does.

Only the creator unlinks. A worker's attach is unregistered from the resource
tracker, because on Python < 3.13 the tracker would otherwise unlink the parent's
segment when the worker exits.

A segment's name carries its creator's pid (``kr_shm_<pid>_<random>``). A creator
killed outright (SIGKILL of its process group, the OOM killer taking the resource
tracker too) cannot unlink, so the first segment a process creates first removes the
segments whose creator is gone (:func:`remove_stale_segments`).
"""

from __future__ import annotations

import os
import secrets
import threading
from multiprocessing import resource_tracker, shared_memory
from typing import Any, NamedTuple

import numpy as np

#: Every segment kernelrace creates starts with this (tests look for leftovers).
SEGMENT_PREFIX = "kr_shm_"


class SegmentSpec(NamedTuple):
    """What a worker needs to attach an array: segment name, shape, dtype string."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class SharedArray:
    """A numpy array backed by a shared-memory segment this process created."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        dt = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
        _remove_stale_once()
        name = SEGMENT_PREFIX + f"{os.getpid()}_" + secrets.token_hex(6)
        self._shm: shared_memory.SharedMemory | None = shared_memory.SharedMemory(
            name=name, create=True, size=nbytes
        )
        self.spec = SegmentSpec(name, tuple(int(s) for s in shape), dt.str)
        self.array: np.ndarray | None = np.ndarray(shape, dtype=dt, buffer=self._shm.buf)
        _live_add(self)

    @property
    def name(self) -> str:
        return self.spec.name

    def unlink(self) -> None:
        """Remove the segment from /dev/shm (idempotent); the mapping goes with the last view."""
        shm, self._shm = self._shm, None
        self.array = None
        if shm is None:
            return
        try:
            shm.unlink()
        except FileNotFoundError:
            pass
        finally:
            _live_discard(shm.name)
        try:
            shm.close()
        except BufferError:
            # A caller still holds a view; the memory is freed when that view dies.
            pass


_live_lock = threading.Lock()
_live: dict[str, SharedArray] = {}


def _live_add(segment: SharedArray) -> None:
    with _live_lock:
        _live[segment.name] = segment


def _live_discard(name: str) -> None:
    with _live_lock:
        _live.pop(name, None)


def spec_of(array: Any) -> SegmentSpec | None:
    """The spec of ``array`` when it is the whole array of a live segment this process
    created, or a view of all of it (a read-only view, say): it can travel by name.
    Else None."""
    with _live_lock:
        segments = list(_live.values())
    return next((seg.spec for seg in segments if _is_whole(array, seg.array)), None)


def _is_whole(array: Any, whole: np.ndarray | None) -> bool:
    if whole is None or not isinstance(array, np.ndarray):
        return False
    return array is whole or (
        array.base is whole and array.shape == whole.shape and array.dtype == whole.dtype
        and array.strides == whole.strides and array.ctypes.data == whole.ctypes.data)


def live_segments() -> set[str]:
    """Names of segments this process created and has not unlinked yet."""
    with _live_lock:
        return set(_live)


def owner_pid(name: str) -> int | None:
    """The pid of the process that created segment ``name``, or None if not one of ours."""
    if not name.startswith(SEGMENT_PREFIX):
        return None
    pid, sep, _ = name[len(SEGMENT_PREFIX) :].partition("_")
    return int(pid) if sep and pid.isdigit() else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_segments() -> list[str]:
    """Unlink this package's segments in /dev/shm whose creator is gone; their names.

    A segment whose pid now belongs to another process is kept (pids are reused; keeping
    one too many is the safe side). The check assumes the processes sharing /dev/shm
    share one pid namespace, as on a plain Linux machine or inside one container.
    """
    removed = []
    for name in leftover_segments():
        pid = owner_pid(name)
        if pid is None or _process_exists(pid):
            continue
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except (FileNotFoundError, PermissionError):  # another process got there first
            continue
        removed.append(name)
    return removed


_stale_checked = False


def _remove_stale_once() -> None:
    global _stale_checked
    with _live_lock:
        if _stale_checked:
            return
        _stale_checked = True
    try:
        remove_stale_segments()
    except OSError:  # pragma: no cover - cleanup is best effort, never a reason to fail
        pass


def leftover_segments(pid: int | None = None) -> list[str]:
    """Segments with kernelrace's prefix still in /dev/shm, of any process, or only those
    the process ``pid`` created (:func:`owner_pid`)."""
    try:
        names = sorted(n for n in os.listdir("/dev/shm") if n.startswith(SEGMENT_PREFIX))
    except FileNotFoundError:  # pragma: no cover - not Linux
        return []
    return names if pid is None else [n for n in names if owner_pid(n) == pid]


# ---------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------

# name -> (SharedMemory, array). Per worker process; a worker runs one task at a time.
_attached: dict[str, tuple[shared_memory.SharedMemory, np.ndarray]] = {}


def attach(spec: SegmentSpec) -> np.ndarray:
    """The array of ``spec`` in this process, attaching once per segment name."""
    hit = _attached.get(spec.name)
    if hit is not None:
        return hit[1]
    shm = shared_memory.SharedMemory(name=spec.name, create=False)
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - tracker internals differ by version
        pass
    array = np.ndarray(spec.shape, dtype=np.dtype(spec.dtype), buffer=shm.buf)
    _attached[spec.name] = (shm, array)
    return array


def keep_only(names: set[str]) -> None:
    """Close this process's attachments other than ``names`` (caches no longer in use)."""
    for name in [n for n in _attached if n not in names]:
        shm, array = _attached.pop(name)
        del array
        try:
            shm.close()
        except BufferError:  # pragma: no cover - a view escaped; leave the mapping
            pass
