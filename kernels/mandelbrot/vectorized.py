"""NumPy chunk kernel of the Mandelbrot kernel: masked iteration over the points still active.

All the points of a band of rows iterate together as flat float64 arrays. After each
escape test the points that escaped get their count and are dropped from the arrays
(only on the iterations where some escaped), so the work per iteration follows the
number of points still iterating, not the band's size: points inside the set cost
``max_iter`` iterations each, and those that leave at once cost one.

The ufunc sequence is the reference's, operation for operation (``zi = (2.0*zr)*zi +
ci``, ``zr = (zr2 - zi2) + cr``): NumPy's ufuncs round each operation once and never
fuse a multiply with an add, so the counts equal the pure-Python ones bit for bit.
Temporaries: about 10 float64/int64 arrays of the band's size (80 bytes a pixel); the
plan keeps bands small (:data:`kernels.mandelbrot.MAX_TASK_PIXELS`).
"""

from __future__ import annotations

import numpy as np

#: Bytes of temporaries per pixel of a band (cr, ci, zr, zi, zr2, zi2, index, masks).
BYTES_PER_PIXEL = 80


def render_rows(
    x0: float, dx: float, y0: float, dy: float, row0: int, rows: int, width: int, max_iter: int
) -> np.ndarray:
    """Counts of rows ``row0 .. row0 + rows - 1`` (int32, shape ``(rows, width)``)."""
    n = rows * width
    counts = np.full(n, max_iter, dtype=np.int32)
    # x0 + j*dx and y0 + i*dy: one multiply, one add, as the reference.
    cr_row = np.arange(width, dtype=np.float64)
    cr_row *= dx
    cr_row += x0
    ci_col = np.arange(row0, row0 + rows, dtype=np.float64)
    ci_col *= dy
    ci_col += y0
    cr = np.tile(cr_row, rows)
    ci = np.repeat(ci_col, width)
    index = np.arange(n, dtype=np.int64)
    zr = np.zeros(n)
    zi = np.zeros(n)
    zr2 = np.empty(n)
    zi2 = np.empty(n)
    norm = np.empty(n)
    escaped = np.empty(n, dtype=np.bool_)
    for it in range(max_iter):
        m = index.shape[0]
        np.multiply(zr, zr, out=zr2[:m])
        np.multiply(zi, zi, out=zi2[:m])
        np.add(zr2[:m], zi2[:m], out=norm[:m])
        np.greater(norm[:m], 4.0, out=escaped[:m])
        if escaped[:m].any():
            counts[index[escaped[:m]]] = it
            keep = ~escaped[:m]
            index = index[keep]
            if index.shape[0] == 0:
                break
            zr, zi, cr, ci = zr[keep], zi[keep], cr[keep], ci[keep]
            kept = index.shape[0]
            zr2[:kept] = zr2[:m][keep]
            zi2[:kept] = zi2[:m][keep]
            m = kept
        # zi = 2.0*zr*zi + ci, evaluated as the reference does: (2.0*zr)*zi, then + ci.
        np.multiply(zr, 2.0, out=zr)  # zr is rewritten just below, so it can hold 2*zr
        np.multiply(zr, zi, out=zi)
        np.add(zi, ci, out=zi)
        # zr = zr2 - zi2 + cr
        np.subtract(zr2[:m], zi2[:m], out=zr)
        np.add(zr, cr, out=zr)
    return counts.reshape(rows, width)
