"""numba chunk kernels for Monte Carlo pi, and the counter-based generator they use.

The generator is SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom
number generators", OOPSLA 2014; the finaliser is Stafford's "Mix13"), used as a
*counter-based* generator: output ``n`` of seed ``s`` is ``mix64(key(s) + n * GAMMA)``,
computed directly from ``n`` without any state carried between draws. That is what
makes the streams independent of threads: sample ``j`` of chunk ``i`` is draw
``n = i * 2**32 + j``, whoever computes it and in whatever order.

- Period: ``n -> key + n * GAMMA`` is a bijection of 64-bit words (GAMMA is odd) and
  ``mix64`` is a bijection too, so one seed's sequence has period 2**64 and never
  repeats a 64-bit output within it.
- No overlap: chunk ``i`` uses draws ``[i * 2**32, i * 2**32 + chunk_len)``. With
  ``chunk_len <= 2**32`` and fewer than ``2**32`` chunks these ranges are disjoint, so
  no two chunks of one seed ever share a draw (checked by the caller, see
  ``kernels.montecarlo``).
- One 64-bit draw is one sample: its low and high 32-bit halves are ``x`` and ``y`` in
  ``[0, 2**32)``. The point is inside the quarter circle when
  ``x*x + y*y < 2**64``, tested exactly in unsigned 64-bit arithmetic as
  ``y*y <= ~(x*x)`` (that is ``2**64 - 1 - x*x``), where nothing can wrap.
  No float conversion, no branch: the loop vectorises (AVX2/AVX-512).

Every function here is compiled with ``nogil=True`` so that a thread pool runs them in
parallel, and works only on integers, so the result is bit-exact on every machine.
"""

from __future__ import annotations

import numba
import numpy as np

GENERATOR = "SplitMix64 (counter-based, 32+32-bit halves per sample)"

# SplitMix64 constants (the golden-ratio increment and the Mix13 multipliers).
GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
# Draw index of a chunk's first sample: chunk i starts at i * 2**32.
CHUNK_STRIDE_BITS = 32
_STRIDE = np.uint64(1 << CHUNK_STRIDE_BITS)
# Seeds are mixed before use so that seeds 0, 1, 2... give unrelated offsets.
_SEED_SALT = np.uint64(0x6A09E667F3BCC909)

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}


@numba.njit(**_JIT)
def mix64(z: np.uint64) -> np.uint64:
    """SplitMix64's output function (Stafford Mix13): a bijection of 64-bit words."""
    z = np.uint64(z)
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(**_JIT)
def seed_key(seed: np.uint64) -> np.uint64:
    """The additive key of seed ``seed``: where its sequence starts on the 2**64 cycle."""
    return mix64(np.uint64(seed) ^ _SEED_SALT)


@numba.njit(**_JIT)
def draw(key: np.uint64, n: np.uint64) -> np.uint64:
    """Draw ``n`` of the stream with key ``key`` (for tests and the generator checks)."""
    return mix64(np.uint64(key) + np.uint64(n) * GAMMA)


@numba.njit(**_JIT)
def chunk_hits(key: np.uint64, chunk: np.int64, length: np.int64) -> np.int64:
    """Samples of chunk ``chunk`` (``length`` of them) that fall inside the quarter circle."""
    # Every operand is cast to uint64: numba turns mixed int64/uint64 arithmetic into
    # float64, which would silently ruin the generator.
    z = np.uint64(key) + (np.uint64(chunk) * _STRIDE) * GAMMA
    hits = np.int64(0)
    for j in range(length):
        r = mix64(z + np.uint64(j) * GAMMA)
        x = r & _LOW32
        y = r >> _S32
        # x*x + y*y < 2**64  <=>  y*y <= 2**64 - 1 - x*x = ~(x*x); neither side wraps.
        hits += (y * y) <= ~(x * x)
    return hits


@numba.njit(**_JIT)
def range_hits(
    key: np.uint64, first: np.int64, count: np.int64, chunk_size: np.int64, samples: np.int64
) -> np.int64:
    """Hits of chunks ``first .. first+count-1`` of ``samples`` cut into ``chunk_size`` pieces.

    One task for the thread and process pools: a run of whole chunks, each chunk keyed by
    its own index, so the sum does not depend on how chunks are grouped into tasks.
    """
    hits = np.int64(0)
    for i in range(first, first + count):
        start = i * chunk_size
        length = min(chunk_size, samples - start)
        hits += chunk_hits(key, i, length)
    return hits


@numba.njit(parallel=True, cache=True, error_model="numpy", boundscheck=False)
def parallel_hits(
    key: np.uint64, first: np.int64, count: np.int64, chunk_size: np.int64, samples: np.int64
) -> np.int64:
    """Hits of chunks ``first .. first+count-1`` over numba's thread pool (prange); the
    caller caps its thread count."""
    per_chunk = np.zeros(count, dtype=np.int64)
    for c in numba.prange(count):
        i = first + c
        start = i * chunk_size
        length = min(chunk_size, samples - start)
        per_chunk[c] = chunk_hits(key, i, length)
    return per_chunk.sum()


@numba.njit(**_JIT)
def fill_draws(key: np.uint64, first: np.int64, out: np.ndarray) -> None:
    """Write draws ``first, first+1, ...`` of stream ``key`` into ``out`` (uint64)."""
    for j in range(out.shape[0]):
        out[j] = mix64(np.uint64(key) + np.uint64(first + j) * GAMMA)
