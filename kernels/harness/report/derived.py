"""Figures derived from a table's rows: speedup against the baseline, parallel efficiency,
speed against an anchor, time per item, and bandwidth and FLOP rates against the machine's
measured limits (:mod:`kernels.harness.machine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernels.harness.report.model import Row, Table, sort_key

BASELINE = "numpy"


def _spec(kernel: str) -> Any:
    """The kernel's spec (:mod:`kernels.registry`), or None for a kernel with none."""
    from kernels import registry

    return registry.spec(kernel) if kernel in registry.kernel_names() else None


def anchor_names(kernel: str) -> tuple[str, ...]:
    """The anchor strategies of ``kernel`` as its spec declares them; for a kernel without
    a spec, every known kernel's anchors."""
    from kernels import registry

    spec = _spec(kernel)
    if spec is not None:
        return spec.anchors
    return tuple(a for k in registry.kernel_names() for a in registry.spec(k).anchors)


@dataclass
class Derived:
    """Figures computed for one row; None where the inputs are missing."""

    speedup: float | None = None  # numpy@1 seconds / seconds
    efficiency: float | None = None  # t1 / (w * tw), same strategy
    anchor: float | None = None  # anchor seconds / seconds (1.0 = as fast as the anchor)
    ns_per_item: float | None = None
    gbps: float | None = None
    bw_fraction: float | None = None
    gflops: float | None = None
    flops_fraction: float | None = None
    # The larger of the two shares: how close the row is to its roofline, and which
    # limit binds it ("memory" or "compute"). Only where both shares are known.
    roofline: float | None = None
    bound: str | None = None


def anchor_of(table: Table) -> str | None:
    """The table's first anchor strategy (from the kernel's spec), None if it has none."""
    anchors = anchor_names(table.kernel)
    return next((s for s in table.strategies if s.split(":")[0].lower() in anchors), None)


def cache_bytes(r: Row, table: Table) -> float | None:
    """Bytes one step reads: a bytes track, else KV bytes per token x context x batch."""
    if r.extra.get("bytes"):
        return r.extra["bytes"]
    per = r.extra.get("per_token")
    if per and isinstance(r.size, int | float) and r.size > 0:
        batch = next((v for n, v in r.params.items() if n.lower() == "batch"), 1)
        return per * r.size * (batch if isinstance(batch, int) else 1)
    return None


def derive(table: Table, machine: dict[str, Any] | None) -> dict[int, Derived]:
    """Speedup, parallel efficiency and efficiency against the machine, per row (by id)."""
    look = table.lookup()
    anchor = anchor_of(table)
    spec = _spec(table.kernel)
    per_item = bool(spec and spec.per_item and table.size_name == spec.size_name)
    w_one = 1 if table.has_workers else None
    out: dict[int, Derived] = {}
    for r in table.rows:
        d = Derived()
        base = look.get((BASELINE, r.size, w_one, r.facet))
        if base is not None:
            d.speedup = base.seconds / r.seconds
        if table.has_workers and r.workers:
            one = look.get((r.strategy, r.size, 1, r.facet))
            if one is not None:
                d.efficiency = one.seconds / (r.workers * r.seconds)
        if anchor is not None:
            a = look.get((anchor, r.size, r.workers, r.facet)) or next(
                (x for x in table.rows
                 if x.strategy == anchor and x.size == r.size and x.facet == r.facet), None)
            if a is not None:
                d.anchor = a.seconds / r.seconds
        if per_item and isinstance(r.size, int | float) and r.size > 0:
            d.ns_per_item = r.seconds / r.size * 1e9
        _rates(d, r, table, machine)
        out[id(r)] = d
    return out


def _rates(d: Derived, r: Row, table: Table, machine: dict[str, Any] | None) -> None:
    """GB/s and GFLOP/s of row ``r``, and their shares of the machine's measured limits at
    the row's worker count."""
    from kernels.harness.machine import bandwidth_gbps, matmul_gflops

    nbytes = cache_bytes(r, table)
    if nbytes:
        d.gbps = nbytes / r.seconds / 1e9
    elif r.extra.get("gbps") is not None:
        d.gbps = r.extra["gbps"]
    if r.extra.get("gflops") is not None:
        d.gflops = r.extra["gflops"]
    if machine:
        bw = bandwidth_gbps(machine, "read", r.workers)
        if d.gbps is not None and bw:
            d.bw_fraction = d.gbps / bw
        peak = matmul_gflops(machine, r.workers)
        if d.gflops is not None and peak:
            d.flops_fraction = d.gflops / peak
    if d.bw_fraction is not None and d.flops_fraction is not None:
        d.roofline = max(d.bw_fraction, d.flops_fraction)
        d.bound = "memory" if d.bw_fraction >= d.flops_fraction else "compute"


def baseline_size(table: Table, derived: dict[int, Derived]) -> Any:
    """The largest size with a speedup baseline (numpy@1), else the largest size."""
    with_base = [r.size for r in table.rows if derived[id(r)].speedup is not None]
    sizes = sorted(set(with_base), key=sort_key) or table.sizes
    return sizes[-1] if sizes else None
