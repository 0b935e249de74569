"""Regression tracking: compare two commits and exit non-zero on a slowdown.

``kernelrace compare BASE HEAD --run`` is the regression gate
(:mod:`kernels.harness.gate`): both commits timed in alternation within the same
minutes, one verdict per point from paired rounds, false alarms controlled over all
the points. Without ``--run`` it judges the result files asv already wrote for the two
commits (``--run-asv`` has ``asv continuous`` write them first): those were measured
at different times, so the verdict uses asv's own unpaired test (Mann-Whitney U on
the stored samples, else 99% confidence intervals) and cannot tell a small change
from the machine's drift; the output says so.

Exit codes: 0 no slowdown beyond the factor; 1 at least one (or a benchmark that
ran at BASE now fails); 2 an error (no results for a commit, corrupt file, asv failed).

Only ``time_`` and ``peakmem_`` benchmarks (lower is better) can fail the check;
``track_`` values have no direction known to asv and are listed, never judged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernels.harness import asvresults, gate, pairedstats
from kernels.harness.asvresults import BenchmarkResult, ResultsError

DEFAULT_FACTOR = 1.10
JUDGED_TYPES = ("time", "memory")


@dataclass
class Change:
    """One benchmark at one parameter combination, BASE against HEAD."""

    benchmark: str
    key: tuple[str, ...]
    type: str
    unit: str
    before: float | None
    after: float | None
    ratio: float | None  # after / before; > 1 is slower for time and memory
    significant: bool | None  # None: too few samples to test (e.g. asv --quick)
    status: str  # regressed | improved | unchanged | noise | failed | fixed | tracked | skipped
    code_changed: bool = False  # the benchmark's own code differs (asv's version hash)

    def label(self) -> str:
        """``name(p1, p2)`` as asv prints it."""
        return f"{self.benchmark}({', '.join(self.key)})" if self.key else self.benchmark


# ---------------------------------------------------------------------------
# Significance
# ---------------------------------------------------------------------------


def _testable(stats: dict[str, float] | None) -> bool:
    return bool(stats) and stats.get("repeat", 0) != 1 and "ci_99_a" in stats and "ci_99_b" in stats


def is_significant(before_stats: dict[str, float] | None, after_stats: dict[str, float] | None,
                   before_samples: list[float] | None, after_samples: list[float] | None
                   ) -> bool | None:
    """Whether two measurements differ, by asv's test; None when the data cannot say.

    Uses ``asv._stats.is_different`` (Mann-Whitney U at p < 0.002 when the samples
    allow it, else non-overlapping 99% confidence intervals), as ``asv compare`` does.
    Single-sample runs (``asv run --quick``) return None.
    """
    if not (_testable(before_stats) and _testable(after_stats)):
        return None
    try:
        from asv import _stats

        return bool(_stats.is_different(before_samples, after_samples, before_stats, after_stats))
    except ImportError:  # asv absent: fall back to the interval test it would use
        a = (before_stats["ci_99_a"], before_stats["ci_99_b"])
        b = (after_stats["ci_99_a"], after_stats["ci_99_b"])
        return not (a[1] >= b[0] and a[0] <= b[1])


# ---------------------------------------------------------------------------
# Comparing result sets
# ---------------------------------------------------------------------------


def _is_number(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def compare_benchmarks(base: dict[str, BenchmarkResult], head: dict[str, BenchmarkResult], *,
                       factor: float = DEFAULT_FACTOR, use_stats: bool = True,
                       pattern: str | None = None) -> list[Change]:
    """Every (benchmark, params) measured at both commits, classified.

    A ``time``/``memory`` point *regressed* when ``after > before * factor`` and the
    difference is significant (or cannot be tested; with ``use_stats=False``
    significance is ignored). Slower beyond the factor but not significant is
    *noise*. A point that had a value at BASE and fails at HEAD is *failed*.
    """
    if not (math.isfinite(factor) and factor >= 1.0):
        raise ValueError(f"factor must be a finite number >= 1.0, got {factor}")
    regex = re.compile(pattern) if pattern else None
    changes = []
    for name in sorted(set(base) & set(head)):
        if regex is not None and not regex.search(name):
            continue
        b, h = base[name], head[name]
        b_points = {p.key: p for p in b.points()}
        for hp in h.points():
            bp = b_points.get(hp.key)
            if bp is None:
                continue
            change = Change(name, hp.key, h.type, h.unit, bp.value, hp.value, None, None, "",
                            code_changed=bool(b.version and h.version and b.version != h.version))
            if h.type not in JUDGED_TYPES:
                change.status = "tracked"
                if _is_number(bp.value) and _is_number(hp.value) and bp.value:
                    change.ratio = hp.value / bp.value
            elif bp.value is None and _is_number(hp.value):
                change.status = "fixed"
            elif _is_number(bp.value) and hp.value is None:
                change.status = "failed"
            elif not (_is_number(bp.value) and _is_number(hp.value)) or bp.value <= 0:
                change.status = "skipped"
            else:
                change.ratio = hp.value / bp.value
                sig = is_significant(bp.stats, hp.stats, bp.samples, hp.samples)
                change.significant = sig
                counts = (not use_stats) or sig is not False
                if change.ratio > factor:
                    change.status = "regressed" if counts else "noise"
                elif change.ratio < 1.0 / factor:
                    change.status = "improved" if counts else "noise"
                else:
                    change.status = "unchanged"
            changes.append(change)
    return changes


def exit_code(changes: list[Change]) -> int:
    """1 when any point regressed or newly fails, else 0."""
    return 1 if any(c.status in ("regressed", "failed") for c in changes) else 0


# ---------------------------------------------------------------------------
# Finding the two commits
# ---------------------------------------------------------------------------


def _asv_conf(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        return {}
    try:
        # asv.conf.json may hold // comments; strip whole-line ones as asv does.
        text = "\n".join(
            line for line in p.read_text().splitlines() if not line.lstrip().startswith("//")
        )
        return json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{p}: cannot read asv config ({exc})") from None


def resolve_commit(rev: str, repo_dir: str | os.PathLike[str] = ".") -> str:
    """A full commit hash for ``rev`` via git; a bare hex prefix is kept when git cannot say."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            cwd=repo_dir, capture_output=True, text=True, timeout=30,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    if asvresults.is_hex_prefix(rev):
        return rev.lower()
    raise ResultsError(f"cannot resolve {rev!r} to a commit (not a git revision in {repo_dir}, "
                       "not a hash prefix)")


