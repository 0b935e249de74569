"""Figures derived from a table's rows: speedup against the baseline, parallel efficiency,
speed against an anchor, time per item, and bandwidth and FLOP rates against the machine's
measured limits (:mod:`kernels.harness.machine`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernels.harness.report.model import PAIRED_RATIOS, PairedFigure, Row, Table, sort_key

BASELINE = "numpy"
#: The Derived fields that are shares of a machine limit, each a roofline's side.
SHARES = ("bw_fraction", "flops_fraction")


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
    # FLOPs of one call (a FLOP-count track) and the FLOP per byte the call moves (cache
    # bytes plus weight bytes where a track gives them): the roofline plot's x.
    flops: float | None = None
    intensity: float | None = None
    intensity_bytes: str | None = None  # what the bytes were: "cache + weights", ...
    # An analytic operation count (:mod:`.arithmetic`) where a kernel has no FLOP track:
    # its rate in G<unit>/s, and the share of the FMA probe (GFLOP/s, or count x probe
    # FLOP per operation) at the row's worker count.
    ops_rate: float | None = None
    fma_fraction: float | None = None
    # Workers the call really ran on, by the kernel's spec (fewer than asked below its
    # minimum grain); parallel efficiency divides by this.
    workers_used: int | None = None
    # The ratios a paired track gives this row (field name -> median, interval, rounds);
    # the field holds that median instead of the ratio of two medians timed apart.
    paired: dict[str, PairedFigure] = field(default_factory=dict)


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
            d.workers_used = _workers_used(spec, r)
            one = look.get((r.strategy, r.size, 1, r.facet))
            if one is not None:
                d.efficiency = one.seconds / ((d.workers_used or r.workers) * r.seconds)
        if anchor is not None:
            a = look.get((anchor, r.size, r.workers, r.facet)) or next(
                (x for x in table.rows
                 if x.strategy == anchor and x.size == r.size and x.facet == r.facet), None)
            if a is not None:
                d.anchor = a.seconds / r.seconds
        if per_item and isinstance(r.size, int | float) and r.size > 0:
            d.ns_per_item = r.seconds / r.size * 1e9
        _rates(d, r, table, machine)
        _paired(d, r, table)
        out[id(r)] = d
    return out


def _paired(d: Derived, r: Row, table: Table) -> None:
    """Put the paired figures of row ``r`` (:attr:`Table.paired`) in place of the ratios of
    medians timed apart; the roofline share follows a paired share of read bandwidth."""
    key = (r.strategy, r.size, r.workers, r.facet)
    for name, figures in table.paired.items():
        fig = figures.get(key)
        if fig is None:
            continue
        if name == "efficiency" and d.workers_used and r.workers and d.workers_used != r.workers:
            # The paired figure is the speed-up over the row's workers; like the ratio of
            # medians, efficiency divides by the workers that really ran.
            k = r.workers / d.workers_used
            fig = PairedFigure(fig.value * k, fig.lo * k, fig.hi * k, fig.rounds)
        d.paired[name] = fig
        setattr(d, name, fig.value)
    via = _anchor_via_baseline(r, table)
    if "anchor" not in d.paired and via is not None:
        d.paired["anchor"] = via
        d.anchor = via.value
    for share in SHARES:
        via = _share_via_baseline(r, table, share)
        if share not in d.paired and via is not None:
            d.paired[share] = via
            setattr(d, share, via.value)
    if any(share in d.paired for share in SHARES):
        _roofline(d)


def _quotient(a: PairedFigure, b: PairedFigure) -> PairedFigure | None:
    """a / b for two paired figures timed in different processes: the interval is the
    widest the two intervals allow (low over high, high over low), the rounds the fewer
    of the two. None where b is not positive."""
    if min(b.value, b.lo) <= 0:
        return None
    return PairedFigure(a.value / b.value, a.lo / b.hi, a.hi / b.lo, min(a.rounds, b.rounds))


def _anchor_via_baseline(r: Row, table: Table) -> PairedFigure | None:
    """Speed against the anchor where no benchmark pairs the two (an anchor that races
    beside the baseline only, as torch does): the row's paired speed-up over the
    baseline divided by the anchor's at the same size and workers, each timed in the
    same rounds as its own baseline calls, so the machine's drift cancels in each
    (:func:`_quotient`). The baseline's own row on 1 worker is 1 over the anchor's
    speed-up. None without both figures, and for the anchor's own rows."""
    anchor = anchor_of(table)
    speedups = table.paired.get("speedup", {})
    if anchor is None or r.strategy == anchor:
        return None
    theirs = speedups.get((anchor, r.size, r.workers, r.facet))
    mine = speedups.get((r.strategy, r.size, r.workers, r.facet))
    if theirs is not None and r.strategy == BASELINE and r.workers in (1, None):
        mine = PairedFigure(1.0, 1.0, 1.0, theirs.rounds)
    if mine is None or theirs is None:
        return None
    return _quotient(mine, theirs)


