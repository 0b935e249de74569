"""Pure-Python chunk kernel (the ``python`` strategy) and slow references for the others.

- :func:`chunk_hits` is the ``python`` strategy's chunk kernel: ``random.Random``
  (Mersenne Twister, period 2**19937 - 1) seeded with ``seed * 2**64 + chunk``, two
  ``random()`` floats per sample.
- :func:`splitmix_chunk_hits` and :func:`pcg64_chunk_hits` recompute the numba and
  NumPy chunk kernels one sample at a time with Python integers and the plain
  ``x*x + y*y < 2**64`` test, so tests and ``kernelrace verify`` can check those
  kernels bit for bit on small chunks.
"""

from __future__ import annotations

import random

import numpy as np

GENERATOR = "MT19937 (random.Random(seed * 2**64 + chunk))"

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_SEED_SALT = 0x6A09E667F3BCC909
_LIMIT = 1 << 64


def chunk_random(seed: int, chunk: int) -> random.Random:
    """The ``random.Random`` of chunk ``chunk`` of seed ``seed`` (distinct per pair)."""
    return random.Random((seed << 64) | chunk)


def chunk_hits(seed: int, chunk: int, length: int) -> int:
    """Samples of chunk ``chunk`` (``length`` of them) inside the quarter circle."""
    draw = chunk_random(seed, chunk).random
    hits = 0
    for _ in range(length):
        x = draw()
        y = draw()
        if x * x + y * y < 1.0:
            hits += 1
    return hits


def mix64(z: int) -> int:
    """SplitMix64's output function on Python ints (reference for ``jit.mix64``)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def splitmix_key(seed: int) -> int:
    """Reference for ``jit.seed_key``."""
    return mix64(seed ^ _SEED_SALT)


def splitmix_draw(key: int, n: int) -> int:
    """Draw ``n`` of the SplitMix64 stream with key ``key``."""
    return mix64((key + n * _GAMMA) & _MASK64)


def _inside(r: int) -> bool:
    x, y = r & 0xFFFFFFFF, r >> 32
    return x * x + y * y < _LIMIT


def splitmix_chunk_hits(seed: int, chunk: int, length: int) -> int:
    """Slow, obviously correct recomputation of ``jit.chunk_hits`` for seed ``seed``."""
    key = splitmix_key(seed)
    first = chunk << 32
    return sum(_inside(splitmix_draw(key, first + j)) for j in range(length))


def pcg64_chunk_hits(seed: int, chunk: int, length: int) -> int:
    """Slow, obviously correct recomputation of ``vectorized.chunk_hits``."""
    bits = np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(chunk,)))
    return sum(_inside(int(r)) for r in bits.random_raw(length))