def load_commit(results_dir: str, commit: str, rev: str, machine: str | None,
                benchmarks: dict[str, dict[str, Any]]) -> dict[str, list[asvresults.ResultFile]]:
    """Result files of ``commit``, by machine; ResultsError saying what exists otherwise."""
    files = asvresults.find_results(results_dir, machine=machine, commit=commit,
                                    benchmarks=benchmarks)
    by_machine: dict[str, list[asvresults.ResultFile]] = {}
    for f in files:
        by_machine.setdefault(f.machine, []).append(f)
    if not by_machine:
        where = f"machine {machine!r}" if machine else "any machine"
        known = sorted({p.name.split("-", 1)[0]
                        for p in asvresults.iter_result_paths(results_dir, machine)})
        raise ResultsError(
            f"no asv results for {rev} ({commit[:8]}) on {where} under {results_dir}; "
            f"commits with results: {', '.join(known) or 'none'} "
            "(benchmark it with `asv run`, or pass --run)"
        )
    return by_machine


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def format_value(value: float | None, unit: str) -> str:
    """Seconds as s/ms/us/ns, bytes as k/M/G, others with their unit."""
    if value is None:
        return "failed"
    if math.isnan(value):
        return "n/a"
    if unit == "seconds":
        for name, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {name}"
        return f"{value:.3g} s"
    if unit == "bytes":
        for name, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{name}"
        return f"{value:.0f}"
    return f"{value:.4g} {unit}".strip()


def _sig_text(sig: bool | None) -> str:
    return {True: "yes", False: "no", None: "n/a"}[sig]


