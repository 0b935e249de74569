"""The memory budget: what a case will hold, checked before anything is allocated.

A kernel computes the bytes a call will hold from its arguments alone (an attention
cache from its config, context length, batch and dtype; the sieve's base primes and
offsets from sqrt(n)) and calls :func:`check` before it allocates anything or starts
any pool. :func:`check` refuses with :class:`MemoryBudgetError` when

- the bytes exceed :data:`HEADROOM` (80%) of ``MemAvailable`` in /proc/meminfo, or
- the part of them held in shared-memory segments exceeds 80% of the free space of
  /dev/shm (``os.statvfs``); those bytes count against RAM too, since tmpfs pages
  are memory.

The 20% left over is for what the estimate leaves out: the interpreter, numba's and
BLAS's own buffers, pool workers' copies of small inputs, and whatever else the machine
runs meanwhile.

``KERNELRACE_MEMORY_BUDGET`` (bytes, an int >= 0) replaces both limits with that
number, headroom included (tests use a small one). Without it, a call below
:data:`SMALL_BYTES` is not checked at all, so the timed calls of normal sizes read no
/proc file. Where /proc/meminfo or /dev/shm does not exist (not Linux) that limit is
not checked.
"""

from __future__ import annotations

import os
from typing import NamedTuple

#: The share of available memory (and of /dev/shm's free space) one call may hold.
HEADROOM = 0.8
#: Environment variable: the budget in bytes, instead of 80% of what is available.
ENV_VAR = "KERNELRACE_MEMORY_BUDGET"
#: Calls needing less than this are not checked (unless the budget is overridden).
SMALL_BYTES = 64 << 20
SHM_PATH = "/dev/shm"
MEMINFO_PATH = "/proc/meminfo"


class MemoryBudgetError(MemoryError, ValueError):
    """A call would hold more memory than the budget allows; nothing was allocated.

    A ``MemoryError``, and a ``ValueError`` so that the CLI reports it and exits 2
    like any other argument out of range.
    """


class Limit(NamedTuple):
    """A limit in bytes, what it was computed from, and from where (for the message)."""

    limit: int
    available: int | None
    source: str


def mem_available() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open(MEMINFO_PATH, "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if parts[2:3] == [b"kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def shm_available(path: str = SHM_PATH) -> int | None:
    """Free bytes of /dev/shm for an unprivileged writer, or None where it does not exist."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def override() -> int | None:
    """The budget from ``KERNELRACE_MEMORY_BUDGET``, or None when it is not set."""
    text = os.environ.get(ENV_VAR)
    if text is None or not text.strip():
        return None
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"{ENV_VAR} must be a whole number of bytes >= 0, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{ENV_VAR} must be a whole number of bytes >= 0, got {text!r}")
    return value


def ram_limit() -> Limit | None:
    """The most bytes one call may hold in memory (None: unknown, not checked)."""
    forced = override()
    if forced is not None:
        return Limit(forced, None, ENV_VAR)
    available = mem_available()
    if available is None:
        return None
    return Limit(int(available * HEADROOM), available, "MemAvailable in /proc/meminfo")


def shm_limit() -> Limit | None:
    """The most bytes one call may hold in /dev/shm segments (None: not checked)."""
    forced = override()
    if forced is not None:
        return Limit(forced, None, ENV_VAR)
    available = shm_available()
    if available is None:
        return None
    return Limit(int(available * HEADROOM), available, f"free space of {SHM_PATH}")


def format_bytes(n: int) -> str:
    """``4,294,967,296 bytes (4.00 GiB)``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    human = f"{n} B" if unit == "B" else f"{value:.2f} {unit}"
    return f"{n:,} bytes ({human})"


def _refusal(what: str, needed: int, limit: Limit, where: str, hint: str) -> MemoryBudgetError:
    if limit.available is None:
        budget = f"the memory budget is {format_bytes(limit.limit)} (set by {limit.source})"
    else:
        pct = round(HEADROOM * 100)
        budget = (f"{format_bytes(limit.available)} is available ({limit.source}) and "
                  f"kernelrace uses at most {pct}% of it, {format_bytes(limit.limit)}")
    text = f"{what} needs {format_bytes(needed)} {where}, but {budget}"
    return MemoryBudgetError(f"{text}; {hint}" if hint else text)


def check(what: str, needed: int, *, shared: int = 0, hint: str = "") -> None:
    """Refuse a call that would hold ``needed`` bytes, ``shared`` of them in /dev/shm.

    ``what`` names the call and its sizing parameters (the message starts with it);
    ``hint`` says which parameter to lower. Call it once, up front, before allocating.
    """
    needed = int(needed)
    shared = int(shared)
    if max(needed, shared) < SMALL_BYTES and os.environ.get(ENV_VAR) is None:
        return
    if shared:
        limit = shm_limit()
        if limit is not None and shared > limit.limit:
            raise _refusal(what, shared, limit, f"in shared memory ({SHM_PATH})", hint)
    limit = ram_limit()
    if limit is not None and needed > limit.limit:
        raise _refusal(what, needed, limit, "of memory", hint)
