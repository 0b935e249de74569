"""The prime sieve: count the primes <= n, in every strategy.

Plan -> chunks -> chunk kernel -> combine: [0, n] is cut into ranges, each range is
counted by a chunk kernel (``reference.count_range`` in pure Python,
``vectorized.count_range`` in NumPy, ``jit.count_range`` in numba) and the counts are
summed. Every chunk kernel needs only the primes <= sqrt(n), so memory is
O(sqrt(n) + segment) for every strategy except ``pipeline``.

Strategies:

- ``python``: pure-Python odd-only segmented sieve (the reference), one core;
- ``numpy``: odd-only segmented NumPy sieve with a pre-sieved pattern, one core;
- ``numba``: wheel-30 segmented sieve; with workers > 1 the ranges run in numba's
  thread pool (prange);
- ``threaded`` / ``multiprocess``: ranges spread over a thread pool / process pool,
  each counted by the ``inner`` chunk kernel (python, numpy or numba). Threads only
  run in parallel with ``inner="numba"`` (compiled ``nogil=True``); the NumPy kernel
  holds the GIL between its many small slice assignments and the Python one always
  holds it, so their threads take turns;
- ``pipeline``: the Go-style chain of filter threads (n <= PIPELINE_MAX_N);
- ``primesieve``: the anchor, the primesieve C++ library (optional extra).
"""

from __future__ import annotations

import math
import operator
import sys
from typing import Any

import numpy as np

from kernels import executors, memory, registry
from kernels.sieve import jit, reference, vectorized
from kernels.sieve.pipeline import PIPELINE_MAX_N, count_primes_pipeline

STRATEGIES = ("python", "numpy", "numba", *executors.POOL_STRATEGIES, "pipeline", "primesieve")
SERIAL_STRATEGIES = ("python", "numpy", "pipeline")
DEFAULT_SIZES = (10**6, 10**7)

CHUNK_KERNELS = {
    "python": reference.count_range,
    "numpy": vectorized.count_range,
    "numba": jit.count_range,
}

# Known values of pi(10**k), k = 0..12.
KNOWN_PI = {
    1: 0, 10: 4, 10**2: 25, 10**3: 168, 10**4: 1229, 10**5: 9592, 10**6: 78498,
    10**7: 664579, 10**8: 5761455, 10**9: 50847534, 10**10: 455052511,
    10**11: 4118054813, 10**12: 37607912018,
}

# The largest n accepted. Every chunk kernel's arithmetic is int64 (bounds, crossing
# offsets up to hi + 31 * sqrt(hi), the NumPy kernel's p * p and first multiples), so n
# must stay well below 2**63; 2**62 leaves that margin. Past it the numba kernel wrapped
# around and returned 7 for n = 12345678901234567168.
MAX_N = 1 << 62

# A range handed to a pool is at least this long, so that per-chunk set-up stays small.
MIN_CHUNK_SPAN = 1 << 16
CHUNKS_PER_WORKER = 4
# ...and at most this long, per chunk kernel: about a third of a second of work on one
# core (numba sieves ~0.8e9 numbers/s near 1e11, NumPy and the Python reference ~1e8/s).
# A running chunk kernel cannot be interrupted (compiled code, or a pool thread), so this
# is how soon Ctrl-C is honoured; the per-range set-up it adds (the crossing offsets of
# every sieving prime, ~1.6 ms per range at 1e11) stays under 1% of a range's work.
MAX_CHUNK_SPAN = {"numba": 1 << 28, "numpy": 1 << 24, "python": 1 << 24}
# prange runs this many ranges per worker between two returns to Python.
RANGES_PER_BATCH = 2

#: A grain no input reaches: this label never splits (:data:`kernels.registry.NEVER_SPLIT`).
NEVER = registry.NEVER_SPLIT
#: The minimum grain: numbers of [0, n] per worker below which a second worker costs
#: more than it saves, by strategy label (``registry.label``). A call runs on
#: ``workers_used`` = min(workers, (n + 1) // grain) workers (at least one), and below
#: ``grain * workers`` the pool strategies send one task per worker used, so that a
#: small call pays one round trip instead of one per range. Each grain is about twice
#: the measured cost of going parallel (a prange launch, a pool round trip) times the
#: measured numbers per second of one worker: docs/sieve.md ("Minimum grain") has the
#: command and the figures. A label not listed (a pool strategy registered later) is
#: split as asked.
MIN_GRAIN: dict[str, int] = {
    "numba": 1 << 23,
    "threaded:numba": 1 << 21,
    "threaded:numpy": NEVER,
    "threaded:python": NEVER,
    "multiprocess:numba": 1 << 23,
    "multiprocess:numpy": 1 << 23,
    "multiprocess:python": 1 << 21,
    "distributed:numba": 1 << 25,
    "distributed:numpy": 1 << 23,
    "distributed:python": 1 << 21,
}


