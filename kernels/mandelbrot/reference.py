"""Pure-Python chunk kernel of the Mandelbrot kernel (the ``python`` strategy and the
reference every other chunk kernel is checked against).

The pixel and iteration definitions live here, in their most readable form; the NumPy
(:mod:`kernels.mandelbrot.vectorized`) and numba (:mod:`kernels.mandelbrot.jit`) kernels
repeat the same floating-point operations in the same order, so their counts equal these
bit for bit (docs/mandelbrot.md, "Exactness").

- Pixel ``(i, j)`` (row ``i``, column ``j``) of a ``width`` x ``height`` image of the
  region ``(x0, x1, y0, y1)`` is ``c = x + iy`` with ``x = x0 + j * dx`` and
  ``y = y0 + i * dy``, where ``dx = (x1 - x0) / width`` and ``dy = (y1 - y0) / height``:
  one multiply and one add per coordinate, ``j`` and ``i`` converted to float exactly.
- ``z`` starts at 0 and iterates ``z = z*z + c`` in explicit real arithmetic. Before each
  iteration, ``zr2 = zr*zr``, ``zi2 = zi*zi`` and the point has escaped when
  ``zr2 + zi2 > 4.0``; otherwise ``zi = 2.0*zr*zi + ci`` then ``zr = zr2 - zi2 + cr``.
- The count is the number of iterations done before the escape test first succeeds,
  ``max_iter`` when it never does (in the set, as far as ``max_iter`` can tell).
"""

from __future__ import annotations

import numpy as np


def escape_count(cr: float, ci: float, max_iter: int) -> int:
    """Iterations of ``z = z*z + c`` from ``z = 0`` before ``|z|^2 > 4``; ``max_iter`` if never."""
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


def render_rows(
    x0: float, dx: float, y0: float, dy: float, row0: int, rows: int, width: int, max_iter: int
) -> np.ndarray:
    """Counts of rows ``row0 .. row0 + rows - 1`` (int32, shape ``(rows, width)``)."""
    out = np.empty((rows, width), dtype=np.int32)
    crs = [x0 + j * dx for j in range(width)]
    for r in range(rows):
        ci = y0 + (row0 + r) * dy
        out[r] = [escape_count(cr, ci, max_iter) for cr in crs]
    return out


def render(
    width: int, height: int, max_iter: int, region: tuple[float, float, float, float]
) -> np.ndarray:
    """The whole image, row by row, with no plan, no task and no executor: what verify
    and the tests compare every strategy with."""
    x0, x1, y0, y1 = region
    return render_rows(x0, (x1 - x0) / width, y0, (y1 - y0) / height, 0, height, width, max_iter)