def _table(changes: list[Change]) -> list[str]:
    rows = [["ratio", "before", "after", "significant", "benchmark"]]
    for c in changes:
        ratio = f"{c.ratio:.2f}x" if c.ratio is not None else "-"
        note = "  [benchmark code changed]" if c.code_changed else ""
        rows.append([ratio, format_value(c.before, c.unit), format_value(c.after, c.unit),
                     _sig_text(c.significant), c.label() + note])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  " + "  ".join(r[i].rjust(widths[i]) if i < 3 else r[i].ljust(widths[i])
                                      for i in range(4)) + "  " + r[4])
        if k == 0:
            lines.append("  " + "  ".join("-" * w for w in widths) + "  " + "-" * 9)
    return lines


_SECTIONS = (
    ("regressed", "REGRESSED: slower by more than {f}x{sig}"),
    ("failed", "FAILED at HEAD (ran at BASE)"),
    ("improved", "IMPROVED: faster by more than {f}x{sig}"),
    ("noise", "beyond {f}x but not statistically significant (not counted)"),
    ("fixed", "fixed: failed at BASE, runs at HEAD"),
    ("unchanged", "unchanged within {f}x"),
    ("tracked", "tracked values (track_*, not judged)"),
)


def render(changes: list[Change], *, factor: float, split: bool, use_stats: bool) -> str:
    """The text a person reads: sections of changed benchmarks and a one-line verdict."""
    lines: list[str] = []
    sig = ", significant or untestable" if use_stats else ""
    shown = {"regressed", "failed", "improved", "noise", "fixed"}
    if split:
        shown |= {"unchanged", "tracked"}
    ordered = sorted(changes, key=lambda c: -(c.ratio or 0.0))
    for status, title in _SECTIONS:
        group = [c for c in ordered if c.status == status]
        if status not in shown or not group:
            continue
        if status == "improved":
            group.reverse()
        lines.append(title.format(f=f"{factor:.2f}", sig=sig) + f" ({len(group)})")
        lines.extend(_table(group))
        lines.append("")
    counts = {s: sum(c.status == s for c in changes) for s, _ in _SECTIONS}
    code = exit_code(changes)
    lines.append(
        f"{counts['regressed']} regressed, {counts['failed']} failed, "
        f"{counts['improved']} improved, {counts['noise']} not significant, "
        f"{counts['unchanged']} unchanged ({len(changes)} compared); "
        + ("FAIL (exit 1)" if code else "OK (exit 0)")
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# asv continuous (--run)
# ---------------------------------------------------------------------------


#: Seconds a stopped ``kernelrace compare`` gives asv to end by itself (Ctrl-C reaches
#: both) before it sends SIGTERM, then to clean up after that before SIGKILL.
ASV_STOP_S = (5.0, 60.0)


def _asv(args: list[str], config: str) -> int:
    """Run asv's command line through :mod:`kernels.harness.asvrun` (SIGTERM cleans up as
    Ctrl-C does). Stopped itself (SIGTERM to this process alone, an error), this stops
    asv with SIGTERM and waits for its clean-up: killed outright, asv would leave the
    benchmark process it had started running to its end."""
    cmd = [sys.executable, "-m", "kernels.harness.asvrun", *args, "--config", config]
    print("$ " + " ".join(["asv", *args, "--config", config]), file=sys.stderr, flush=True)
    with subprocess.Popen(cmd) as proc:
        try:
            return proc.wait()
        except BaseException:
            first, then = ASV_STOP_S
            try:
                proc.wait(timeout=first)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=then)
                except subprocess.TimeoutExpired:
                    proc.kill()
            raise


