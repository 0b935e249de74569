"""The report: asv results + machine calibration -> results/report.md and results/plots/*.png.

Reads, never writes, asv's results (see :mod:`kernels.harness.asvresults`). Nothing
here knows a kernel's benchmarks by name; it finds them by convention:

- the kernel is the benchmark's module name without ``bench_``
  (``bench_sieve.TimeSieve.time_count`` -> ``sieve``);
- parameters are found by their ``param_names``: ``strategy`` (a label such as
  ``numba`` or ``threaded:numba``; an ``inner`` parameter is joined to it), the
  problem size (``size``, ``n``, ``samples``, ``context``...), ``workers`` and
  ``preset``; any other parameter is kept as a column of its own;
- ``time_*``/``timeraw_*`` benchmarks give the tables; ``track_*`` benchmarks
  whose parameters are a subset of a time benchmark's are joined to it by name
  or unit: bytes (``*bytes*``, unit ``bytes``) and GB/s give bandwidth,
  ``*per_token*`` gives KV bytes per token, ``*flop*`` gives GFLOP/s;
- ``numpy`` on 1 worker is the speedup baseline; ``primesieve`` or ``torch``
  strategies are anchors that every strategy is compared with.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels.harness import asvresults
from kernels.harness.asvresults import BenchmarkResult, ResultFile, ResultsError
from kernels.harness.atomic import atomic_path

KERNEL_ORDER = ("sieve", "montecarlo", "attention")
BASELINE = "numpy"
ANCHORS = ("primesieve", "torch", "sdpa", "torch_sdpa", "torch-sdpa", "pytorch")
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "strategy": ("strategy", "label", "impl", "implementation", "variant", "method"),
    "inner": ("inner",),
    "size": ("size", "n", "limit", "samples", "n_samples", "context", "context_len",
             "ctx", "seq_len", "seqlen", "tokens", "length"),
    "workers": ("workers", "threads", "cores", "jobs", "n_workers", "num_workers"),
    "preset": ("preset", "config", "model", "attn", "variant_config"),
}
PER_ITEM_SIZE_NAMES = ("samples", "n_samples")
PER_ITEM_KERNELS = ("montecarlo",)


# ---------------------------------------------------------------------------
# Rows: one time measurement with its parameters sorted into roles
# ---------------------------------------------------------------------------


def param_roles(param_names: Iterable[str]) -> dict[str, str]:
    """param name -> role (strategy, inner, size, workers, preset, or the name itself)."""
    roles: dict[str, str] = {}
    taken: set[str] = set()
    for name in param_names:
        low = name.lower()
        role = next((r for r, names in ROLE_NAMES.items() if low in names and r not in taken),
                    None)
        roles[name] = role or name
        if role:
            taken.add(role)
    return roles


@dataclass
class Row:
    """A time benchmark at one parameter combination (seconds)."""

    strategy: str
    size: Any
    workers: int | None
    facet: tuple[tuple[str, Any], ...]  # preset and other parameters
    params: dict[str, Any]
    seconds: float
    q25: float | None
    q75: float | None
    repeat: int | None = None  # samples behind the median (1 with asv --quick)
    extra: dict[str, float | None] = field(default_factory=dict)

    @property
    def facet_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.facet)


@dataclass
class Table:
    """All rows of one time benchmark, and the joined track values."""

    kernel: str
    benchmark: BenchmarkResult
    roles: dict[str, str]
    rows: list[Row]
    failed: list[str]
    skipped: int
    size_name: str | None
    tracks: dict[str, BenchmarkResult]  # kind (bytes, gbps, per_token, gflops) -> track

    def lookup(self) -> dict[tuple[Any, ...], Row]:
        return {(r.strategy, r.size, r.workers, r.facet): r for r in self.rows}

    @property
    def has_workers(self) -> bool:
        return "workers" in self.roles.values()

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r.strategy for r in self.rows))

    @property
    def sizes(self) -> list[Any]:
        return sorted({r.size for r in self.rows if r.size is not None}, key=_sort_key)

    @property
    def workers(self) -> list[int | None]:
        return sorted({r.workers for r in self.rows}, key=lambda w: (w is None, w or 0))

    @property
    def facets(self) -> list[tuple[tuple[str, Any], ...]]:
        return list(dict.fromkeys(r.facet for r in self.rows))


def _sort_key(x: Any) -> tuple[int, Any]:
    return (0, x) if isinstance(x, int | float) else (1, str(x))


def classify_track(track: BenchmarkResult) -> str | None:
    """What a ``track_`` benchmark measures, from its name and unit; None if unknown."""
    fname = asvresults.function_of(track.name).lower()
    unit = (track.unit or "").lower()
    if "ratio" in fname:
        return None
    if "per_token" in fname or "/token" in unit:
        return "per_token"
    if "flop" in fname or "flop" in unit:
        return "gflops"
    if "gbps" in fname or "bandwidth" in fname or "gb/s" in unit:
        return "gbps"
    if "bytes" in fname or unit in ("bytes", "b"):
        return "bytes"
    return None


def build_table(kernel: str, bench: BenchmarkResult,
                tracks: list[BenchmarkResult]) -> Table:
    """Rows of a time benchmark with parameter roles, quartiles and joined track values."""
    roles = param_roles(bench.param_names)
    by_role = {role: name for name, role in roles.items()}
    rows: list[Row] = []
    failed: list[str] = []
    skipped = 0
    chosen: dict[str, BenchmarkResult] = {}
    group = asvresults.group_of(bench.name)
    # Tracks of the same class first; then those sharing most parameters.
    def rank(t: BenchmarkResult) -> tuple[bool, int]:
        return (asvresults.group_of(t.name) != group,
                -len(set(t.param_names) & set(bench.param_names)))

    for t in sorted(tracks, key=rank):
        kind = classify_track(t)
        if kind and kind not in chosen and _joinable(kind, t, bench):
            chosen[kind] = t
    track_values = {kind: _index(t, bench.param_names) for kind, t in chosen.items()}
    for p in bench.points():
        if p.value is None:
            failed.append(p.label())
            continue
        if not p.ok:
            skipped += 1
            continue
        strategy = str(p.params.get(by_role.get("strategy", ""), bench.name.rsplit(".", 1)[-1]))
        inner = p.params.get(by_role.get("inner", ""))
        if inner not in (None, "", "-", "none"):
            strategy = f"{strategy}:{inner}"
        workers = p.params.get(by_role.get("workers", ""))
        facet = tuple(
            (name, value) for name, value in p.params.items()
            if roles[name] not in ("strategy", "inner", "size", "workers")
        )
        stats = p.stats or {}
        extra = {kind: idx.get(_subkey(p.params, _shared(chosen[kind], bench.param_names)))
                 for kind, idx in track_values.items()}
        rows.append(Row(
            strategy=strategy,
            size=p.params.get(by_role.get("size", "")),
            workers=int(workers) if isinstance(workers, int | float) else None,
            facet=facet,
            params=p.params,
            seconds=float(p.value),
            q25=stats.get("q_25"),
            q75=stats.get("q_75"),
            repeat=int(stats["repeat"]) if "repeat" in stats else None,
            extra=extra,
        ))
    return Table(kernel, bench, roles, rows, failed, skipped, by_role.get("size"), chosen)


def _subkey(params: dict[str, Any], names: Iterable[str]) -> tuple[Any, ...]:
    return tuple(params.get(n) for n in names)


def _joinable(kind: str, track: BenchmarkResult, bench: BenchmarkResult) -> bool:
    """Whether a track's values belong to the time benchmark's rows.

    Rates (GB/s, GFLOP/s) are of one configuration: same parameters exactly. Cache bytes
    do not depend on strategy or workers: a subset will do. Bytes per token is a property
    of the preset: any shared parameter, the others read at their first value.
    """
    mine, theirs = set(bench.param_names), set(track.param_names)
    if kind in ("gbps", "gflops"):
        return theirs == mine
    if kind == "bytes":
        return theirs <= mine
    return bool(theirs & mine)


def _shared(track: BenchmarkResult, names: Iterable[str]) -> list[str]:
    return [n for n in track.param_names if n in set(names)]


def _index(track: BenchmarkResult, names: Iterable[str]) -> dict[tuple[Any, ...], float]:
    """Track values keyed by the parameters it shares with a time benchmark.

    A parameter the time benchmark lacks (e.g. the track's ``dtype``) is read at its
    first listed value, which is where suites put the default.
    """
    shared = _shared(track, names)
    first = {n: asvresults.decode_param(v[0]) for n, v in zip(track.param_names, track.params,
                                                             strict=False) if v}
    out = {}
    for p in track.points():
        if not p.ok or any(p.params[n] != first[n] for n in track.param_names
                           if n not in shared):
            continue
        out[_subkey(p.params, shared)] = float(p.value)
    return out


# ---------------------------------------------------------------------------
# Derived figures
# ---------------------------------------------------------------------------


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
    from kernels.harness.machine import bandwidth_gbps, matmul_gflops

    look = table.lookup()
    anchors = [s for s in table.strategies if s.split(":")[0].lower() in ANCHORS]
    anchor = anchors[0] if anchors else None
    per_item = table.kernel in PER_ITEM_KERNELS or (table.size_name or "") in PER_ITEM_SIZE_NAMES
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
        out[id(r)] = d
    return out


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------


def fmt_seconds(s: float | None) -> str:
    """Seconds with a unit that keeps 3 significant digits readable."""
    if s is None or not math.isfinite(s):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s:.3g} s"


def fmt_size(x: Any) -> str:
    """Problem sizes: powers of ten as 1e8, others with thousands separators."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    x_int = int(x)
    if x_int == x and x_int >= 10_000:
        exp = len(str(x_int)) - 1
        lead, rest = divmod(x_int, 10**exp)
        if rest == 0:
            return f"{lead}e{exp}"
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def fmt_bytes(b: float | None) -> str:
    """Bytes in binary units (KiB, MiB, GiB)."""
    if b is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def _x(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}x"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table; numeric-looking columns right-aligned."""
    def esc(c: str) -> str:
        return str(c).replace("|", "\\|")

    def numeric(c: str) -> bool:
        return c == "-" or c[:1].isdigit() or c[:1] in "±.-"

    align = ["---:" if rows and all(numeric(str(r[i])) for r in rows) else ":---"
             for i in range(len(headers))]
    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _spread(r: Row) -> str:
    if r.q25 is None or r.q75 is None or r.seconds <= 0 or (r.repeat or 2) < 2:
        return "-"
    return f"±{50 * (r.q75 - r.q25) / r.seconds:.1f}%"


def render_table(table: Table, derived: dict[int, Derived]) -> str:
    """The markdown table of one time benchmark, columns chosen by what exists."""
    facet_names = [n for n, _ in table.facets[0]] if table.facets and table.facets[0] else []
    ds = [derived[id(r)] for r in table.rows]
    anchor = next((s for s in table.strategies if s.split(":")[0].lower() in ANCHORS), None)
    cols: list[tuple[str, Any]] = [("strategy", lambda r, d: r.strategy)]
    cols += [(n, lambda r, d, n=n: str(dict(r.facet).get(n))) for n in facet_names]
    if table.size_name:
        cols.append((table.size_name, lambda r, d: fmt_size(r.size)))
    if table.has_workers:
        cols.append(("workers", lambda r, d: str(r.workers)))
    cols += [("median", lambda r, d: fmt_seconds(r.seconds)), ("IQR/2", lambda r, d: _spread(r))]
    if any(d.speedup is not None for d in ds):
        cols.append((f"speedup vs {BASELINE}@1", lambda r, d: _x(d.speedup)))
    if any(d.efficiency is not None for d in ds) and len(table.workers) > 1:
        cols.append(("parallel eff.", lambda r, d: _pct(d.efficiency)))
    if anchor is not None:
        cols.append((f"speed vs {anchor}", lambda r, d: _x(d.anchor)))
    if any(d.ns_per_item is not None for d in ds):
        unit = (table.size_name or "item").rstrip("s")
        cols.append((f"ns/{unit}", lambda r, d: _num(d.ns_per_item)))
    if any(d.gbps is not None for d in ds):
        cols.append(("GB/s", lambda r, d: _num(d.gbps)))
    if any(d.bw_fraction is not None for d in ds):
        cols.append(("of read bw", lambda r, d: _pct(d.bw_fraction)))
    if any(d.gflops is not None for d in ds):
        cols.append(("GFLOP/s", lambda r, d: _num(d.gflops)))
    if any(d.flops_fraction is not None for d in ds):
        cols.append(("of matmul peak", lambda r, d: _pct(d.flops_fraction)))
    ordered = sorted(table.rows, key=lambda r: (
        tuple(_sort_key(v) for _, v in r.facet), _sort_key(r.size),
        r.workers or 0, table.strategies.index(r.strategy)))
    body = [[fn(r, derived[id(r)]) for _, fn in cols] for r in ordered]
    return markdown_table([c for c, _ in cols], body)


# ---------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------


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


def _facet_title(facet: tuple[tuple[str, Any], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in facet)


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
        ax.set_title(_facet_title(facet) or asvresults.function_of(table.benchmark.name))
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
        ax.set_title(" ".join(x for x in (_facet_title(facet),
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
        ax.set_title(_facet_title(facet) or f"each strategy at its largest {table.size_name}")
        ax.grid(True, alpha=0.3)
    _legend_outside(fig, axes[0])
    if not drew:
        _pyplot().close(fig)
        return False
    _save(fig, path)
    return True


def _preset_of(r: Row, table: Table) -> Any:
    name = next((n for n, role in table.roles.items() if role == "preset"), None)
    return r.params.get(name) if name else None


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
    presets = list(dict.fromkeys(_preset_of(r, table) for r in table.rows))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, preset in enumerate(presets):
        color = f"C{i % 10}"
        best: dict[Any, Row] = {}
        for r in table.rows:
            if _preset_of(r, table) != preset or r.workers != wmax:
                continue
            if r.size not in best or r.seconds < best[r.size].seconds:
                best[r.size] = r
        if not best:
            continue
        sizes = sorted(best, key=_sort_key)
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
                series.setdefault("", {}).setdefault(str(_preset_of(r, table)),
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


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


def pick_run(files: list[ResultFile], commit: str | None) -> list[ResultFile]:
    """The result files of one machine and commit: the given commit, else the latest run."""
    if commit:
        files = [f for f in files if f.commit_hash.lower().startswith(commit.lower())]
        if not files:
            raise ResultsError(f"no asv results for commit {commit!r}")
    latest = max(files, key=lambda f: (f.started_at_ms or 0, f.date_ms or 0))
    return [f for f in files if f.machine == latest.machine
            and f.commit_hash == latest.commit_hash]


def kernel_order(names: Iterable[str]) -> list[str]:
    """Known kernels first in design order, then the others alphabetically."""
    names = set(names)
    return [k for k in KERNEL_ORDER if k in names] + sorted(names - set(KERNEL_ORDER))


def _main_table(tables: list[Table]) -> Table | None:
    """The kernel's headline benchmark: a ``time_`` (not ``timeraw_``) one with most rows."""
    warm = [t for t in tables if not asvresults.function_of(t.benchmark.name).startswith(
        "timeraw_")] or tables
    return max(warm, key=lambda t: len(t.rows)) if warm else None


def _machine_section(machine: dict[str, Any] | None, asv_machine: dict[str, Any],
                     machine_path: Path, notes: list[str]) -> list[str]:
    out = ["## Machine", ""]
    if machine is None:
        info = asv_machine
        out.append(f"- asv machine: {info.get('machine', '?')}: {info.get('cpu', '?')}, "
                   f"{info.get('num_cpu', '?')} CPUs, {info.get('ram', '?')} RAM, "
                   f"{info.get('os', '?')}")
        out.append(f"- not calibrated ({machine_path} missing): efficiencies against the "
                   "machine are left out. Run `kernelrace machine`.")
        notes.append("no machine calibration")
        return out + [""]
    cpu = machine.get("cpu", {})
    llc = cpu.get("llc_bytes")
    out.append(f"- CPU: {cpu.get('model')}, {cpu.get('affinity_cpus')} usable cores"
               + (f", last-level cache {fmt_bytes(llc)}" if llc else ""))
    blas = [b for b in machine.get("numpy", {}).get("blas", []) if b.get("user_api") == "blas"]
    out.append(f"- NumPy {machine.get('numpy', {}).get('version')}, BLAS "
               + (", ".join(f"{b.get('internal_api')} {b.get('version')} "
                            f"({b.get('num_threads')} threads)" for b in blas) or "unknown"))
    nb = machine.get("numba", {})
    out.append(f"- numba {nb.get('version')}, threading layer {nb.get('threading_layer')}")
    a = machine.get("anchors", {})
    out.append("- anchors: primesieve " + (a.get("primesieve_python") or "absent")
               + " (python), " + (a.get("primesieve_cli") or "absent") + " (CLI); torch "
               + (a.get("torch") or "absent"))
    bw = machine.get("bandwidth", {})
    out.append(f"- measured by `{machine.get('command', 'kernelrace machine')}` on "
               f"{machine.get('created')}, {fmt_bytes(bw.get('array_bytes'))} arrays, median "
               f"of {bw.get('repeats')}:")
    out.append("")
    counts = sorted({w for kind in machine.get("bandwidth_gbps", {}).values() for w in kind},
                    key=int)
    rows = [[kind] + [_num(machine["bandwidth_gbps"][kind].get(w)) for w in counts]
            for kind in machine.get("bandwidth_gbps", {})]
    mm = machine.get("matmul", {})
    if mm.get("gflops"):
        rows.append([f"float32 matmul n={mm.get('n')} (GFLOP/s)"]
                    + [_num(mm["gflops"].get(w)) for w in counts])
    out.append(markdown_table(["limit (GB/s)"] + [f"{w} thread(s)" for w in counts],
                              rows))
    from kernels.harness.machine import busy_note

    note = busy_note(machine)
    if note:
        out += ["", f"Note: {note}."]
        notes.append(note)
    if machine.get("quick"):
        out += ["", "Calibrated with `--quick`: arrays near the cache size, so bandwidth "
                "figures are optimistic."]
    return out + [""]


def _skip_broken(broken: list[tuple[Path, ResultsError]], run: list[ResultFile],
                 commit: str | None) -> list[str]:
    """Notes for broken result files that cannot be the run reported; raise otherwise.

    An unreadable file of an older run (a truncated file asv left behind) must not stop
    the report of the latest one. But a broken file written no earlier than the run
    picked may be the latest run itself, and one named for ``--commit`` may be the
    commit asked for: those stop the report.
    """
    newest = min((f.path.stat().st_mtime for f in run), default=math.inf)
    notes = []
    for path, exc in broken:
        stem = path.name.split("-", 1)[0].lower()
        named = commit is not None and (stem.startswith(commit.lower()[:8])
                                        or commit.lower().startswith(stem))
        try:
            recent = path.stat().st_mtime >= newest
        except OSError:
            recent = True
        if named or recent:
            raise exc
        note = f"skipped unreadable result file of an older run: {exc}"
        print(f"kernelrace report: warning: {note}", file=sys.stderr)
        notes.append(note)
    return notes


def _check_times(merged: dict[str, BenchmarkResult], run: list[ResultFile]) -> None:
    """A time of zero or below is no measurement: refuse it, naming the point."""
    for b in merged.values():
        if b.type != "time":
            continue
        for p in b.points():
            if p.ok and p.value <= 0:
                files = ", ".join(str(f.path) for f in run)
                raise ResultsError(f"{files}: {p.label()} has a time of {p.value} s; "
                                   "a time must be > 0")


def build_report(results_dir: Path, machine_path: Path, out_dir: Path, *,
                 asv_machine: str | None = None, commit: str | None = None,
                 machine_required: bool = False,
                 plots_dir: Path | None = None) -> tuple[str, list[Path]]:
    """Read everything and write the plots; returns (markdown, plot paths).

    Plots go to ``plots_dir`` (default ``out_dir/plots``); the page links them as
    ``plots/<name>``. :func:`run` passes a staging folder and swaps it in whole.
    """
    from kernels.harness.machine import load_machine

    benchmarks = asvresults.load_benchmarks(results_dir)
    broken: list[tuple[Path, ResultsError]] = []
    files = asvresults.find_results(results_dir, machine=asv_machine, benchmarks=benchmarks,
                                    broken=broken)
    if not files:
        if broken:
            raise broken[0][1]
        raise ResultsError(f"{results_dir}: no asv result files (run `make bench` or `asv run`)")
    try:
        run = pick_run(files, commit)
    except ResultsError:
        _skip_broken(broken, [], commit)  # the commit asked for may be the broken file
        raise
    skipped_notes = _skip_broken(broken, run, commit)
    merged = asvresults.merge(run)
    _check_times(merged, run)
    machine: dict[str, Any] | None = None
    if machine_path.exists():
        try:
            machine = load_machine(machine_path)
        except ValueError as exc:
            raise ResultsError(str(exc)) from None
    elif machine_required:
        raise ResultsError(f"{machine_path}: machine calibration not found "
                           "(run `kernelrace machine`)")
    asv_machine_file = results_dir / run[0].machine / "machine.json"
    asv_info: dict[str, Any] = {}
    if asv_machine_file.exists():
        try:
            asv_info = json.loads(asv_machine_file.read_text())
        except json.JSONDecodeError:
            raise ResultsError(f"{asv_machine_file}: corrupt JSON") from None
        if not isinstance(asv_info, dict):
            raise ResultsError(f"{asv_machine_file}: expected a JSON object (asv's machine "
                               f"description), got {type(asv_info).__name__}")

    by_kernel: dict[str, list[BenchmarkResult]] = {}
    for b in merged.values():
        by_kernel.setdefault(asvresults.kernel_of(b.name), []).append(b)
    plots_dir = out_dir / "plots" if plots_dir is None else plots_dir
    plots: list[Path] = []
    notes: list[str] = list(skipped_notes)
    r0 = run[0]
    when = _dt.datetime.fromtimestamp((r0.started_at_ms or r0.date_ms or 0) / 1000, _dt.UTC)
    commit_date = (_dt.datetime.fromtimestamp(r0.date_ms / 1000, _dt.UTC)
                   if r0.date_ms else None)
    md = [
        "# kernelrace report",
        "",
        f"- asv machine **{r0.machine}**, commit `{r0.commit_hash[:12]}`"
        + (f" (committed {commit_date:%Y-%m-%d %H:%M} UTC)" if commit_date else ""),
        f"- benchmarks run {when:%Y-%m-%d %H:%M} UTC in environment `{r0.env_name}`; "
        f"python {r0.python}",
        f"- result files: {', '.join(f'`{f.path}`' for f in run)}",
        f"- reproduce: `make bench` on this machine (asv run, `kernelrace machine`, then "
        f"this report); this page alone: `kernelrace report --results {results_dir} "
        f"--machine {machine_path} --out {out_dir}`",
        f"- report written {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
    ]
    body: list[str] = []
    headline: list[list[str]] = []
    for kernel in kernel_order(by_kernel):
        benches = sorted(by_kernel[kernel], key=lambda b: b.name)
        tracks = [b for b in benches if b.type == "track"]
        tables = [build_table(kernel, b, tracks) for b in benches if b.type == "time"]
        tables = [t for t in tables if t.rows or t.failed]
        # Steady state first, cold starts (timeraw_) after.
        tables.sort(key=lambda t: asvresults.function_of(t.benchmark.name).startswith("timeraw_"))
        body += [f"## {kernel}", ""]
        main = _main_table([t for t in tables if t.rows])
        for t in tables:
            derived = derive(t, machine)
            fname = asvresults.function_of(t.benchmark.name)
            kind = "cold (timeraw)" if fname.startswith("timeraw_") else "steady state"
            body += [f"### `{t.benchmark.name}` ({kind})", ""]
            if t.rows:
                body += [render_table(t, derived), ""]
            if t.skipped:
                body.append(f"{t.skipped} combination(s) skipped by the benchmark "
                            "(unavailable strategy or size too large for it).")
            if t.failed:
                body.append(f"Failed: {', '.join(t.failed[:10])}"
                            + (f" and {len(t.failed) - 10} more" if len(t.failed) > 10 else ""))
                notes.append(f"{len(t.failed)} failed point(s) in {t.benchmark.name}")
            body.append("")
            if t is main:
                headline += _headline(t, derived)
                made = [
                    plot_time_vs_size(t, plots_dir / f"{kernel}_time_vs_size.png")
                    and plots_dir / f"{kernel}_time_vs_size.png",
                    plot_speedup(t, derived, plots_dir / f"{kernel}_speedup.png")
                    and plots_dir / f"{kernel}_speedup.png",
                    plot_scaling(t, plots_dir / f"{kernel}_scaling.png")
                    and plots_dir / f"{kernel}_scaling.png",
                    plot_bandwidth(t, machine, plots_dir / f"{kernel}_bandwidth.png")
                    and plots_dir / f"{kernel}_bandwidth.png",
                ]
                for p in made:
                    if p:
                        plots.append(p)
                        body += [f"![{p.stem}](plots/{p.name})", ""]
        kv_plot = plots_dir / f"{kernel}_kv_bytes_per_token.png"
        if plot_kv_bytes(kernel, tracks, main, kv_plot):
            plots.append(kv_plot)
            body += [f"![{kv_plot.stem}](plots/{kv_plot.name})", ""]
        others = [b for b in benches if b.type != "time"]
        if others:
            body += ["### Other measurements", ""]
            body += [_other_table(others), ""]
    if headline:
        md += ["## Headline: fastest strategy per kernel", "",
               f"At the largest size where `{BASELINE}` on 1 worker ran (else the largest).",
               "",
               markdown_table(["kernel", "benchmark", "size", "workers", "fastest",
                               "median", f"speedup vs {BASELINE}@1"], headline), ""]
    md += _machine_section(machine, asv_info, machine_path, notes)
    md += _how_to_read()
    md += body
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(md), plots


def baseline_size(table: Table, derived: dict[int, Derived]) -> Any:
    """The largest size with a speedup baseline (numpy@1), else the largest size."""
    with_base = [r.size for r in table.rows if derived[id(r)].speedup is not None]
    sizes = sorted(set(with_base), key=_sort_key) or table.sizes
    return sizes[-1] if sizes else None


def _headline(t: Table, derived: dict[int, Derived]) -> list[list[str]]:
    if not t.sizes:
        return []
    size = baseline_size(t, derived)
    out = []
    for facet in t.facets:
        rows = [r for r in t.rows if r.size == size and r.facet == facet]
        if not rows:
            continue
        best = min(rows, key=lambda r: r.seconds)
        name = asvresults.function_of(t.benchmark.name)
        if facet:
            name += f" [{_facet_title(facet)}]"
        out.append([t.kernel, name, fmt_size(size), str(best.workers or "-"), best.strategy,
                    fmt_seconds(best.seconds), _x(derived[id(best)].speedup)])
    return out


def _other_table(benches: list[BenchmarkResult]) -> str:
    rows = []
    for b in benches:
        for p in b.points():
            if not p.ok:
                continue
            params = ", ".join(f"{k}={v}" for k, v in p.params.items())
            # A class-wide ``unit = "bytes"`` also lands on its ratio tracks.
            ratio = "ratio" in asvresults.function_of(b.name)
            value = (fmt_bytes(p.value) if b.unit == "bytes" and not ratio
                     else f"{p.value:.4g}" + ("" if ratio else f" {b.unit}"))
            rows.append([f"`{asvresults.function_of(b.name)}`", params, value])
    return markdown_table(["benchmark", "parameters", "value"], rows)


def _how_to_read() -> list[str]:
    return [
        "## How to read the tables",
        "",
        "- *median*: asv's median over its repeats; *IQR/2*: half the interquartile range "
        "as a share of the median (asv stats q_25..q_75).",
        f"- *speedup vs {BASELINE}@1*: the `{BASELINE}` strategy on 1 worker at the same size "
        "and preset, divided by this time (above 1 is faster).",
        "- *parallel eff.*: t(1 worker) / (workers x t(workers)) for the same strategy; 100% "
        "is perfect scaling.",
        "- *speed vs anchor*: the anchor's time (primesieve, torch) at the same size and "
        "workers divided by this time; 1x is as fast as the anchor.",
        "- *GB/s* and *of read bw*: cache bytes the step reads / time, against the measured "
        "read bandwidth at the same thread count (see Machine).",
        "- Each point ran in its own process, minutes from the others and from the "
        "calibration, and a shared machine's speed drifts in between: a *parallel eff.* or "
        "*of read bw* above 100% is that drift. The paired benchmarks under *Other "
        "measurements* (`track_speedup_2_workers`, `track_time_over_primesieve`, "
        "`track_share_of_read_bw`) time the two sides in alternation, call by call, and "
        "are the figures to trust for those ratios.",
        "",
    ]


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelrace report``."""
    parser.add_argument("--results", default="results/asv",
                        help="asv results folder (default results/asv)")
    parser.add_argument("--machine", default=None,
                        help="machine calibration JSON (default results/machine.json; "
                        "missing is allowed for the default, an error when given)")
    parser.add_argument("--out", default="results",
                        help="folder for report.md and plots/ (default results)")
    parser.add_argument("--asv-machine", default=None,
                        help="asv machine name (default: the machine of the latest run)")
    parser.add_argument("--commit", default=None,
                        help="commit hash prefix to report (default: the latest run)")


# Staging folders and set-aside plot folders carry the writer's pid, so a later run
# removes those of a run that died (kill -9) and leaves a live one's alone.
_STAGING_PREFIX = ".report-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(out_dir: Path) -> None:
    """Leftovers of runs that died: staging folders, temp report.md, temp plots."""
    for staging in out_dir.glob(f"{_STAGING_PREFIX}*.tmp"):
        pid = staging.name[len(_STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
    stale = list(out_dir.glob(".report.md.*.tmp"))
    if (out_dir / "plots").is_dir():
        stale += list((out_dir / "plots").glob(".*.png.*.tmp"))
    for path in stale:
        with contextlib.suppress(OSError):
            path.unlink()


def _check_out(out_dir: Path, results_dir: Path) -> None:
    if out_dir.resolve() == results_dir.resolve() or results_dir.resolve() in (
            out_dir.resolve().parents):
        raise ResultsError(f"--out {out_dir} is inside the asv results {results_dir}; "
                           "the report never writes there")
    if out_dir.exists() and not out_dir.is_dir():
        raise ResultsError(f"--out {out_dir} is a file, not a folder")
    for name, kind in (("plots", "a folder"), ("report.md", "a file")):
        path = out_dir / name
        if path.exists() and path.is_dir() != (kind == "a folder"):
            raise ResultsError(f"{path} is in the way: it should be {kind}")


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Move staging/plots and staging/report.md over out_dir's, as close to at once as
    two renames allow; on an error in between, put the previous plots back.

    Files in the old plots folder that the report does not make (not ``*.png``) are
    carried over; old PNGs go, so no plot of a benchmark that is gone stays behind.
    """
    new_plots, old_plots = staging / "plots", out_dir / "plots"
    new_plots.mkdir(exist_ok=True)
    if old_plots.is_dir():
        for p in old_plots.iterdir():
            keep = not p.name.endswith(".png") and not p.name.endswith(".tmp")
            if keep and not (new_plots / p.name).exists():
                if p.is_dir():
                    shutil.copytree(p, new_plots / p.name)
                else:
                    shutil.copy2(p, new_plots / p.name)
    set_aside = staging / "previous-plots"
    had_plots = old_plots.is_dir()
    if had_plots:
        os.rename(old_plots, set_aside)
    try:
        os.rename(new_plots, old_plots)
    except BaseException:
        if had_plots:
            os.rename(set_aside, old_plots)
        raise
    try:
        os.chmod(staging / "report.md", 0o644)
        os.replace(staging / "report.md", out_dir / "report.md")
    except BaseException:
        os.rename(old_plots, staging / "unused-plots")
        if had_plots:
            os.rename(set_aside, old_plots)
        raise


def run(args: argparse.Namespace) -> int:
    """Write report.md and the plots, all or nothing; 0 on success, 2 when the inputs are
    missing, corrupt or malformed (the previous report and plots are then left whole)."""
    machine_path = Path(args.machine or "results/machine.json")
    out_dir = Path(args.out)
    results_dir = Path(args.results)
    staging: Path | None = None
    try:
        _check_out(out_dir, results_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultsError(f"--out {out_dir}: cannot create ({exc.strerror or exc})") from None
        _remove_stale(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-",
                                        suffix=".tmp", dir=out_dir))
        try:
            text, plots = build_report(results_dir, machine_path, out_dir,
                                       asv_machine=args.asv_machine, commit=args.commit,
                                       machine_required=args.machine is not None,
                                       plots_dir=staging / "plots")
        except (TypeError, ValueError, KeyError, IndexError, AttributeError,
                ZeroDivisionError) as exc:
            # A shape the checks above did not foresee: still an input error, exit 2.
            raise ResultsError(f"malformed input in {results_dir} or {machine_path} "
                               f"({type(exc).__name__}: {exc})") from exc
        (staging / "report.md").write_text(text + "\n", encoding="utf-8")
        _swap_in(staging, out_dir)
    except ResultsError as exc:
        print(f"kernelrace report: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    report = out_dir / "report.md"
    print(f"wrote {report} and {len(plots)} plot(s) in {out_dir / 'plots'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m kernels.harness.report``: the same as ``kernelrace report``."""
    parser = argparse.ArgumentParser(prog="kernelrace report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())


