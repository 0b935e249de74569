"""NumPy chunk kernel for Monte Carlo pi: one PCG64 stream per chunk, in bounded sub-blocks.

Chunk ``i`` of seed ``s`` draws from ``PCG64(SeedSequence(s, spawn_key=(i,)))``, which is
exactly child ``i`` of ``SeedSequence(s).spawn(...)`` without building the ``i - 1``
children before it. SeedSequence hashes (entropy, spawn_key) into the 128-bit PCG64
state and increment, so distinct chunks get distinct, statistically independent
streams (period 2**128 each; NumPy documents spawned streams as non-overlapping for
any practical purpose).

Like the numba kernel, one 64-bit draw is one sample: its low and high 32-bit halves
are ``x`` and ``y`` in ``[0, 2**32)`` and the point is inside when
``y*y <= ~(x*x)`` (that is ``x*x + y*y < 2**64``), all in uint64 so nothing wraps and
nothing is converted to float. The chunk is processed in sub-blocks of
:data:`BLOCK` samples, so a chunk of any length holds ``BLOCK * 17`` bytes of
temporaries (about 0.6 MB): 10**9 samples never need more than that per worker.
"""

from __future__ import annotations

import numpy as np

GENERATOR = "PCG64 (SeedSequence(seed, spawn_key=(chunk,)), 32+32-bit halves per sample)"

# 2**15 samples: three arrays of 256 KiB stay in the L2 cache; larger blocks spill
# to L3 and smaller ones pay the per-ufunc call overhead (measured: 2**15 is fastest).
BLOCK = 1 << 15

_LOW32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def chunk_generator(seed: int, chunk: int) -> np.random.PCG64:
    """The bit generator of chunk ``chunk`` of seed ``seed``."""
    return np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(chunk,)))


def chunk_hits(seed: int, chunk: int, length: int) -> int:
    """Samples of chunk ``chunk`` (``length`` of them) inside the quarter circle."""
    bits = chunk_generator(seed, chunk)
    block = min(BLOCK, length)
    xx = np.empty(block, dtype=np.uint64)
    inside = np.empty(block, dtype=np.bool_)
    hits = 0
    for start in range(0, length, block):
        m = min(block, length - start)
        r = bits.random_raw(m)
        x2 = np.bitwise_and(r, _LOW32, out=xx[:m])
        np.multiply(x2, x2, out=x2)
        np.invert(x2, out=x2)
        y2 = np.right_shift(r, _S32, out=r)
        np.multiply(y2, y2, out=y2)
        hits += int(np.count_nonzero(np.less_equal(y2, x2, out=inside[:m])))
    return hits
