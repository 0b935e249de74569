"""NumPy chunk kernel for the sieve: odd-only segmented sieve with a pre-sieved pattern.

Index ``i`` stands for the odd number ``2*i + 1``. Each segment starts as a copy of a
pattern that already has the multiples of 3, 5, 7, 11 and 13 crossed (it repeats every
3*5*7*11*13 = 15015 odds); every larger prime then crosses its multiples with one
strided slice assignment. The start of every prime's progression in a segment is
computed for all primes at once with array arithmetic, so the per-prime Python cost
is one slice assignment per segment. Segments of 2**21 bytes stay inside L2.
"""

from __future__ import annotations

import numpy as np

SEGMENT_ODDS = 1 << 21
PRESIEVE_PRIMES = (3, 5, 7, 11, 13)
PATTERN_PERIOD = 3 * 5 * 7 * 11 * 13

_patterns: dict[int, np.ndarray] = {}


def pattern_for(segment: int) -> np.ndarray:
    """pattern[i] = 0 where 2*i + 1 is a multiple of a presieve prime; period 15015."""
    pattern = _patterns.get(segment)
    if pattern is None:
        odd = 2 * np.arange(PATTERN_PERIOD + segment, dtype=np.int64) + 1
        pattern = np.ones(odd.size, dtype=np.uint8)
        for p in PRESIEVE_PRIMES:
            pattern[odd % p == 0] = 0
        pattern = _patterns[segment] = pattern
    return pattern


def count_range(lo: int, hi: int, primes: np.ndarray, segment: int = SEGMENT_ODDS) -> int:
    """Primes p with lo <= p < hi; ``primes`` holds every prime <= sqrt(hi - 1)."""
    if hi <= lo:
        return 0
    count = sum(1 for p in (2,) + PRESIEVE_PRIMES if lo <= p < hi)
    pattern = pattern_for(segment)
    big = primes[primes > PRESIEVE_PRIMES[-1]].astype(np.int64)
    squares = big * big
    i_lo, i_hi = lo // 2, hi // 2
    for s0 in range(i_lo, i_hi, segment):
        s1 = min(s0 + segment, i_hi)
        length = s1 - s0
        offset = s0 % PATTERN_PERIOD
        flags = pattern[offset : offset + length].copy()
        # First odd multiple of each prime that is >= max(p*p, 2*s0 + 1).
        low = 2 * s0 + 1
        first = np.maximum(squares, (low + big - 1) // big * big)
        first += np.where(first % 2 == 0, big, 0)
        starts = (first - 1) // 2 - s0
        live = starts < length
        for start, p in zip(starts[live].tolist(), big[live].tolist(), strict=True):
            flags[start::p] = 0
        if s0 == 0:
            flags[0] = 0  # 1 is not prime
        count += int(np.count_nonzero(flags))
    return count
