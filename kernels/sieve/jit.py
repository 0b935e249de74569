"""numba chunk kernel for the sieve: a segmented wheel-30 sieve over eight residue planes.

Numbers coprime to 30 are ``30*k + R[j]`` with ``R = (1, 7, 11, 13, 17, 19, 23, 29)``.
Each residue ``j`` gets its own byte plane indexed by ``k``, so the multiples of a
prime ``p`` that fall in plane ``j`` are an arithmetic progression of stride ``p``:
the inner loop is one byte store per composite, with no division and no
read-modify-write. Only 8/30 of the numbers are stored (vs 15/30 odd-only), and
multiples of 2, 3 and 5 are never crossed.

Per segment and plane:

1. the plane is initialised from a pre-sieved pattern that already has the
   multiples of 7, 11, 13 and 17 crossed (the pattern repeats every 7*11*13*17 = 17017
   values of ``k``), so the four densest primes cost one memcpy;
2. every other prime ``p <= sqrt(hi)`` crosses its progression; where it stopped
   is kept in ``nxt[plane, prime]`` (an offset from the next segment's start; 32-bit
   up to about 1.2e11, see :func:`offset_dtype`, and the primes passed as 32-bit: the
   hot loop streams half the bytes) for the next segment, so no division happens in
   the hot loop. Primes below segment/8 cross in a loop unrolled by four. The larger
   ones cross a plane segment at most 8, 4 or 2 times (by class): for them a loop's
   exit, taken after a varying 0-8 trips, is mispredicted about once per prime, plane
   and segment, which at 10**9 cost more than their stores. They run a fixed 8, 4 or
   2 branchless steps instead, each step storing either to its crossing or, once past
   the segment, to a spare byte beyond it (what that gained, measured: docs/sieve.md);
3. the plane's bytes are summed.

A plane segment is ``segment_bytes`` long (32 KiB, inside L1, by default; larger when
sqrt(n) is larger, so that each sieving prime still hits a segment at least once).
Memory is O(sqrt(n) + segment): the base primes, ``nxt`` (8 offsets per prime) and one
plane segment, plus the 8 x 17017-byte pattern.
"""

from __future__ import annotations

import math

import numba
import numpy as np

RESIDUES = np.array([1, 7, 11, 13, 17, 19, 23, 29], dtype=np.int64)
# Inverse of each residue modulo 30 (r * INVERSE[r % 30] % 30 == 1).
_INVERSE = np.zeros(30, dtype=np.int64)
for _r in RESIDUES:
    _INVERSE[_r] = pow(int(_r), -1, 30)

PRESIEVE_PRIMES = (7, 11, 13, 17)
PATTERN_PERIOD = 7 * 11 * 13 * 17  # in k: 30 * period is a multiple of each presieve prime
L1_SEGMENT_BYTES = 32 * 1024


def segment_bytes_for(hi: int) -> int:
    """Plane segment length in bytes for sieving up to ``hi``: L1-sized, or >= sqrt(hi)/30*8."""
    root = math.isqrt(max(hi, 1))
    size = L1_SEGMENT_BYTES
    while size * 30 < root:  # keep every prime hitting each segment at least once on average
        size *= 2
    return size


def _build_pattern(extra: int) -> np.ndarray:
    """Plane patterns: pattern[j, t] = 1 unless 30*t + R[j] is a multiple of 7, 11, 13 or 17."""
    t = np.arange(PATTERN_PERIOD + extra, dtype=np.int64)
    pattern = np.ones((8, t.size), dtype=np.uint8)
    for j, r in enumerate(RESIDUES):
        values = 30 * t + r
        for p in PRESIEVE_PRIMES:
            pattern[j, values % p == 0] = 0
    return pattern


_patterns: dict[int, np.ndarray] = {}


def pattern_for(segment: int) -> np.ndarray:
    """The pre-sieved pattern, long enough to copy ``segment`` bytes from any offset."""
    pattern = _patterns.get(segment)
    if pattern is None:
        pattern = _patterns[segment] = _build_pattern(segment)
    return pattern


