"""Analytic arithmetic counts for kernels that have no FLOP track, so that the report can
set their rate against the machine's FMA probe (:func:`kernels.harness.machine.fma_gflops`).

A count says what one unit of the kernel's work costs (a Monte Carlo sample, a Mandelbrot
escape iteration), how many units one call of a row does, and what one operation is worth
in the probe's FLOPs. The probe counts 2 FLOP per FMA per vector lane, so:

- a floating-point multiply or add that is not fused is 1 FLOP, and a kernel made of
  them alone tops out at half the probe (it needs one issue slot per FLOP, not per 2);
- a 64-bit integer operation takes one 64-bit vector lane slot, as a float64 FMA does:
  it is worth 2 of the float64 probe's FLOP. This is a ratio of issue rates, and an
  optimistic one for multiplies (AVX-512's 64-bit ``vpmullq`` is 3 micro-ops on Intel).

The counts belong in the kernels' specs (:class:`kernels.registry.KernelSpec`); until a
spec declares one (an ``arithmetic`` attribute of this shape, read first), the harness
keeps them here, stated from the kernels' code and docs. The sieve has none: it is
judged against its primesieve anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernels.harness.report.model import Row


@dataclass(frozen=True)
class OpCount:
    """An analytic count of a kernel's arithmetic."""

    unit: str  # what is counted: "FLOP" or "int64 op"
    per: str  # one unit of work: "sample", "iteration"
    ops_per_unit: float  # operations per unit of work
    probe_flop_per_op: float  # FLOP of the FMA probe one operation is worth (see above)
    probe_dtype: str  # the probe it is set against: "float32" or "float64"
    units_of: Callable[[Row], float | None]  # units of work in one call of a row
    explain: str  # what is counted and why, for the page

    def ops(self, r: Row) -> float | None:
        """Operations in one call of ``r``; None where the row's size says nothing."""
        units = self.units_of(r)
        return None if units is None else units * self.ops_per_unit


def _size(r: Row) -> float | None:
    return float(r.size) if isinstance(r.size, int | float) and r.size > 0 else None


# Monte Carlo (kernels/montecarlo/jit.py, chunk_hits): per sample, the counter
# z + j*GAMMA (2), SplitMix64's mix64 (3 shifts, 3 xors, 2 multiplies: 8), then
# x = r & mask, y = r >> 32, x*x, y*y, ~(x*x), the compare and the sum of hits (7).
MONTECARLO_OPS_PER_SAMPLE = 17
# Mandelbrot (kernels/mandelbrot/jit.py): per escape iteration zr*zr, zi*zi, their sum,
# 2*zr, *zi, +ci, zr2-zi2, +cr: 4 multiplies and 4 adds or subtracts, none fused (the
# exactness rule forbids FMA); the compare with 4.0 is not counted, as in
# benchmarks/mandelbrot_peak.py.
MANDELBROT_FLOP_PER_ITERATION = 8


def mandelbrot_iterations(size: Any) -> float | None:
    """Escape iterations of one render of the suite's image (the default view, max_iter
    256) at ``size`` pixels: the kernel's known checksum (the total iteration count) for
    that side, else the mean per pixel of the largest known side times the pixels (the
    mean is 67.3-67.5 at every side from 128 to 2048, measured)."""
    from kernels import mandelbrot

    if not isinstance(size, int | float) or size <= 0:
        return None
    side = mandelbrot.side_for(int(size))
    view, max_iter = mandelbrot.DEFAULT_VIEW, mandelbrot.DEFAULT_MAX_ITER
    known = {s: c for (s, it, v), c in mandelbrot.KNOWN_CHECKSUMS.items()
             if it == max_iter and v == view}
    if side in known:
        return float(known[side])
    if not known:
        return None
    largest = max(known)
    return known[largest] / largest**2 * side**2


def _counts() -> dict[str, OpCount]:
    return {
        "montecarlo": OpCount(
            unit="int64 op", per="sample", ops_per_unit=MONTECARLO_OPS_PER_SAMPLE,
            probe_flop_per_op=2.0, probe_dtype="float64", units_of=_size,
            explain=(
                f"*Gint64 op/s* counts {MONTECARLO_OPS_PER_SAMPLE} 64-bit integer "
                "operations per sample (the counter's multiply and add, SplitMix64's 3 "
                "shifts, 3 xors and 2 multiplies, then the mask, shift, 2 squares, not, "
                "compare and sum of the hit test); there is no floating-point arithmetic. "
                "*of FMA peak* sets these against the float64 FMA probe's lane slots (one "
                "64-bit operation for one float64 FMA, 2 FLOP): a ratio of issue rates, "
                "optimistic for the 4 multiplies, which AVX-512 issues as 3 micro-ops each.")),
        "mandelbrot": OpCount(
            unit="FLOP", per="iteration", ops_per_unit=MANDELBROT_FLOP_PER_ITERATION,
            probe_flop_per_op=1.0, probe_dtype="float64",
            units_of=lambda r: mandelbrot_iterations(r.size),
            explain=(
                f"*GFLOP/s* counts {MANDELBROT_FLOP_PER_ITERATION} float64 operations per "
                "escape iteration (4 multiplies, 4 adds or subtracts; the compare is not "
                "counted) over the iterations of the image (its checksum: about 67.5 a "
                "pixel for the whole set at max_iter 256). *of FMA peak* is that rate over "
                "the float64 FMA probe's at the same thread count. The kernel may not fuse "
                "a multiply and an add (every strategy must give the reference's counts "
                "bit for bit), so 50% is its ceiling; the escape test and the select of "
                "escaped lanes take issue slots too.")),
    }


def count_for(kernel: str) -> OpCount | None:
    """The kernel's arithmetic count: its spec's ``arithmetic`` if it declares one, else
    the harness's (Monte Carlo, Mandelbrot), else None."""
    from kernels import registry

    if kernel in registry.kernel_names():
        declared = getattr(registry.spec(kernel), "arithmetic", None)
        if declared is not None:
            return declared
    return _counts().get(kernel)
