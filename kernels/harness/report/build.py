"""The report's assembly: pick the asv run, read the calibration, and put the page
together (header, headline, machine, how to read, one section per kernel, notes), drawing
the plots on the way. :func:`build_report` is the entry; :mod:`.cli` writes its result.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels.harness import asvresults
from kernels.harness.asvresults import BenchmarkResult, ResultFile, ResultsError
from kernels.harness.report.arithmetic import count_for
from kernels.harness.report.derived import BASELINE, Derived, cache_bytes, derive
from kernels.harness.report.model import PAIRED_RATIOS, Table, build_table
from kernels.harness.report.plots import (
    plot_bands,
    plot_bandwidth,
    plot_kv_bytes,
    plot_picture,
    plot_roofline,
    plot_scaling,
    plot_speedup,
    plot_time_vs_size,
)
from kernels.harness.report.tables import (
    facet_title,
    fmt_bytes,
    fmt_number,
    headline_rows,
    markdown_table,
    other_table,
    paired_rows,
    render_table,
    rounds_interval,
)


@dataclass
class _Page:
    """What the kernel sections add up as they go: their text, the headline rows, the
    plots drawn and the notes for the end of the page."""

    plots_dir: Path
    machine: dict[str, Any] | None
    notes: list[str]
    body: list[str] = field(default_factory=list)
    headline: list[list[str]] = field(default_factory=list)
    paired: list[list[str]] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)

    def add_plot(self, path: Path) -> None:
        self.plots.append(path)
        self.body += [f"![{path.stem}](plots/{path.name})", ""]


def build_report(results_dir: Path, machine_path: Path, out_dir: Path, *,
                 asv_machine: str | None = None, commit: str | None = None,
                 machine_required: bool = False,
                 plots_dir: Path | None = None) -> tuple[str, list[Path]]:
    """Read everything and write the plots; returns (markdown, plot paths).

    Plots go to ``plots_dir`` (default ``out_dir/plots``); the page links them as
    ``plots/<name>``. :func:`kernels.harness.report.cli.run` passes a staging folder and
    swaps it in whole.
    """
    run, merged, skipped_notes = _load_run(results_dir, asv_machine, commit)
    machine = _load_machine(machine_path, machine_required)
    asv_info = _load_asv_machine(results_dir / run[0].machine / "machine.json")
    by_kernel: dict[str, list[BenchmarkResult]] = {}
    for b in merged.values():
        by_kernel.setdefault(asvresults.kernel_of(b.name), []).append(b)
    page = _Page(out_dir / "plots" if plots_dir is None else plots_dir, machine,
                 list(skipped_notes))
    md = _header(run, results_dir, machine_path, out_dir)
    for kernel in kernel_order(by_kernel):
        _kernel_section(page, kernel, sorted(by_kernel[kernel], key=lambda b: b.name))
    md += _headline_section(page.headline)
    md += _paired_section(page.paired)
    md += _machine_section(machine, asv_info, machine_path, page.notes)
    md += _how_to_read()
    md += page.body
    if page.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in page.notes] + [""]
    return "\n".join(md), page.plots


def _load_run(results_dir: Path, asv_machine: str | None, commit: str | None,
              ) -> tuple[list[ResultFile], dict[str, BenchmarkResult], list[str]]:
    """The run reported (its files), its benchmarks merged, and notes on the broken files
    of older runs that were skipped."""
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
    return run, merged, skipped_notes


def _load_machine(machine_path: Path, machine_required: bool) -> dict[str, Any] | None:
    """The calibration (``kernelrace machine``); None when it is absent and not required."""
    from kernels.harness.machine import load_machine

    if machine_path.exists():
        try:
            return load_machine(machine_path)
        except ValueError as exc:
            raise ResultsError(str(exc)) from None
    if machine_required:
        raise ResultsError(f"{machine_path}: machine calibration not found "
                           "(run `kernelrace machine`)")
    return None


def _load_asv_machine(path: Path) -> dict[str, Any]:
    """asv's description of its machine (``<results>/<machine>/machine.json``); {} if none."""
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ResultsError(f"{path}: corrupt JSON") from None
    if not isinstance(info, dict):
        raise ResultsError(f"{path}: expected a JSON object (asv's machine "
                           f"description), got {type(info).__name__}")
    return info