@numba.njit(cache=True, nogil=True)
def _count_ones(flags, length):
    """Sum of the 0/1 bytes flags[:length], eight at a time (a byte-lane sum by multiply)."""
    words = length // 8
    w = flags[: words * 8].view(np.uint64)
    total = np.uint64(0)
    for t in range(words):
        total += (w[t] * np.uint64(0x0101010101010101)) >> np.uint64(56)
    for t in range(words * 8, length):
        total += np.uint64(flags[t])
    return np.int64(total)


@numba.njit(cache=True, nogil=True)
def _copy_bytes(dst, src, length):
    """dst[:length] = src[:length], eight bytes at a time.

    numba's slice assignment allows for overlap and copies through a temporary; this
    loop over uint64 words (unaligned loads are fine on x86-64 and arm64) runs at
    L1/L2 speed.
    """
    words = length // 8
    d = dst[: words * 8].view(np.uint64)
    s = src[: words * 8].view(np.uint64)
    for t in range(words):
        d[t] = s[t]
    for t in range(words * 8, length):
        dst[t] = src[t]


@numba.njit(nogil=True, inline="always")
def _cross_fixed(seg, row, primes, first, start, stop, end, spare, steps):  # noqa: PLR0913
    """Cross planes for primes[first + start : first + stop], each ``steps`` times without
    a branch: a step past ``end`` stores to ``seg[spare]`` and stays put. Every prime here
    must cross at most ``steps`` times (p > segment / steps)."""
    for i in range(start, stop):
        up = np.uint64(primes[first + i])
        kk = np.uint64(row[i])
        for _ in range(steps):
            inside = kk < end
            seg[kk if inside else spare] = 0
            kk = kk + up if inside else kk
        row[i] = kk - end