SPEC = registry.KernelSpec(
    name="sieve",
    title="prime sieve: count the primes <= n",
    size_name="n",
    unit="numbers",
    max_size=MAX_N,
    default_sizes=DEFAULT_SIZES,
    strategies=STRATEGIES,
    serial=SERIAL_STRATEGIES,
    requires={"primesieve": "primesieve"},
    # Past these a benchmark point takes minutes (asv repeats each one): the pipeline
    # starts a thread per prime, and the Python reference is ~10x slower than numba.
    size_limits={"pipeline": PIPELINE_MAX_N, "python": 10**7},
    anchors=("primesieve",),
    order=10,
    workers_used=lambda size, strategy, inner, workers, **_: workers_used(
        *_check_args(size, strategy, inner, workers)),
)


def unavailable_reason(strategy: str) -> str | None:
    """Why ``strategy`` cannot run here, or None."""
    if strategy == "primesieve":
        return registry.module_available("primesieve")
    return None


def _check_n(n: Any, strategy: str | None = None) -> int:
    """``n`` as an int in [0, MAX_N] (PIPELINE_MAX_N for ``pipeline``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int in [0, 2**62], got {type(n).__name__} {n!r}")
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n > MAX_N:
        raise ValueError(f"n must be <= 2**62 = {MAX_N} (int64 arithmetic), got {n}")
    if strategy == "pipeline" and n > PIPELINE_MAX_N:
        raise ValueError(
            f"n must be <= {PIPELINE_MAX_N} for strategy 'pipeline' (one thread per prime); "
            f"got {n}"
        )
    return n


def _check_workers(strategy: str, workers: int | None) -> int:
    return registry.check_workers(strategy, workers, SERIAL_STRATEGIES)


def _check_args(
    n: Any, strategy: str, inner: str | None, workers: int | None
) -> tuple[int, str, str | None, int]:
    """Every argument checked, in one place, before any work or pool starts."""
    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    n = _check_n(n, strategy)
    w = _check_workers(strategy, workers)
    registry.require_available(sys.modules[__name__], strategy)
    memory.check(
        f"the sieve at n={n} ({registry.label(strategy, inner)}, workers={w})",
        memory_nbytes(n, strategy, inner, w),
        hint="lower n: the base primes up to sqrt(n) and each range's offsets grow as sqrt(n)",
    )
    return n, strategy, inner, w


def workers_used(n: int, strategy: str, inner: str | None, workers: int) -> int:
    """Workers ``count_primes(n, strategy=..., inner=..., workers=workers)`` runs on:
    ``workers`` cut to one per :data:`MIN_GRAIN` numbers and one per MIN_CHUNK_SPAN
    (the shortest range), at least one; 1 for the one-core strategies; ``workers`` for
    ``primesieve``, which spreads its own threads. Arguments as checked by
    :func:`count_primes`."""
    if strategy in SERIAL_STRATEGIES:
        return 1
    grain = MIN_GRAIN.get(registry.label(strategy, inner))
    if strategy == "primesieve" or grain is None:
        return workers
    return registry.grain_workers(workers, n + 1, grain, (n + 1) // MIN_CHUNK_SPAN)


def _below_grain(n: int, strategy: str, inner: str | None, workers: int) -> bool:
    """True when ``n`` is below the grain of ``workers`` workers (the call then sends
    one task per worker used)."""
    return registry.below_grain(n + 1, MIN_GRAIN.get(registry.label(strategy, inner)), workers)


def _prime_count_bound(x: int) -> int:
    """An upper bound on the number of primes <= x (Rosser and Schoenfeld: 1.25506 x / ln x)."""
    if x < 17:
        return 7
    return int(1.25506 * x / math.log(x)) + 1


# Bytes per sieving prime that one range's chunk kernel holds while it runs: numba's
# ``nxt`` (8 planes of 4- or 8-byte offsets, see jit.offset_dtype); the NumPy kernel's
# int64 arrays over the primes (big, squares, first and its temporaries, starts) and the
# two lists of their ``tolist()``; the Python kernel's list of int objects.
_CHUNK_BYTES_PER_PRIME = {"numba": 8 * 8, "numpy": 160, "python": 48}


def memory_nbytes(n: int, strategy: str, inner: str | None = None, workers: int = 1) -> int:
    """Bytes ``count_primes(n, ...)`` holds at its peak, from the arguments alone.

    The base primes up to sqrt(n) (a byte per candidate while they are sieved, then
    int64 twice), plus, per range running at the same time, what its chunk kernel holds
    per prime and its segment; numba passes the primes as uint32, and process workers
    each receive a pickled copy of them. An estimate a little above the real figure:
    the prime count uses an upper bound. Used for the memory budget (:mod:`kernels.memory`).
    """
    if strategy == "pipeline":
        return 0
    root = math.isqrt(max(n, 0))
    primes = _prime_count_bound(root)
    base = (root + 1) + 2 * 8 * primes
    if strategy == "primesieve":
        return 8 * primes
    kernel = strategy if strategy in CHUNK_KERNELS else (inner or "numba")
    if strategy in ("python", "numpy") or (strategy == "numba" and workers == 1):
        ranges = 1
    else:
        ranges = workers  # at most this many run at once
    per_prime = _CHUNK_BYTES_PER_PRIME[kernel]
    if kernel == "numba" and (n + 31 * root) // 30 + 64 < 2**32:
        per_prime //= 2  # 32-bit offsets
    segment = max(vectorized.SEGMENT_ODDS, 8 * jit.segment_bytes_for(n + 1))
    total = base + ranges * (per_prime * primes + segment)
    if kernel == "numba":
        total += 4 * primes
    if strategy == "multiprocess":
        total += ranges * 2 * 8 * primes  # each worker's copy, and the one being pickled
    return total


def plan_ranges(n: int, workers: int, max_span: int | None = None) -> list[tuple[int, int]]:
    """Cut [0, n] into [lo, hi) ranges: CHUNKS_PER_WORKER per worker, none below
    MIN_CHUNK_SPAN, and more when needed so that none is longer than ``max_span``.

    Bounds are multiples of 30 (the wheel), so no chunk kernel splits a wheel row.
    """
    total = n + 1
    chunks = max(1, min(workers * CHUNKS_PER_WORKER, total // MIN_CHUNK_SPAN))
    needed = 1 if max_span is None else -(-total // max_span)
    if needed > chunks:
        # Whole rounds of CHUNKS_PER_WORKER ranges per worker, so that neither a pool nor
        # a batch of the numba strategy ends with workers idle (15 ranges on 2 workers
        # cost 10% at 4e9, measured paired by benchmarks/batching_cost.py).
        per_round = workers * CHUNKS_PER_WORKER
        chunks = -(-needed // per_round) * per_round
    span = -(-total // chunks)
    span = -(-span // 30) * 30
    bounds = list(range(0, total, span)) + [total]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _count_chunk(task: tuple[str, int, int, np.ndarray]) -> int:
    """Pool task: count primes in one range with the named chunk kernel (module level, so it
    pickles)."""
    inner, lo, hi, primes = task
    return CHUNK_KERNELS[inner](lo, hi, primes)


def _count_chunks(tasks: list[tuple[str, int, int, np.ndarray]]) -> int:
    """Pool task below the grain: several ranges counted one after another by one worker."""
    return sum(_count_chunk(task) for task in tasks)


def _batches(tasks: list[Any], parts: int) -> list[list[Any]]:
    """``tasks`` cut into ``parts`` contiguous runs (one per worker used)."""
    return [tasks[k * len(tasks) // parts : (k + 1) * len(tasks) // parts] for k in range(parts)]


def count_primes(
    n: int,
    *,
    strategy: str = "numba",
    workers: int | None = None,
    inner: str | None = None,
    reuse_pool: bool = True,
) -> int:
    """The number of primes <= n.

    ``n`` is an int in [0, 2**62] (:data:`MAX_N`; at most :data:`PIPELINE_MAX_N` for
    ``pipeline``). ``workers=None`` means all cores (one for the single-core strategies);
    at most 4 x the cores (:func:`kernels.executors.max_workers`). ``inner``
    picks the chunk kernel of ``threaded``/``multiprocess`` (default numba).
    ``reuse_pool=False`` starts and stops a fresh pool for this call (cold start).
    Every argument is checked before any work or pool starts.
    """
    n, strategy, inner, w = _check_args(n, strategy, inner, workers)

    if strategy == "pipeline":
        return count_primes_pipeline(n)
    if strategy == "primesieve":
        import primesieve

        with executors.limit_threads(w):
            primesieve.set_num_threads(w)
            return int(primesieve.count_primes(n))
    primes = reference.sieving_primes(n + 1)
    if strategy == "python":
        return reference.count_range(0, n + 1, primes)
    if strategy == "numpy":
        with executors.limit_threads(1):
            return vectorized.count_range(0, n + 1, primes)
    used = workers_used(n, strategy, inner, w)
    if strategy == "numba":
        return _count_numba(n, used, primes)
    kind = executors.executor_kind(strategy)
    tasks = [(inner, lo, hi, primes) for lo, hi in plan_ranges(n, used, MAX_CHUNK_SPAN[inner])]
    if _below_grain(n, strategy, inner, w):
        # One task per worker used on the pool asked for: a round trip each, not one per
        # range (the primes are pickled once per task: pickle shares the one array).
        batches = _batches(tasks, min(used, len(tasks)))
        return sum(executors.run_chunks(kind, _count_chunks, batches, w, reuse=reuse_pool))
    return sum(executors.run_chunks(kind, _count_chunk, tasks, used, reuse=reuse_pool))


def _count_numba(n: int, w: int, primes: np.ndarray) -> int:
    """The ``numba`` strategy: ranges of at most MAX_CHUNK_SPAN, counted one at a time (one
    worker) or RANGES_PER_BATCH per worker at a time over numba's threads, returning to
    Python between calls so that Ctrl-C is honoured within about a second."""
    span = MAX_CHUNK_SPAN["numba"]
    if w == 1:
        # One range when n fits in it (every benchmarked size up to 2.6e8): the same call
        # as before ranges were bounded.
        ranges = [(0, n + 1)] if n + 1 <= span else plan_ranges(n, 1, span)
        total = 0
        with executors.interrupt_guard() as check:
            for lo, hi in ranges:
                total += jit.count_range(lo, hi, primes)
                check()
        return total
    ranges = plan_ranges(n, w, span)
    # One prange call, as before, unless the span bound made more ranges than that.
    one_call = len(ranges) <= w * CHUNKS_PER_WORKER
    per_batch = len(ranges) if one_call else RANGES_PER_BATCH * w
    total = 0
    with executors.limit_threads(w), executors.interrupt_guard() as check:
        for b in range(0, len(ranges), per_batch):
            batch = ranges[b : b + per_batch]
            bounds = np.array([lo for lo, _ in batch] + [batch[-1][1]], dtype=np.int64)
            total += jit.count_ranges_parallel(bounds, primes)
            check()
    return total


def pi_by_trial_division(n: int) -> int:
    """Primes <= n by trial division: an independent check for small n."""
    return sum(
        1 for m in range(2, n + 1) if all(m % d for d in range(2, math.isqrt(m) + 1))
    )


# ---------------------------------------------------------------------------
# Harness hooks (no timing here)
# ---------------------------------------------------------------------------


def max_size(strategy: str, inner: str | None = None) -> int:
    """Largest n a strategy is raced at by default (slower ones would take minutes)."""
    return SPEC.size_limit(strategy, inner)


def check_case(
    size: int, *, strategy: str, inner: str | None = None, workers: int = 1, **options: Any
) -> None:
    """Raise what :func:`make_case` would raise for these arguments (the harness checks a
    whole grid this way before timing its first point)."""
    if options:
        raise ValueError(f"the sieve takes no options {sorted(options)}")
    _check_args(size, strategy, inner, workers)


def make_case(
    size: int, *, strategy: str, inner: str | None = None, workers: int = 1, **options: Any
) -> registry.Case:
    """A prepared ``count_primes(size, ...)`` call for the harness to time."""
    check_case(size, strategy=strategy, inner=inner, workers=workers, **options)
    n, strategy, inner, w = _check_args(size, strategy, inner, workers)

    def run() -> int:
        return count_primes(n, strategy=strategy, workers=workers, inner=inner)

    def describe(count: int, seconds: float) -> dict[str, Any]:
        known = KNOWN_PI.get(n)
        return {"count": count, "correct": None if known is None else count == known}

    # workers_used: the workers that really ran (fewer than asked below MIN_GRAIN), for
    # speed-ups and per-core figures.
    fields = {"workers_used": workers_used(n, strategy, inner, w)}
    return registry.Case(run=run, describe=describe, fields=fields)


VERIFY_SIZES = (0, 1, 2, 3, 29, 30, 31, 100, 1000, 9973, 10**4, 65_537, 10**6)


def verify(strategy: str, inner: str | None, workers: int) -> list[registry.Check]:
    """Check ``count_primes`` against the reference on small n."""
    if strategy in SERIAL_STRATEGIES and workers != 1:
        workers = 1
    checks = []
    for n in VERIFY_SIZES:
        if n > max_size(strategy, inner):
            continue
        expected = KNOWN_PI.get(n)
        if expected is None:
            expected = reference.count_range(0, n + 1, reference.sieving_primes(n + 1))
        got = count_primes(n, strategy=strategy, workers=workers, inner=inner)
        detail = f"got {got}, expected {expected}"
        checks.append(registry.Check(f"pi({n})", got == expected, detail))
    return checks
