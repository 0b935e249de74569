"""The report's plots (matplotlib, Agg backend): time against size, speedup, scaling over
workers, time against the bandwidth floor, KV-cache bytes per token, time per worker band,
and a kernel's picture. Each ``plot_*`` writes one PNG atomically and returns whether it
drew anything.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kernels.harness import asvresults
from kernels.harness.asvresults import BenchmarkResult
from kernels.harness.atomic import atomic_path
from kernels.harness.report.derived import BASELINE, Derived, baseline_size, cache_bytes
from kernels.harness.report.model import (
    Row,
    Table,
    classify_track,
    param_roles,
    preset_of,
    sort_key,
)
from kernels.harness.report.tables import facet_title, fmt_bytes, fmt_size


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def _facet_grid(n: int, width: float = 5.0, height: float = 3.8):
    plt = _pyplot()
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend_outside(fig: Any, ax: Any) -> None:
    """One legend for all panels, right of them, so it never hides a line."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.tight_layout()


def plot_time_vs_size(table: Table, path: Path) -> bool:
    """Log-log time against problem size, one line per strategy (1 worker solid, most dashed)."""
    if len(table.sizes) < 2:
        return False
    facets = table.facets
    fig, axes = _facet_grid(len(facets))
    look = table.lookup()
    wmax = table.workers[-1]
    wmin = table.workers[0]
    for ax, facet in zip(axes, facets, strict=True):
        for i, s in enumerate(table.strategies):
            color = f"C{i % 10}"
            for w, style in ((wmin, "-"), (wmax, "--")):
                pts = [(z, look[(s, z, w, facet)].seconds) for z in table.sizes
                       if (s, z, w, facet) in look]
                if len(pts) < 1 or (w == wmax and wmax == wmin and style == "--"):
                    continue
                xs, ys = zip(*pts, strict=True)
                label = s if w == wmin else None
                ax.plot(xs, ys, style, marker="o", ms=3, color=color, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(table.size_name or "size")
        ax.set_ylabel("median time (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(facet_title(facet) or asvresults.function_of(table.benchmark.name))
    _legend_outside(fig, axes[0])
    if table.has_workers and wmax != wmin:
        fig.suptitle(f"{table.kernel}: solid {wmin} worker, dashed {wmax} workers", fontsize=10)
    _save(fig, path)
    return True


def plot_speedup(table: Table, derived: dict[int, Derived], path: Path) -> bool:
    """Bars of speedup against numpy@1 at the largest size, one bar per worker count."""
    size = baseline_size(table, derived)
    rows = [r for r in table.rows if r.size == size and derived[id(r)].speedup is not None]
    if not rows:
        return False
    facets = list(dict.fromkeys(r.facet for r in rows))
    fig, axes = _facet_grid(len(facets), width=max(5.0, 0.5 * len(table.strategies) + 2))
    workers = table.workers
    width = 0.8 / max(1, len(workers))
    values = [derived[id(r)].speedup for r in rows]
    # Log scale only when the bars span decades (pure Python next to numba); else linear.
    log = max(values) / min(values) > 20
    for ax, facet in zip(axes, facets, strict=True):
        strategies = table.strategies
        for j, w in enumerate(workers):
            ys = []
            for s in strategies:
                r = next((x for x in rows if x.strategy == s and x.workers == w
                          and x.facet == facet), None)
                ys.append(derived[id(r)].speedup if r is not None else float("nan"))
            xs = [i + (j - (len(workers) - 1) / 2) * width for i in range(len(strategies))]
            label = f"{w} worker{'s' if w != 1 else ''}" if w is not None else None
            bars = ax.bar(xs, ys, width=width,
                          label=label, color=f"C{j}", bottom=None)
            for bar, y in zip(bars, ys, strict=True):
                if not math.isnan(y):
                    ax.annotate(f"{y:.2g}", (bar.get_x() + bar.get_width() / 2, y),
                                ha="center", va="bottom", fontsize=6)
        ax.axhline(1.0, color="k", lw=0.8)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(strategies)))
        ax.set_xticklabels(strategies, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"speedup vs {BASELINE} on 1 worker")
        ax.set_title(" ".join(x for x in (facet_title(facet),
                                          f"{table.size_name}={fmt_size(size)}") if x))
        ax.grid(True, axis="y", which="both", alpha=0.3)
        if any(w is not None for w in workers):
            ax.legend(fontsize=7)
    _save(fig, path)
    return True


