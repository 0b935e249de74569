"""numba chunk kernels of the Mandelbrot kernel: a serial band kernel for the pools, and
two ``prange`` drivers (static bands, dynamic tiles) for the ``numba`` strategy.

The escape loop is the reference's (:mod:`kernels.mandelbrot.reference`) operation for
operation, compiled without ``fastmath``: LLVM may then neither reassociate nor contract
a multiply and an add into an FMA, so every count equals the pure-Python one bit for bit.
The tests check the compiled code for FMA instructions (``test_no_fma_in_numba_kernels``)
as well as the counts.

:func:`render_rows` iterates :data:`LANES` pixels of a row in lock step (vectorised by
LLVM) and is ``nogil=True``: the thread pool runs it in parallel. :func:`escape_count`
is the one-pixel form, for the known-point checks. The dynamic
driver hands tiles out with an atomic counter (:func:`fetch_add`), because numba's
``prange`` splits its range into one contiguous block per thread up front, and
``numba.parallel_chunksize`` did not change that with this build's OpenMP and workqueue
layers (measured: the same thread ran the same iterations with chunk size 0, 1 and 2).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_JIT = {"nogil": True, "cache": True, "error_model": "numpy", "boundscheck": False}
_PARALLEL = {"parallel": True, "cache": True, "error_model": "numpy", "boundscheck": False}


@intrinsic
def fetch_add(typingctx, counter, value):  # noqa: ARG001 - numba's intrinsic signature
    """``counter[0] += value`` atomically (sequentially consistent); the value before."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64
            and counter.ndim == 1):
        return None
    sig = types.int64(counter, types.int64)

    def codegen(context, builder, signature, args):
        array_value, add = args
        array = context.make_array(signature.args[0])(context, builder, array_value)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], array, [zero])
        return builder.atomic_rmw("add", ptr, add, "seq_cst")

    return sig, codegen


@numba.njit(**_JIT)
def escape_count(cr: float, ci: float, max_iter: int) -> int:
    """Iterations before ``zr*zr + zi*zi > 4.0``, ``max_iter`` if never (see reference)."""
    zr = 0.0
    zi = 0.0
    n = 0
    while n < max_iter:
        zr2 = zr * zr
        zi2 = zi * zi
        if zr2 + zi2 > 4.0:
            break
        zi = 2.0 * zr * zi + ci
        zr = zr2 - zi2 + cr
        n += 1
    return n


#: Pixels of a row iterated side by side. The escape loop is a chain of dependent
#: multiplies and adds (~12 cycles an iteration): one pixel at a time leaves the core
#: waiting on latency (0.25 iterations/ns measured); 16 independent pixels in lock step
#: fill it, and LLVM vectorises the lanes (AVX-512: two zmm registers, AVX2: four ymm):
#: 1.0-1.4 iterations/ns on the Xeon of docs/mandelbrot.md. Each lane still does the
#: reference's operations in the reference's order, so the counts do not change.
LANES = 16


@numba.njit(**_JIT)
def render_rows(
    out: np.ndarray, x0: float, dx: float, y0: float, dy: float, row0: int, max_iter: int
) -> None:
    """Fill ``out`` (int32, ``(rows, width)``) with the counts of rows ``row0, row0 + 1, ...``.

    Pixels go in groups of :data:`LANES`; a lane that has escaped keeps its ``z`` and its
    count (a select, not a branch, so the loop vectorises) until the whole group has
    escaped or reached ``max_iter``. Lanes past the row's end start escaped.
    """
    rows, width = out.shape
    cr = np.empty(LANES)
    zr = np.empty(LANES)
    zi = np.empty(LANES)
    count = np.empty(LANES, dtype=np.int32)
    for r in range(rows):
        ci = y0 + np.float64(row0 + r) * dy
        for j0 in range(0, width, LANES):
            for k in range(LANES):
                cr[k] = x0 + np.float64(j0 + k) * dx
                zi[k] = 0.0
                # A lane past the row's end starts at z = 4: it escapes at the first test.
                zr[k] = 0.0 if j0 + k < width else 4.0
                count[k] = 0
            for _ in range(max_iter):
                alive = 0
                for k in range(LANES):
                    a = zr[k]
                    b = zi[k]
                    zr2 = a * a
                    zi2 = b * b
                    going = not (zr2 + zi2 > 4.0)
                    new_zi = 2.0 * a * b + ci
                    new_zr = zr2 - zi2 + cr[k]
                    zi[k] = new_zi if going else b
                    zr[k] = new_zr if going else a
                    count[k] += going
                    alive += going
                if alive == 0:
                    break
            for k in range(min(LANES, width - j0)):
                out[r, j0 + k] = count[k]


@numba.njit(**_PARALLEL)
def render_static(
    image: np.ndarray, x0: float, dx: float, y0: float, dy: float,
    starts: np.ndarray, stops: np.ndarray, max_iter: int,
) -> None:
    """Rows ``starts[b] .. stops[b] - 1`` of ``image`` for every band ``b``, one band per
    iteration of ``prange`` (with as many bands as threads: one band per thread)."""
    for b in numba.prange(starts.shape[0]):
        render_rows(image[starts[b]:stops[b]], x0, dx, y0, dy, starts[b], max_iter)


@numba.njit(**_PARALLEL)
def render_dynamic(
    image: np.ndarray, x0: float, dx: float, y0: float, dy: float,
    starts: np.ndarray, stops: np.ndarray, max_iter: int, threads: int,
) -> None:
    """Rows of the tiles ``starts[t] .. stops[t] - 1`` of ``image``, handed out one at a
    time to ``threads`` threads: a thread that finishes a tile takes the next one not
    taken (OpenMP's ``schedule(dynamic, 1)`` over tiles)."""
    next_tile = np.zeros(1, dtype=np.int64)
    n_tiles = starts.shape[0]
    for _ in numba.prange(threads):
        while True:
            t = fetch_add(next_tile, 1)
            if t >= n_tiles:
                break
            render_rows(image[starts[t]:stops[t]], x0, dx, y0, dy, starts[t], max_iter)
