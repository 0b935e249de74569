"""Formatting: numbers with their units, and the report's markdown tables (a benchmark's
rows, the headline, other measurements)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from kernels.harness import asvresults
from kernels.harness.asvresults import BenchmarkResult
from kernels.harness.report.derived import BASELINE, Derived, anchor_of, baseline_size
from kernels.harness.report.model import (
    BYTE_UNITS,
    UNITLESS,
    Row,
    Table,
    declared_unit,
    rounds_interval,
    sort_key,
)


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


def fmt_ratio(v: float | None, digits: int = 3) -> str:
    """A ratio as ``2.5x``; ``-`` when missing."""
    return "-" if v is None else f"{v:.{digits}g}x"


def fmt_percent(v: float | None) -> str:
    """A fraction as a whole percentage; ``-`` when missing."""
    return "-" if v is None else f"{100 * v:.0f}%"


def fmt_paired(d: Derived, name: str, fmt: Callable[[float | None], str]) -> str:
    """A row's ratio ``name`` (a :class:`Derived` field) in ``fmt``: with ``[low, high]``
    (the 99% interval, in the same scale) where a paired track gave it, bare where it is
    the ratio of two medians timed apart."""
    value, fig = getattr(d, name), d.paired.get(name)
    if fig is None:
        return fmt(value)
    if fmt is fmt_percent:
        return f"{fmt(value)} [{100 * fig.lo:.0f}, {100 * fig.hi:.0f}]"
    return f"{fmt(value)} [{fig.lo:.3g}, {fig.hi:.3g}]"


def fmt_number(v: float | None, digits: int = 3) -> str:
    """A number to ``digits`` significant digits; ``-`` when missing."""
    return "-" if v is None else f"{v:.{digits}g}"


def facet_title(facet: Iterable[tuple[str, Any]]) -> str:
    """``preset=gqa, dtype=float32``: a facet's parameters as text."""
    return ", ".join(f"{k}={v}" for k, v in facet)


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


Column = tuple[str, Callable[[Row, Derived], str]]


def _parameter_columns(table: Table) -> list[Column]:
    """Strategy, the facet's parameters, size, workers, median and its spread."""
    facet_names = [n for n, _ in table.facets[0]] if table.facets and table.facets[0] else []
    cols: list[Column] = [("strategy", lambda r, d: r.strategy)]
    cols += [(n, lambda r, d, n=n: str(dict(r.facet).get(n))) for n in facet_names]
    if table.size_name:
        cols.append((table.size_name, lambda r, d: fmt_size(r.size)))
    if table.has_workers:
        cols.append(("workers", lambda r, d: str(r.workers)))
    cols += [("median", lambda r, d: fmt_seconds(r.seconds)), ("IQR/2", lambda r, d: _spread(r))]
    return cols


def _derived_columns(table: Table, ds: list[Derived]) -> list[Column]:
    """The derived figures that at least one row has."""
    anchor = anchor_of(table)
    cols: list[Column] = []
    if any(d.speedup is not None for d in ds):
        cols.append((f"speedup vs {BASELINE}@1",
                     lambda r, d: fmt_paired(d, "speedup", fmt_ratio)))
    if any(d.workers_used is not None and d.workers_used != r.workers
           for r, d in zip(table.rows, ds, strict=False)):
        cols.append(("ran on", lambda r, d: "-" if d.workers_used is None
                     else f"{d.workers_used}"))
    if any(d.efficiency is not None for d in ds) and len(table.workers) > 1:
        cols.append(("parallel eff.", lambda r, d: fmt_paired(d, "efficiency", fmt_percent)))
    if anchor is not None:
        cols.append((f"speed vs {anchor}", lambda r, d: fmt_paired(d, "anchor", fmt_ratio)))
    if any(d.ns_per_item is not None for d in ds):
        unit = (table.size_name or "item").rstrip("s")
        cols.append((f"ns/{unit}", lambda r, d: fmt_number(d.ns_per_item)))
    if any(d.gbps is not None for d in ds):
        cols.append(("GB/s", lambda r, d: fmt_number(d.gbps)))
    if any(d.bw_fraction is not None for d in ds):
        cols.append(("of read bw", lambda r, d: fmt_paired(d, "bw_fraction", fmt_percent)))
    if any(d.gflops is not None for d in ds):
        cols.append(("GFLOP/s", lambda r, d: fmt_number(d.gflops)))
    if any(d.flops_fraction is not None for d in ds):
        cols.append(("of matmul peak",
                     lambda r, d: fmt_paired(d, "flops_fraction", fmt_percent)))
    if any(d.ops_rate is not None for d in ds):
        from kernels.harness.report.arithmetic import count_for

        count = count_for(table.kernel)
        unit = count.unit if count else "op"
        cols.append((f"G{unit}/s", lambda r, d: fmt_number(d.ops_rate)))
    if any(d.fma_fraction is not None for d in ds):
        cols.append(("of FMA peak", lambda r, d: fmt_percent(d.fma_fraction)))
    if any(d.roofline is not None for d in ds):
        cols.append(("of roofline", lambda r, d: fmt_paired(d, "roofline", fmt_percent)))
        cols.append(("bound", lambda r, d: d.bound or "-"))
    return cols