def plot_scaling(table: Table, path: Path) -> bool:
    """Speedup over the same strategy on 1 worker against workers, with the ideal line.

    Each strategy is drawn at the largest size where it ran on 1 and more workers (the
    size is in its label): small sizes measure pool overhead, not scaling.
    """
    workers = [w for w in table.workers if w]
    if len(workers) < 2:
        return False
    look = table.lookup()
    facets = table.facets
    fig, axes = _facet_grid(len(facets))
    drew = False
    for ax, facet in zip(axes, facets, strict=True):
        for i, s in enumerate(table.strategies):
            sizes = [z for z in table.sizes or [None] if (s, z, 1, facet) in look
                     and any((s, z, w, facet) in look for w in workers[1:])]
            if not sizes:
                continue
            size = sizes[-1]
            one = look[(s, size, 1, facet)]
            pts = [(w, one.seconds / look[(s, size, w, facet)].seconds) for w in workers
                   if (s, size, w, facet) in look]
            xs, ys = zip(*pts, strict=True)
            label = f"{s} ({fmt_size(size)})" if size is not None else s
            ax.plot(xs, ys, marker="o", color=f"C{i % 10}", label=label)
            drew = True
        ax.plot(workers, workers, "k:", label="ideal")
        ax.set_xlabel("workers")
        ax.set_ylabel("speedup over 1 worker")
        ax.set_xticks(workers)
        ax.set_title(facet_title(facet) or f"each strategy at its largest {table.size_name}")
        ax.grid(True, alpha=0.3)
    _legend_outside(fig, axes[0])
    if not drew:
        _pyplot().close(fig)
        return False
    _save(fig, path)
    return True


def plot_bandwidth(table: Table, machine: dict[str, Any] | None, path: Path) -> bool:
    """Time against context per preset (fastest strategy, most workers) and the bandwidth floor.

    The floor is cache bytes / measured read bandwidth at that worker count: no decode
    step that reads its whole cache once can be faster.
    """
    from kernels.harness.machine import bandwidth_gbps

    if "preset" not in table.roles.values() or len(table.sizes) < 2:
        return False
    wmax = table.workers[-1]
    bw = bandwidth_gbps(machine, "read", wmax) if machine else None
    presets = list(dict.fromkeys(preset_of(r, table) for r in table.rows))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, preset in enumerate(presets):
        color = f"C{i % 10}"
        best: dict[Any, Row] = {}
        for r in table.rows:
            if preset_of(r, table) != preset or r.workers != wmax:
                continue
            if r.size not in best or r.seconds < best[r.size].seconds:
                best[r.size] = r
        if not best:
            continue
        sizes = sorted(best, key=sort_key)
        ax.plot(sizes, [best[z].seconds for z in sizes], marker="o", color=color,
                label=f"{preset} (fastest strategy)")
        nbytes = [cache_bytes(best[z], table) for z in sizes]
        if bw and all(b for b in nbytes):
            ax.plot(sizes, [b / (bw * 1e9) for b in nbytes], "--", color=color, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(table.size_name or "context length")
    ax.set_ylabel("median time per decode step (s)")
    title = f"{table.kernel}: {wmax} worker(s)"
    if bw:
        title += f"; dashed: cache bytes / {bw:.1f} GB/s measured read bandwidth"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)
    return True