@numba.njit(cache=True, nogil=True)
def _count_range(lo, hi, primes, pattern, segment, residues, inverse, offset_kind):  # noqa: PLR0913
    """Count primes p with lo <= p < hi. ``primes``: every prime <= sqrt(hi - 1), ascending.

    ``offset_kind`` (an empty array) gives the dtype of ``nxt``: uint32 when every
    offset fits (see :func:`offset_dtype`), which halves what the hot loop streams.
    """
    if hi <= lo:
        return 0
    count = 0
    # 2, 3, 5 are not on the wheel; 7, 11, 13, 17 are crossed by the pattern.
    for small in (2, 3, 5, 7, 11, 13, 17):
        if lo <= small < hi:
            count += 1
    k0 = lo // 30
    k1 = (hi - 1) // 30 + 1  # rows k0 .. k1-1 cover [lo, hi)

    # Sieving primes: those above the presieve set (primes is sorted).
    first = np.searchsorted(primes, 17, side="right")
    nprimes = primes.size - first
    # nxt[j, i]: where prime i next crosses plane j, as an offset from the start of the
    # segment being sieved. Plane-major: the hot loop reads it in order.
    nxt = np.empty((8, nprimes), dtype=offset_kind.dtype)
    for i in range(nprimes):
        p = np.int64(primes[first + i])
        inv = inverse[p % 30]
        qmin = max(p, (lo + p - 1) // p)
        for j in range(8):
            c = (residues[j] * inv) % 30  # p*q = R[j] (mod 30)  <=>  q = c (mod 30)
            q = qmin + (c - qmin) % 30
            nxt[j, i] = (p * q) // 30 - k0

    # Rows c8 on: p > segment/8, so at most 8 crossings per plane segment (c4: 4, c2: 2).
    c8 = max(np.searchsorted(primes, segment // 8, side="right"), first) - first
    c4 = max(np.searchsorted(primes, segment // 4, side="right"), first) - first
    c2 = max(np.searchsorted(primes, segment // 2, side="right"), first) - first
    seg = np.empty(segment + 64, dtype=np.uint8)  # the spare byte at [segment] and padding
    spare = np.uint64(segment)
    period = pattern.shape[1] - segment
    for s0 in range(k0, k1, segment):
        s1 = min(s0 + segment, k1)
        length = s1 - s0
        offset = s0 % period
        # Local offsets as unsigned ints: numba then drops its negative-index
        # wraparound check from the hot loop.
        end = np.uint64(length)
        for j in range(8):
            _copy_bytes(seg, pattern[j, offset : offset + length], length)
            row = nxt[j]
            for i in range(c8):
                kk = np.uint64(row[i])
                up = np.uint64(primes[first + i])
                while kk + up * np.uint64(3) < end:  # unrolled by four
                    seg[kk] = 0
                    seg[kk + up] = 0
                    seg[kk + up * np.uint64(2)] = 0
                    seg[kk + up * np.uint64(3)] = 0
                    kk += up * np.uint64(4)
                while kk < end:
                    seg[kk] = 0
                    kk += up
                row[i] = kk - end  # from the next segment's start (same plane)
            _cross_fixed(seg, row, primes, first, c8, c4, end, spare, 8)
            _cross_fixed(seg, row, primes, first, c4, c2, end, spare, 4)
            _cross_fixed(seg, row, primes, first, c2, nprimes, end, spare, 2)
            # Rows at the two ends may hold numbers outside [lo, hi).
            if s0 == k0 and 30 * k0 + residues[j] < lo:
                seg[0] = 0
            if s1 == k1 and 30 * (k1 - 1) + residues[j] >= hi:
                seg[length - 1] = 0
            if s0 == 0 and j == 0:
                seg[0] = 0  # 1 is not prime
            count += _count_ones(seg, length)
    return count


@numba.njit(cache=True, parallel=True)
def _count_ranges_parallel(bounds, primes, pattern, segment, residues, inverse, offset_kind):  # noqa: PLR0913
    """Sum of _count_range over [bounds[i], bounds[i+1]), the ranges spread over numba's threads."""
    n = bounds.size - 1
    counts = np.zeros(n, dtype=np.int64)
    for r in numba.prange(n):
        i = n - 1 - r  # the costliest (highest) ranges first, the cheapest last
        counts[i] = _count_range(
            bounds[i], bounds[i + 1], primes, pattern, segment, residues, inverse, offset_kind
        )
    return counts.sum()


def offset_dtype(lo: int, hi: int, primes: np.ndarray) -> np.dtype:
    """uint32 when every ``nxt`` offset of a sieve of [lo, hi) fits in it, else int64.

    A prime's first multiple p*q in a plane (q >= max(p, lo/p), 30 values of q apart at
    most) is below max(p**2 + 30p, hi + 31p), and later offsets are below p: so every
    offset, in rows of 30, is below max(p_max**2 + 30 p_max, hi + 31 p_max) / 30 + 1.
    Up to about 1.2e11 that fits in 32 bits.
    """
    p_max = int(primes[-1]) if primes.size else 0
    bound = max(p_max * p_max + 30 * p_max, hi + 31 * p_max) // 30 + 64
    return np.dtype(np.uint32) if bound < 2**32 else np.dtype(np.int64)


def _kernel_args(lo: int, hi: int, primes: np.ndarray, segment: int | None = None) -> tuple:
    """(primes, pattern, segment, residues, inverse, offset_kind) for the numba kernels;
    primes as uint32 (they are <= sqrt(hi) < 2**32): half the bytes the hot loop reads.
    ``segment`` defaults to :func:`segment_bytes_for`; the tests pass small ones."""
    segment = segment or segment_bytes_for(hi)
    kind = np.empty(0, dtype=offset_dtype(lo, hi, primes))
    small = primes.astype(np.uint32) if primes.size and primes[-1] < 2**32 else primes
    return small, pattern_for(segment), segment, RESIDUES, _INVERSE, kind


def count_range(lo: int, hi: int, primes: np.ndarray, segment: int | None = None) -> int:
    """Primes in [lo, hi) with the wheel-30 sieve; ``primes`` holds every prime <= sqrt(hi-1).
    ``segment``: plane segment bytes (default :func:`segment_bytes_for`)."""
    return int(_count_range(lo, hi, *_kernel_args(lo, hi, primes, segment)))


def count_ranges_parallel(bounds: np.ndarray, primes: np.ndarray) -> int:
    """Primes in [bounds[0], bounds[-1]), the ranges between bounds run in parallel (prange)."""
    args = _kernel_args(int(bounds[0]), int(bounds[-1]), primes)
    # Ranges higher up cost more (more sieving primes), so hand them out one at a time
    # (dynamic scheduling) instead of numba's default of equal blocks per thread.
    with numba.parallel_chunksize(1):
        return int(_count_ranges_parallel(bounds.astype(np.int64), *args))