def run_continuous(base: str, head: str, *, factor: float, config: str, machine: str | None,
                   bench: str | None) -> None:
    """Benchmark both commits with ``asv continuous`` (asv's own environments).

    asv asks about the machine on first use; ``asv machine --yes`` answers for it.
    asv continuous exits 1 when it finds a regression; only other codes are errors.
    """
    if not (Path.home() / ".asv-machine.json").exists():
        machine_args = ["machine", "--yes"] + (["--machine", machine] if machine else [])
        if _asv(machine_args, config) != 0:
            raise RuntimeError("`asv machine --yes` failed")
    args = ["continuous", "--factor", str(factor)]
    if machine:
        args += ["--machine", machine]
    if bench:
        args += ["--bench", bench]
    rc = _asv([*args, base, head], config)
    if rc not in (0, 1):
        raise RuntimeError(f"`asv continuous` failed with exit code {rc}")


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelrace compare``."""
    parser.add_argument("base", metavar="BASE", help="reference commit (hash, branch, HEAD~1)")
    parser.add_argument("head", metavar="HEAD", help="commit being judged")
    parser.add_argument("--factor", type=float, default=DEFAULT_FACTOR,
                        help="slower than BASE x FACTOR is a regression "
                        f"(default {DEFAULT_FACTOR})")
    parser.add_argument("--run", action="store_true",
                        help="the paired gate: time both commits now, in alternation, each in "
                        "its own checkout and environment (see docs/regressions.md)")
    parser.add_argument("--run-asv", action="store_true",
                        help="benchmark both commits first with `asv continuous`, then judge "
                        "its result files (unpaired)")
    parser.add_argument("--rounds", type=int, default=gate.DEFAULT_ROUNDS,
                        help=f"--run: clean rounds per point (default {gate.DEFAULT_ROUNDS})")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="--run: false-discovery level over all points (default 0.05)")
    parser.add_argument("--busy-threshold", type=float, default=gate.DEFAULT_BUSY,
                        help="--run: discard a round when other processes took more than this "
                        f"share of all cores' time (default {gate.DEFAULT_BUSY}; 1 keeps all)")
    parser.add_argument("--results", default=None,
                        help="asv results folder (default: results_dir of the asv config, "
                        "else results/asv)")
    parser.add_argument("--config", default="asv.conf.json",
                        help="asv config (default asv.conf.json)")
    parser.add_argument("--machine", default=None, help="asv machine name (default: the only one "
                        "with results for both commits)")
    parser.add_argument("--bench", "-b", default=None,
                        help="only benchmarks whose name matches this regex (with --run: "
                        "points whose label name(param, ...) matches)")
    parser.add_argument("--all-points", action="store_true",
                        help="--run: every point of the suites' params grids, not only the "
                        "regression set (each class's gate_params)")
    parser.add_argument("--split", action="store_true",
                        help="also list unchanged and tracked values (with --run: every point)")
    parser.add_argument("--no-stats", dest="use_stats", action="store_false",
                        help="count every slowdown beyond the factor, significant or not")
    parser.add_argument("--json", dest="json_out", default=None, metavar="PATH",
                        help="also write every compared point as JSON to PATH")


def _pick_machine(base_m: dict[str, Any], head_m: dict[str, Any], base: str, head: str) -> str:
    both = sorted(set(base_m) & set(head_m))
    if not both:
        raise ResultsError(
            f"no machine has results for both commits: {base} on {', '.join(sorted(base_m))}; "
            f"{head} on {', '.join(sorted(head_m))}"
        )
    if len(both) > 1:
        raise ResultsError(f"results for both commits on several machines ({', '.join(both)}); "
                           "choose one with --machine")
    return both[0]


UNPAIRED_WARNING = (
    "note: these are stored results measured at different times; on a machine whose speed "
    "drifts, an unpaired comparison cannot separate a small change from the drift. For a "
    "verdict, time both commits in alternation: kernelrace compare BASE HEAD --run "
    "(make regress)."
)


def check_factor(factor: float) -> None:
    """``--factor`` must be a finite number above 1 (nan would switch every check off)."""
    if not (math.isfinite(factor) and factor > 1.0):
        raise ValueError(f"--factor must be a finite number > 1.0, got {factor}")


def run_paired(args: argparse.Namespace) -> int:
    """The regression gate: time BASE and HEAD in alternation and judge the pairs."""
    try:
        check_factor(args.factor)
        if args.rounds < pairedstats.MIN_ROUNDS or args.rounds > 1000:
            raise ValueError(f"--rounds must be an integer in [{pairedstats.MIN_ROUNDS}, 1000],"
                             f" got {args.rounds}")
        if not (0.0 < args.alpha < 1.0):
            raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
        if not (0.0 <= args.busy_threshold <= 1.0):
            raise ValueError(f"--busy-threshold must be in [0, 1], got {args.busy_threshold}")
        if args.bench:
            re.compile(args.bench)
        conf_dir = Path(args.config).resolve().parent
        conf = _asv_conf(args.config)
        repo = Path(subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=conf_dir / conf.get("repo", "."),
            capture_output=True, text=True, check=True).stdout.strip())
        base = resolve_commit(args.base, repo)
        head = resolve_commit(args.head, repo)
        opts = gate.GateOptions(factor=args.factor, rounds=args.rounds, alpha=args.alpha,
                                busy=args.busy_threshold, bench=args.bench,
                                all_points=args.all_points)
        points = gate.run_gate(repo, base, head, opts)
    except (ResultsError, gate.GateError, ValueError, re.error, OSError,
            subprocess.SubprocessError) as exc:
        print(f"kernelrace compare: error: {exc}", file=sys.stderr)
        return 2
    print(f"compare {args.base} ({base[:8]}) -> {args.head} ({head[:8]}), paired in "
          f"alternation, factor {args.factor:.2f}, {args.rounds} rounds per point, "
          f"false-discovery level {args.alpha}")
    print()
    print(gate.render(points, factor=args.factor, verbose=args.split))
    if args.json_out:
        gate.write_json(args.json_out, points, base=base, head=head, opts=opts)
    return gate.exit_code(points)


def run(args: argparse.Namespace) -> int:
    """Compare BASE and HEAD; print the verdict; 0 ok, 1 slowdown, 2 error."""
    if args.run:
        return run_paired(args)
    try:
        conf = _asv_conf(args.config)
        conf_dir = Path(args.config).resolve().parent
        if args.results:
            results_dir = args.results
        elif conf:
            results_dir = str(conf_dir / conf.get("results_dir", "results/asv"))
        else:
            results_dir = "results/asv"
        repo_dir = conf_dir / conf.get("repo", ".") if conf else Path(".")
        check_factor(args.factor)
        base = resolve_commit(args.base, repo_dir)
        head = resolve_commit(args.head, repo_dir)
        if args.run_asv:
            run_continuous(args.base, args.head, factor=args.factor, config=args.config,
                           machine=args.machine, bench=args.bench)
        benchmarks = asvresults.load_benchmarks(results_dir)
        base_m = load_commit(results_dir, base, args.base, args.machine, benchmarks)
        head_m = load_commit(results_dir, head, args.head, args.machine, benchmarks)
        machine = args.machine or _pick_machine(base_m, head_m, args.base, args.head)
        base_b = asvresults.merge(base_m[machine])
        head_b = asvresults.merge(head_m[machine])
        changes = compare_benchmarks(base_b, head_b, factor=args.factor,
                                     use_stats=args.use_stats, pattern=args.bench)
    except (ResultsError, RuntimeError, ValueError, re.error) as exc:
        print(f"kernelrace compare: error: {exc}", file=sys.stderr)
        return 2
    if not changes:
        print(f"kernelrace compare: error: {args.base} and {args.head} have no benchmark "
              f"in common on machine {machine}", file=sys.stderr)
        return 2
    print(f"compare {args.base} ({base[:8]}) -> {args.head} ({head[:8]}) on machine {machine}, "
          f"factor {args.factor:.2f}; files: "
          + ", ".join(str(f.path) for f in base_m[machine] + head_m[machine]))
    print(UNPAIRED_WARNING)
    print()
    print(render(changes, factor=args.factor, split=args.split, use_stats=args.use_stats))
    if args.json_out:
        from kernels.harness.atomic import write_json_atomic

        rows = [c.__dict__ | {"key": list(c.key), "label": c.label()} for c in changes]
        write_json_atomic(args.json_out, {
            "base": base, "head": head, "machine": machine, "factor": args.factor,
            "exit_code": exit_code(changes), "changes": rows}, default=str)
    return exit_code(changes)


def main(argv: list[str] | None = None) -> int:
    """``python -m kernels.harness.compare BASE HEAD``: the same as ``kernelrace compare``."""
    parser = argparse.ArgumentParser(prog="kernelrace compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
