"""A kernel's analytic arithmetic count, where its suite has no FLOP track, so that the
report can set its rate against the machine's FMA probe
(:func:`kernels.harness.machine.fma_gflops`).

The counts are the kernels' own: a spec declares one as ``arithmetic``
(:class:`kernels.registry.Arithmetic`, which says what one operation is worth in the
probe's FLOPs). A kernel without one (judged against its anchor, or with FLOP tracks
of its own) gets no such column.
"""

from __future__ import annotations

from kernels import registry


def count_for(kernel: str) -> registry.Arithmetic | None:
    """The kernel's declared arithmetic count, or None (also for a kernel not found)."""
    if kernel not in registry.kernel_names():
        return None
    return registry.spec(kernel).arithmetic