def _header(run: list[ResultFile], results_dir: Path, machine_path: Path,
            out_dir: Path) -> list[str]:
    """Title, the run reported, and the command that reproduces the page."""
    r0 = run[0]
    when = _dt.datetime.fromtimestamp((r0.started_at_ms or r0.date_ms or 0) / 1000, _dt.UTC)
    commit_date = (_dt.datetime.fromtimestamp(r0.date_ms / 1000, _dt.UTC)
                   if r0.date_ms else None)
    return [
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


def _kernel_section(page: _Page, kernel: str, benches: list[BenchmarkResult]) -> None:
    """A kernel's tables (steady state first, cold starts after), the main table's plots,
    the KV-bytes plot and the other measurements."""
    tracks = [b for b in benches if b.type == "track"]
    tables = [build_table(kernel, b, tracks) for b in benches if b.type == "time"]
    tables = [t for t in tables if t.rows or t.failed]
    tables.sort(key=lambda t: asvresults.function_of(t.benchmark.name).startswith("timeraw_"))
    page.body += [f"## {kernel}", ""]
    count = count_for(kernel)
    if count is not None:
        page.body += [f"Arithmetic count: {count.explain}", ""]
    main = _main_table([t for t in tables if t.rows])
    for t in tables:
        derived = derive(t, page.machine)
        _table_section(page, t, derived)
        if t is main:
            page.headline += headline_rows(t, derived)
            for path in _main_plots(t, derived, page.machine, page.plots_dir):
                page.add_plot(path)
                if path.stem.endswith("_roofline"):
                    page.body += [roofline_text(page.machine, t.workers[-1]), ""]
    kv_plot = page.plots_dir / f"{kernel}_kv_bytes_per_token.png"
    if plot_kv_bytes(kernel, tracks, main, kv_plot):
        page.add_plot(kv_plot)
    _kernel_figures(page, kernel, tracks)
    # A paired track whose figures stand in the tables' rows is read there, not again.
    joined = set().union(*(t.paired_tracks for t in tables))
    page.paired += paired_rows(kernel, [b for b in benches if b.name not in joined])
    others = [b for b in benches if b.type != "time" and b.name not in joined]
    if joined:
        page.body += ["In the rows above, with their intervals: "
                      + ", ".join(f"`{n.split('.', 1)[-1]}`" for n in sorted(joined))
                      + ".", ""]
    if others:
        page.body += ["### Other measurements", ""]
        page.body += [other_table(others), ""]


def _kernel_figures(page: _Page, kernel: str, tracks: list[BenchmarkResult]) -> None:
    """Time per worker band (tracks with a ``band`` parameter) and the picture the
    kernel's spec draws, if any."""
    for track in tracks:
        path = page.plots_dir / f"{kernel}_{asvresults.function_of(track.name)}_bands.png"
        if plot_bands(kernel, track, path):
            page.add_plot(path)
    from kernels import registry

    spec = registry.spec(kernel) if kernel in registry.kernel_names() else None
    if spec is not None and spec.picture is not None:
        path = page.plots_dir / f"{kernel}_picture.png"
        if plot_picture(kernel, spec.picture(), path):
            page.add_plot(path)


def disagreements(t: Table) -> list[str]:
    """Where the suite measures one quantity twice: a step's GB/s from the table's own
    time (cache bytes / median, with asv's 99% interval of that median) and from the
    rate track of the same point (``Bandwidth.track_gbps``, its rounds' interval). One
    line per point whose two intervals do not overlap; nothing for points without both."""
    track = t.tracks.get("gbps")
    if track is None:
        return []
    names = list(t.benchmark.param_names)
    points = {tuple(p.params.get(n) for n in names): p for p in track.points() if p.ok}
    lines = []
    for r in t.rows:
        p = points.get(tuple(r.params.get(n) for n in names))
        ci = rounds_interval(p) if p is not None else None
        nbytes = cache_bytes(r, t)
        if ci is None or not nbytes or not r.ci_lo or not r.ci_hi:
            continue
        lo, hi = nbytes / r.ci_hi / 1e9, nbytes / r.ci_lo / 1e9
        if hi < ci[0] or lo > ci[1]:
            lines.append(
                f"{facet_title(r.params.items())}: "
                f"{nbytes / r.seconds / 1e9:.3g} GB/s [{lo:.3g}, {hi:.3g}] from "
                f"`{asvresults.function_of(t.benchmark.name)}`, {p.value:.3g} GB/s "
                f"[{ci[0]:.3g}, {ci[1]:.3g}] from `{asvresults.function_of(track.name)}`")
    return lines


def _table_section(page: _Page, t: Table, derived: dict[int, Derived]) -> None:
    """One time benchmark: its table, its skipped and failed points, and where its
    figures disagree with another benchmark's measure of the same quantity."""
    fname = asvresults.function_of(t.benchmark.name)
    kind = "cold (timeraw)" if fname.startswith("timeraw_") else "steady state"
    page.body += [f"### `{t.benchmark.name}` ({kind})", ""]
    if t.rows:
        page.body += [render_table(t, derived), ""]
    apart = disagreements(t)
    if apart:
        page.body += [
            f"The same step's GB/s, measured twice, disagrees beyond both 99% intervals "
            f"at {len(apart)} point(s). Both benchmarks time warm steps back to back after "
            "the same setup, so the likely cause is the machine's speed between their "
            "processes, which ran minutes apart; the paired share of read bandwidth "
            "(*of read bw* with an interval, in the table) is the figure to quote.", ""]
        page.body += [f"- {line}" for line in apart] + [""]
        page.notes.append(f"{len(apart)} point(s) of {t.benchmark.name} disagree with "
                          "their rate track beyond both intervals")
    if t.skipped:
        page.body.append(f"{t.skipped} combination(s) skipped by the benchmark "
                         "(unavailable strategy or size too large for it).")
    if t.failed:
        page.body.append(f"Failed: {', '.join(t.failed[:10])}"
                         + (f" and {len(t.failed) - 10} more" if len(t.failed) > 10 else ""))
        page.notes.append(f"{len(t.failed)} failed point(s) in {t.benchmark.name}")
    page.body.append("")


def _main_plots(t: Table, derived: dict[int, Derived], machine: dict[str, Any] | None,
                plots_dir: Path) -> list[Path]:
    """Draw the plots of a kernel's main table; the paths of those drawn, in page order."""
    def path(name: str) -> Path:
        return plots_dir / f"{t.kernel}_{name}.png"

    drawn = [
        plot_time_vs_size(t, path("time_vs_size")) and path("time_vs_size"),
        plot_speedup(t, derived, path("speedup")) and path("speedup"),
        plot_scaling(t, path("scaling")) and path("scaling"),
        plot_bandwidth(t, machine, path("bandwidth")) and path("bandwidth"),
        plot_roofline(t, derived, machine, path("roofline")) and path("roofline"),
    ]
    return [p for p in drawn if p]


def _headline_section(headline: list[list[str]]) -> list[str]:
    if not headline:
        return []
    return ["## Headline: fastest strategy per kernel", "",
            f"At the largest size where `{BASELINE}` on 1 worker ran (else the largest); the "
            f"fastest by its speed-up over `{BASELINE}`@1, which is paired where it has "
            "*[low, high]* (timed in alternation with the baseline, in one process, with "
            "its 99% interval: see How to read), else by the medians below.",
            "",
            markdown_table(["kernel", "benchmark", "size", "workers", "fastest",
                            "median", f"speedup vs {BASELINE}@1"], headline), ""]


def _paired_section(rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return ["## Paired ratios, with their intervals", "",
            "Paired ratios that stand in no table row (those that do are in their rows "
            "below, with their intervals). Both sides of each ratio timed in alternation, "
            "round by round, in one process (the drift of a shared machine cancels); the "
            "value is the median over the rounds and the interval asv's 99% interval of "
            "that median (from the rounds' order statistics, widened by a Laplace "
            "posterior when there are too few).", "",
            markdown_table(["kernel", "benchmark", "parameters", "median", "99% interval"],
                           rows), ""]


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
    """Known kernels first in their specs' order (:func:`kernels.registry.kernel_names`),
    then the others alphabetically."""
    from kernels import registry

    known = registry.kernel_names()
    names = set(names)
    return [k for k in known if k in names] + sorted(names - set(known))


def _main_table(tables: list[Table]) -> Table | None:
    """The kernel's headline benchmark: a ``time_`` (not ``timeraw_``) one with most rows."""
    warm = [t for t in tables if not asvresults.function_of(t.benchmark.name).startswith(
        "timeraw_")] or tables
    return max(warm, key=lambda t: len(t.rows)) if warm else None


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
    from kernels.harness.machine import int8_paths

    nb = machine.get("numba", {})
    out.append(f"- numba {nb.get('version')}, threading layer {nb.get('threading_layer')}"
               + (f"; kernels in {nb['simd_lanes']}-lane float32 vectors, "
                  + int8_paths(nb) if "simd_lanes" in nb else ""))
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
    rows = [[kind] + [fmt_number(machine["bandwidth_gbps"][kind].get(w)) for w in counts]
            for kind in machine.get("bandwidth_gbps", {})]
    mm = machine.get("matmul", {})
    if mm.get("gflops"):
        rows.append([f"float32 matmul n={mm.get('n')} (GFLOP/s)"]
                    + [fmt_number(mm["gflops"].get(w)) for w in counts])
    rows += fma_rows(machine, counts)
    out.append(markdown_table(["limit (GB/s)"] + [f"{w} thread(s)" for w in counts],
                              rows))
    if machine.get("fma", {}).get("gflops"):
        out += ["", f"FMA probe: {machine['fma'].get('method', 'independent FMAs')}; "
                f"peak from {machine['fma'].get('peak_from', 'this process')}."]
    from kernels.harness.machine import busy_note

    note = busy_note(machine)
    if note:
        out += ["", f"Note: {note}."]
        notes.append(note)
    if machine.get("quick"):
        out += ["", "Calibrated with `--quick`: arrays near the cache size, so bandwidth "
                "figures are optimistic."]
    return out + [""]


def fma_rows(machine: dict[str, Any], counts: list[str]) -> list[list[str]]:
    """The machine table's FMA probe rows: the peak per dtype (its register), the float32
    peak over the matmul rate, and numba's default width where it is narrower. None for a
    calibration written before the probe."""
    from kernels.harness.machine import fma_gflops, matmul_gflops

    fma = machine.get("fma") or {}
    if not fma.get("gflops"):
        return []
    regs, rows = fma.get("register") or {}, []
    for dtype in fma["gflops"]:
        rows.append([f"FMA probe {dtype}, {regs.get(dtype) or '?'} (GFLOP/s)"]
                    + [fmt_number(fma_gflops(machine, dtype, int(w))) for w in counts])
    ratios = [(fma_gflops(machine, "float32", int(w)), matmul_gflops(machine, int(w)))
              for w in counts]
    if any(f and m for f, m in ratios):
        rows.append(["FMA probe float32 / matmul"]
                    + [f"{f / m:.2f}x" if f and m else "-" for f, m in ratios])
    default = fma.get("numba_default") or {}
    dregs = default.get("register") or {}
    if default.get("gflops") and dregs != regs:
        for dtype in default["gflops"]:
            rows.append([f"FMA at numba's default width, {dtype}, {dregs.get(dtype)}"]
                        + [fmt_number(fma_gflops(machine, dtype, int(w), width="numba"))
                           for w in counts])
    return rows


def roofline_text(machine: dict[str, Any] | None, workers: int | None) -> str:
    """The paragraph under a roofline plot: what its roofs are and which one binds."""
    from kernels.harness.machine import fma_gflops, matmul_gflops

    mm = matmul_gflops(machine, workers) if machine else None
    fma = fma_gflops(machine, "float32", workers) if machine else None
    text = ("Roofline: each point is a strategy on a preset (marker) at the most workers "
            "and the largest size with a FLOP figure; x is FLOP per byte the step reads, "
            "y its GFLOP/s. Below the ridge the read bandwidth binds (the slope), above it "
            "the arithmetic. ")
    if mm and fma:
        text += (f"Two compute roofs from the calibration: float32 matmul ({mm:.0f} "
                 f"GFLOP/s, what a tuned GEMM reaches) and the FMA probe ({fma:.0f} GFLOP/s, "
                 "nothing but independent FMAs in registers: the core's arithmetic). A "
                 "decode step that is not a GEMM (batch 1: each cached row meets only its "
                 "group of query heads, so little is reused from registers) is judged "
                 "against the FMA probe: its *of FMA peak* column. *of roofline* keeps "
                 "the matmul rate as the compute roof, the fair one for a GEMM-shaped step "
                 "(MLA absorbed with many heads).")
    elif mm:
        text += (f"Compute roof: float32 matmul ({mm:.0f} GFLOP/s); this calibration has no "
                 "FMA probe (rerun `kernelrace machine`).")
    return text


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
        "- *GFLOP/s*, *of matmul peak*, *of FMA peak*: analytic FLOPs per call (or a "
        "GFLOP/s track) against the float32 matmul rate and the FMA probe at the same "
        "thread count; *of roofline* is the larger of *of read bw* and *of matmul peak*, "
        "and *bound* the one that binds. A kernel without FLOP tracks that declares an "
        "arithmetic count has it stated under its heading.",
        "- A ratio followed by *[low, high]* was timed in alternation with its "
        "baseline, in the same rounds of one process, by a paired benchmark ("
        + ", ".join(f"`{name}`" for name in PAIRED_RATIOS) + "; the speed-ups, "
        "efficiencies and anchor ratios come from the suite's race, which times every "
        "strategy at every size once per round): the median of its per-round ratios "
        "and asv's 99% interval of that median, in the column's scale. A bare "
        "ratio divides two medians timed in separate processes, minutes apart from each "
        "other and from the calibration; a shared machine's speed drifts in between, so "
        "it carries no interval, and a *parallel eff.* or *of read bw* above 100% is that "
        "drift. Where a paired figure exists it is in the cell, and *of roofline* follows "
        "the paired *of read bw* and *of matmul peak* (the latter raced only where a "
        "step can be compute-bound). Where the two sides cannot share a process (an "
        "anchor that races beside the baseline only), *speed vs anchor* is the quotient "
        "of the two paired speed-ups over the baseline and *of read bw* (*of matmul "
        "peak*) the row's speed-up times the baseline's paired share, each interval the "
        "widest its parts allow "
        "(docs/report.md, \"Paired figures in the rows\").",
        "",
    ]
