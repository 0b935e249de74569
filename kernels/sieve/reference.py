"""Pure-Python sieve: the reference every other strategy is checked against.

Odd-only segmented sieve of Eratosthenes on a ``bytearray``; slow but short enough
to check by eye. Also the base-prime helper every strategy shares.
"""

from __future__ import annotations

import math

import numpy as np

# Odd numbers per segment: 2**18 bytes keeps memory O(sqrt(n) + segment).
SEGMENT_ODDS = 1 << 18


def base_primes(limit: int) -> np.ndarray:
    """Every prime <= ``limit``, ascending, as int64 (a plain sieve: limit is ~sqrt(n))."""
    if limit < 2:
        return np.zeros(0, dtype=np.int64)
    flags = np.ones(limit + 1, dtype=bool)
    flags[:2] = False
    for p in range(2, math.isqrt(limit) + 1):
        if flags[p]:
            flags[p * p :: p] = False
    return np.flatnonzero(flags).astype(np.int64)


def sieving_primes(hi: int) -> np.ndarray:
    """The primes a sieve of [.., hi) needs: every prime <= sqrt(hi - 1)."""
    return base_primes(math.isqrt(max(hi - 1, 0)))


def count_range(lo: int, hi: int, primes: np.ndarray, segment: int = SEGMENT_ODDS) -> int:
    """Primes p with lo <= p < hi; ``primes`` holds every prime <= sqrt(hi - 1)."""
    if hi <= lo:
        return 0
    count = 1 if lo <= 2 < hi else 0
    odd_primes = [int(p) for p in primes if p > 2]
    # Index i stands for the odd number 2*i + 1; odds in [lo, hi) are i in [lo//2, hi//2).
    i_lo, i_hi = lo // 2, hi // 2
    for s0 in range(i_lo, i_hi, segment):
        s1 = min(s0 + segment, i_hi)
        flags = bytearray(b"\x01") * (s1 - s0)
        for p in odd_primes:
            first = max(p * p, (2 * s0 + 1 + p - 1) // p * p)
            if first % 2 == 0:
                first += p  # the first odd multiple
            start = (first - 1) // 2 - s0
            if start < s1 - s0:
                flags[start::p] = bytes(len(range(start, s1 - s0, p)))
        if s0 == 0:
            flags[0] = 0  # 1 is not prime
        count += flags.count(1)
    return count