def _share_via_baseline(r: Row, table: Table, share: str) -> PairedFigure | None:
    """A row's ``share`` (of read bandwidth, or of the matmul rate) where its own race
    has no read or matmul pass (torch: numba's threads in its process slow it), from
    three paired figures of the same point: the row's speed-up over the baseline on 1
    worker (its own race), the baseline's share at the row's workers, and, above 1
    worker, the baseline's own speed-up from 1 to that many workers (both in the
    baseline's race): bytes / (t x read rate) = (t_base1 / t) x bytes / (t_base_w x
    read rate) x (t_base_w / t_base1), and the same with FLOPs and the matmul rate. The
    interval is the widest the three intervals allow. None without all of them."""
    key = (r.strategy, r.size, r.workers, r.facet)
    mine = table.paired.get("speedup", {}).get(key)
    base_key = (BASELINE, r.size, r.workers, r.facet)
    base = table.paired.get(share, {}).get(base_key)
    if mine is None or base is None:
        return None
    if not r.workers or r.workers == 1:
        scaling = PairedFigure(1.0, 1.0, 1.0, base.rounds)
    else:
        eff = table.paired.get("efficiency", {}).get(base_key)
        if eff is None or min(eff.value, eff.lo) <= 0:
            return None
        # table.paired keeps the efficiency as the track's speed-up over its scale:
        # multiplied back, the baseline's speed-up.
        w = PAIRED_RATIOS["track_speedup_2_workers"].scale
        scaling = PairedFigure(eff.value * w, eff.lo * w, eff.hi * w, eff.rounds)
    product = PairedFigure(mine.value * base.value, mine.lo * base.lo, mine.hi * base.hi,
                           min(mine.rounds, base.rounds))
    return _quotient(product, scaling)


def _workers_used(spec: Any, r: Row) -> int | None:
    """The spec's ``workers_used`` for the row's parameters, or None (no hook, or
    parameters the kernel does not take)."""
    from kernels import registry

    hook = getattr(spec, "workers_used", None)
    if hook is None or not isinstance(r.size, int) or not r.workers:
        return None
    options = {k: v for k, v in r.params.items()
               if k not in ("strategy", spec.size_name, "workers")}
    try:
        strategy, inner = registry.parse_label(r.strategy)
        return int(hook(r.size, strategy, inner, r.workers, **options))
    except (ValueError, TypeError, RuntimeError, KeyError):
        return None


def row_dtype(r: Row) -> str:
    """The row's ``dtype`` parameter (the FMA probe it is set against), else float32."""
    dtype = next((v for n, v in r.params.items() if n.lower() == "dtype"), None)
    return dtype if dtype in ("float32", "float64") else "float32"


def _intensity(d: Derived, r: Row, nbytes: float | None) -> None:
    """FLOP per byte: a FLOP count over cache (+ weight) bytes; without a count, the
    GFLOP/s track over the row's GB/s (the same FLOPs over the same bytes, the two rates
    timed apart: within the machine's drift)."""
    weights = r.extra.get("weight_bytes")
    if d.flops and nbytes:
        total = nbytes + (weights or 0.0)
        d.intensity = d.flops / total
        d.intensity_bytes = "cache + weights" if weights else "cache"
    elif d.gflops and d.gbps:
        d.intensity = d.gflops / d.gbps
        d.intensity_bytes = "cache (from the rates)"


def _rates(d: Derived, r: Row, table: Table, machine: dict[str, Any] | None) -> None:
    """GB/s and GFLOP/s of row ``r``, and their shares of the machine's measured limits at
    the row's worker count."""
    from kernels.harness.machine import bandwidth_gbps, fma_gflops, matmul_gflops

    nbytes = cache_bytes(r, table)
    if nbytes:
        d.gbps = nbytes / r.seconds / 1e9
    elif r.extra.get("gbps") is not None:
        d.gbps = r.extra["gbps"]
    if r.extra.get("flops"):  # a count beats a rate timed in another process
        d.flops = r.extra["flops"]
        d.gflops = d.flops / r.seconds / 1e9
    elif r.extra.get("gflops") is not None:
        d.gflops = r.extra["gflops"]
    _intensity(d, r, nbytes)
    _op_count(d, r, table, machine)
    if machine and d.gflops is not None and d.fma_fraction is None:
        fma = fma_gflops(machine, row_dtype(r), r.workers)
        if fma:
            d.fma_fraction = d.gflops / fma
    if machine:
        bw = bandwidth_gbps(machine, "read", r.workers)
        if d.gbps is not None and bw:
            d.bw_fraction = d.gbps / bw
        peak = matmul_gflops(machine, r.workers)
        if d.gflops is not None and peak:
            d.flops_fraction = d.gflops / peak
    _roofline(d)


def _roofline(d: Derived) -> None:
    """The larger of the row's two shares, and which limit it is; unset without both.
    Where the larger share is a paired figure, so is the roofline's (its interval)."""
    if d.bw_fraction is not None and d.flops_fraction is not None:
        d.roofline = max(d.bw_fraction, d.flops_fraction)
        d.bound = "memory" if d.bw_fraction >= d.flops_fraction else "compute"
        fig = d.paired.get("bw_fraction" if d.bound == "memory" else "flops_fraction")
        if fig is not None:
            d.paired["roofline"] = fig


def _op_count(d: Derived, r: Row, table: Table, machine: dict[str, Any] | None) -> None:
    """The rate by the kernel's analytic operation count (:mod:`.arithmetic`) and its share
    of the FMA probe, for a kernel without FLOP tracks."""
    from kernels.harness.machine import fma_gflops
    from kernels.harness.report.arithmetic import count_for

    count = count_for(table.kernel)
    if count is None or table.size_name is None or d.gflops is not None:
        return
    ops = count.ops(r.size)
    if not ops:
        return
    d.ops_rate = ops / r.seconds / 1e9
    fma = fma_gflops(machine, count.probe_dtype, r.workers) if machine else None
    if fma:
        d.fma_fraction = d.ops_rate * count.probe_flop_per_op / fma


def baseline_size(table: Table, derived: dict[int, Derived]) -> Any:
    """The largest size with a speedup baseline (numpy@1), else the largest size."""
    with_base = [r.size for r in table.rows if derived[id(r)].speedup is not None]
    sizes = sorted(set(with_base), key=sort_key) or table.sizes
    return sizes[-1] if sizes else None