def render_table(table: Table, derived: dict[int, Derived]) -> str:
    """The markdown table of one time benchmark, columns chosen by what exists."""
    ds = [derived[id(r)] for r in table.rows]
    cols = _parameter_columns(table) + _derived_columns(table, ds)
    ordered = sorted(table.rows, key=lambda r: (
        tuple(sort_key(v) for _, v in r.facet), sort_key(r.size),
        r.workers or 0, table.strategies.index(r.strategy)))
    body = [[fn(r, derived[id(r)]) for _, fn in cols] for r in ordered]
    return markdown_table([c for c, _ in cols], body)


def fastest(rows: list[Row], derived: dict[int, Derived]) -> Row:
    """The fastest of ``rows`` (one size): by the speed-up over the baseline where every
    row has one, which is the paired figure where the suite's race gave it (each
    strategy's time against the baseline's in the same rounds of one process, so a
    process that ran slow for its life does not make its strategy look slow); else by
    the medians, each timed in a process of its own."""
    ups = [derived[id(r)].speedup for r in rows]
    if all(u is not None for u in ups):
        return max(zip(rows, ups, strict=True), key=lambda ru: ru[1])[0]
    return min(rows, key=lambda r: r.seconds)


def headline_rows(t: Table, derived: dict[int, Derived]) -> list[list[str]]:
    """Per facet, the fastest strategy (:func:`fastest`) at the baseline's largest size
    (:func:`baseline_size`)."""
    if not t.sizes:
        return []
    size = baseline_size(t, derived)
    out = []
    for facet in t.facets:
        rows = [r for r in t.rows if r.size == size and r.facet == facet]
        if not rows:
            continue
        best = fastest(rows, derived)
        name = asvresults.function_of(t.benchmark.name)
        if facet:
            name += f" [{facet_title(facet)}]"
        out.append([t.kernel, name, fmt_size(size), str(best.workers or "-"), best.strategy,
                    fmt_seconds(best.seconds), fmt_paired(derived[id(best)], "speedup",
                                                          fmt_ratio)])
    return out


def _fmt_value(value: float, unit: str) -> str:
    """A track's value in its unit (binary units for bytes)."""
    if unit in BYTE_UNITS:
        return fmt_bytes(value)
    if unit in ("x", "%"):
        return f"{value:.3g}{unit}"
    return f"{value:.4g}" + ("" if unit in UNITLESS else f" {unit}")


def fmt_interval(p: asvresults.Point, unit: str) -> str:
    """``[low, high] (n rounds)``, or ``-`` for a point without rounds."""
    ci = rounds_interval(p)
    if ci is None:
        return "-"
    lo, hi, n = ci
    return f"[{_fmt_value(lo, unit)}, {_fmt_value(hi, unit)}] ({n} rounds)"


def other_table(benches: list[BenchmarkResult]) -> str:
    """Every point of benchmarks that give no table of their own (``track_``, ``peakmem_``),
    with the 99% interval of the median where the benchmark stored its rounds."""
    rows = []
    for b in benches:
        for p in b.points():
            if not p.ok:
                continue
            params = facet_title(p.params.items())
            unit = declared_unit(b)
            rows.append([f"`{asvresults.function_of(b.name)}`", params,
                         _fmt_value(p.value, unit), fmt_interval(p, unit)])
    return markdown_table(["benchmark", "parameters", "value", "99% interval"], rows)


def paired_rows(kernel: str, benches: list[BenchmarkResult]) -> list[list[str]]:
    """The ratios a kernel's suite timed in alternation (``track_`` points in ``x`` or
    ``%`` that stored their rounds), one row each: kernel, benchmark, parameters,
    median, interval. Rates with rounds (GB/s, GFLOP/s) stay under Other measurements."""
    rows = []
    for b in benches:
        unit = declared_unit(b)
        if b.type != "track" or unit not in ("x", "%"):
            continue
        for p in b.points():
            if p.ok and rounds_interval(p) is not None:
                params = facet_title(p.params.items())
                rows.append([kernel, f"`{asvresults.function_of(b.name)}`", params,
                             _fmt_value(p.value, unit), fmt_interval(p, unit)])
    return rows