def plot_kv_bytes(kernel: str, tracks: list[BenchmarkResult], table: Table | None,
                  path: Path) -> bool:
    """KV-cache bytes per token per preset: a per-token track, one bar per other parameter
    value (e.g. dtype); else cache bytes / context from the main table's bytes track."""
    track = next((t for t in tracks if classify_track(t) == "per_token"
                  and "preset" in param_roles(t.param_names).values()), None)
    series: dict[str, dict[str, float]] = {}
    source = ""
    if track is not None:
        preset_name = next((n for n in track.param_names
                            if param_roles([n])[n] == "preset"), None)
        if preset_name is None:
            return False
        for p in track.points():
            if p.ok:
                other = ", ".join(f"{k}={v}" for k, v in p.params.items() if k != preset_name)
                series.setdefault(other, {})[str(p.params[preset_name])] = float(p.value)
        source = asvresults.function_of(track.name)
    elif table is not None and "preset" in table.roles.values() and "bytes" in table.tracks:
        for r in table.rows:
            if r.extra.get("bytes") and isinstance(r.size, int | float) and r.size:
                series.setdefault("", {}).setdefault(str(preset_of(r, table)),
                                                     r.extra["bytes"] / r.size)
        source = "cache bytes / context length"
    if not series:
        return False
    presets = list(dict.fromkeys(k for s in series.values() for k in s))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(presets) + 2), 4))
    width = 0.8 / len(series)
    for j, (other, values) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(presets))]
        ys = [values.get(p, float("nan")) for p in presets]
        bars = ax.bar(xs, ys, width=width, label=other or None, color=f"C{j}")
        for bar, y in zip(bars, ys, strict=True):
            if not math.isnan(y):
                ax.annotate(fmt_bytes(y), (bar.get_x() + bar.get_width() / 2, y),
                            ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(presets)))
    ax.set_xticklabels(presets)
    ax.set_ylabel("KV-cache bytes per token")
    ax.set_title(f"{kernel}: KV-cache bytes per token ({source})", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    if any(series):
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_bands(kernel: str, track: BenchmarkResult, path: Path) -> bool:
    """Time per worker band: a ``track_`` benchmark with a ``band`` parameter (seconds of
    each band's work timed alone), one bar per band and one panel per value of the other
    parameters; each panel's title gives the slowest band over the mean (the imbalance a
    static schedule pays: the run lasts as long as its slowest band)."""
    if "band" not in track.param_names:
        return False
    panels: dict[str, dict[int, float]] = {}
    for p in track.points():
        if p.ok:
            other = ", ".join(f"{k}={v}" for k, v in p.params.items() if k != "band")
            panels.setdefault(other, {})[int(p.params["band"])] = float(p.value)
    panels = {k: v for k, v in panels.items() if v}
    if not panels:
        return False
    fig, axes = _facet_grid(len(panels), width=4.5, height=3.2)
    for ax, (other, bands) in zip(axes, panels.items(), strict=True):
        xs = sorted(bands)
        ys = [bands[b] for b in xs]
        ax.bar(xs, ys, color="C0")
        mean = sum(ys) / len(ys)
        ax.axhline(mean, color="C1", linestyle="--", linewidth=1, label="mean")
        ax.set_xticks(xs)
        ax.set_xlabel("band (one per worker, top of the image first)")
        ax.set_ylabel(f"{track.unit or 'seconds'}")
        ax.set_title(f"{other}\nslowest / mean = {max(ys) / mean:.2f}" if mean > 0
                     else other, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{kernel}: time per worker band ({asvresults.function_of(track.name)})",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_picture(kernel: str, image: Any, path: Path) -> bool:
    """The kernel's picture (its spec's ``picture()``: a 2-D array), log-scaled colours."""
    import numpy as np

    array = np.asarray(image, dtype=float)
    if array.ndim != 2 or array.size == 0:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 6 * array.shape[0] / max(1, array.shape[1])))
    ax.imshow(np.log1p(array - array.min()), cmap="magma", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{kernel}: {array.shape[1]} x {array.shape[0]} (log scale)", fontsize=9)
    _save(fig, path)
    return True


def roofline_points(table: Table, derived: dict[int, Derived]) -> tuple[Any, list[Row]]:
    """The roofline plot's points: at the most workers and the largest size where rows
    have both a FLOP per byte and a GFLOP/s, one row per preset (facet) and strategy."""
    wmax = table.workers[-1] if table.workers else None
    rows = [r for r in table.rows if r.workers == wmax
            and derived[id(r)].intensity and derived[id(r)].gflops]
    if not rows:
        return None, []
    size = max((r.size for r in rows), key=sort_key)
    return size, [r for r in rows if r.size == size]


def plot_roofline(table: Table, derived: dict[int, Derived], machine: dict[str, Any] | None,
                  path: Path) -> bool:
    """Log-log achieved GFLOP/s against FLOP per byte, one point per preset and strategy
    (:func:`roofline_points`), under the roofs of the calibration at that worker count: the
    read-bandwidth slope, the float32 matmul rate and the FMA probe's peak."""
    from kernels.harness.machine import bandwidth_gbps, fma_gflops, matmul_gflops

    size, rows = roofline_points(table, derived)
    if not rows or not machine:
        return False
    wmax = rows[0].workers
    bw = bandwidth_gbps(machine, "read", wmax)
    if not bw:
        return False
    roofs = [(v, style, label) for v, style, label in (
        (matmul_gflops(machine, wmax), "-", "float32 matmul"),
        (fma_gflops(machine, "float32", wmax), "--", "FMA probe, float32"),
    ) if v]
    xs = [derived[id(r)].intensity for r in rows]
    ridges = [v / bw for v, _, _ in roofs]
    lo, hi = min(xs + ridges) / 4, max(xs + ridges) * 4
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for v, style, label in roofs:
        ax.plot([lo, v / bw, hi], [lo * bw, v, v], style, color="k", lw=1,
                label=f"{label} {v:.0f} GFLOP/s / read {bw:.1f} GB/s")
    if not roofs:
        ax.plot([lo, hi], [lo * bw, hi * bw], "-", color="k", lw=1,
                label=f"read {bw:.1f} GB/s")
    presets = list(dict.fromkeys(preset_of(r, table) for r in rows))
    markers = "os^Dv<>pPX*h"
    for i, s in enumerate(table.strategies):
        for r in (x for x in rows if x.strategy == s):
            m = markers[presets.index(preset_of(r, table)) % len(markers)]
            ax.scatter(derived[id(r)].intensity, derived[id(r)].gflops, color=f"C{i % 10}",
                       marker=m, s=36, zorder=3)
        ax.scatter([], [], color=f"C{i % 10}", marker="o", label=s)
    for j, p in enumerate(presets):
        if p is not None:
            ax.scatter([], [], color="grey", marker=markers[j % len(markers)], label=str(p))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP per byte: "
                  + ", ".join(sorted({str(derived[id(r)].intensity_bytes) for r in rows}))
                  + ")")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title(f"{table.kernel}: roofline at {wmax} worker(s), "
                 f"{table.size_name or 'size'} {fmt_size(size)}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    _save(fig, path)
    return True
