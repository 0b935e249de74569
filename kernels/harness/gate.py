"""The regression gate: BASE and HEAD timed in alternation, judged by paired statistics.

``kernelrace compare BASE HEAD --run`` (and ``make regress``) lands here. Each commit
gets a checkout of its own (a git worktree under ``.asv/gate/``, reused between runs
so numba's on-disk cache survives) and a Python environment: the one running the gate
when it already satisfies the commit's ``[project].dependencies``, else a virtualenv
built once per distinct dependency list. One long-lived worker process per side
(:mod:`kernels.harness.gate_worker`) imports that commit's asv suite; for every
benchmark point both sides run ``setup``, then samples A, B, A, B... (B first in the
next round) so a drift of the machine hits both sides of a round alike. Each round
gives one log ratio HEAD / BASE; :mod:`kernels.harness.pairedstats` turns a point's
rounds into a ratio, an interval and a p-value, and controls the false alarms over
all the points.

A point flagged as regressed (or improved) is measured again by two new worker
processes, and stays flagged only if they see it too (a process can be a few percent
slower for its whole life: its pools' placement, its memory layout).

``peakmem_*`` points are measured as asv measures them, each sample in a fresh process
(setup, one call, the process's peak resident set), BASE's and HEAD's at the same
time. Peak memory does not drift with the machine's speed, so their samples are
compared as two independent groups (exact Mann-Whitney, two-sample Hodges-Lehmann),
and their false alarms are controlled as a family of their own.

A round during which other processes used the CPU (``/proc/stat`` busy and steal time
less the gate's own processes' CPU time) is discarded and taken again after a pause
that grows while the machine stays busy; a point still busy after a minute keeps the
rounds it has, and one left with too few is *inconclusive*, not passed. A point whose
interval is still wider than the factor after ``--rounds`` gets up to as many again.

Exit codes: 0 no regression; 1 a regression, or a point that ran at BASE fails at
HEAD; 2 an error, or points that could not be judged (machine too busy).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernels.harness import pairedstats
from kernels.harness.gate_env import (  # re-exported: the gate's environment API
    CpuMeter,
    GateError,
    checkout,
    environment,
    pin_tree,
    requirements,
)
from kernels.harness.gate_env import satisfied_here as satisfied_here  # re-exported
from kernels.harness.pairedstats import PointStats, Verdict

WORKER_SCRIPT = Path(__file__).with_name("gate_worker.py")
DEFAULT_ROUNDS = 12
DEFAULT_BUSY = 0.10  # share of all cores' time other processes may take during a round
ROUND_SECONDS = 0.15  # each side's share of a round (samples, in pairs), at least
SAMPLE_SECONDS = 0.01  # one sample (``number`` calls), at least
# Pairs of samples in a round, at least: a round's log ratio is the median of its pairs'.
# With 2 (their mean), pure-Python points of 150 ms calls gave rounds of 0.73x-1.61x
# (a pair in four or so an outlier) and missed a 15% slowdown once in one run; the
# median of 3 rejects one outlier (1.00x-1.24x on the same points).
MIN_SAMPLES = 3
SETUP_TIMEOUT = 300.0
BUSY_PATIENCE_S = 60.0  # how long a run of busy rounds may last before a point gives up
# Fresh processes per side for a peakmem_ point. Five a side is the fewest whose exact
# one-sided p-value (1/252 when every HEAD sample is above every BASE one) stays below
# 0.05 after Benjamini-Hochberg over the regression set's peakmem points (up to 12).
PEAKMEM_SAMPLES = 5


# ---------------------------------------------------------------------------
# One side
# ---------------------------------------------------------------------------


class Side:
    """A worker process timing one commit's suite."""

    def __init__(self, label: str, commit: str, root: Path, python: str, state: Path):
        self.label, self.commit, self.root, self.python = label, commit, root, python
        self.state = state
        self.log_path = state / "logs" / f"{label}.log"
        self.data_dir = state / "bench-data" / label
        self.proc: subprocess.Popen[str] | None = None

    def _popen(self, *extra: str, stdin: int | None) -> subprocess.Popen[str]:
        """The worker script in this side's checkout, environment and session of its own
        (so that stopping it ends its pools with it)."""
        env = dict(os.environ, PYTHONPATH=str(self.root), KERNELRACE_BENCH_DATA=str(
            self.data_dir), PYTHONUNBUFFERED="1")
        return subprocess.Popen(
            [self.python, str(WORKER_SCRIPT), "--root", str(self.root), *extra],
            cwd=self.root, stdin=stdin, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env=env, start_new_session=True)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - the worker's stderr, closed in stop()
        self.proc = self._popen(stdin=subprocess.PIPE)
        hello = self.receive(120.0)
        if "error" in hello:
            raise GateError(f"{self.label} ({self.commit[:8]}): {hello['error']}")

    def receive(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            alive = self.proc.poll() is None
            self.stop()
            why = f"no answer within {timeout:.0f} s" if alive else (
                f"worker exited with code {self.proc.returncode}")
            raise GateError(f"{self.label} ({self.commit[:8]}): {why}; "
                            f"its log: {self.log_path}\n{self.log_tail()}")
        return json.loads(line)

    def send(self, **msg: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def request(self, timeout: float, **msg: Any) -> dict[str, Any]:
        self.send(**msg)
        return self.receive(timeout)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """End the worker and everything it started (its process group)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
                self.proc.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.2)
        self.proc.wait()
        self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def peak_pair(sides: tuple[Side, Side], name: str, key: list[str], timeout: float
              ) -> list[dict[str, Any]]:
    """One peakmem sample of each side, in two fresh processes run at the same time
    (peak memory does not depend on the CPU they share); their replies."""
    procs = [side._popen("--peakmem", name, "--key", json.dumps(key), stdin=None)
             for side in sides]
    try:
        deadline = time.monotonic() + timeout
        answers = []
        for side, proc in zip(sides, procs, strict=True):
            try:
                out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                answers.append({"error": f"no answer within {timeout:.0f} s"})
                continue
            line = out.strip().splitlines()[-1] if out.strip() else ""
            answers.append(json.loads(line) if line else {
                "error": f"exited with code {proc.returncode}; its log: {side.log_path}\n"
                         + side.log_tail()})
        return answers
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_group(proc)


def measure_peakmem(point: Point, sides: tuple[Side, Side]) -> None:
    """``PEAKMEM_SAMPLES`` peak resident sets of each side, each in a fresh process,
    after one uncounted sample a side: a commit's first process compiles its numba
    kernels into the on-disk cache (LLVM's memory is in that process's peak; measured
    here, 0.77x-1.30x intervals on identical code when it was counted) and builds the
    benchmark's data, which later processes load."""
    for i in range(PEAKMEM_SAMPLES + 1):
        base, head = peak_pair(sides, point.name, point.key, SETUP_TIMEOUT + point.timeout)
        if _not_answered(point, base, head):
            return
        if i == 0:
            continue
        point.base_s.append(float(base["bytes"]))
        point.head_s.append(float(head["bytes"]))
        point.d.append(math.log(point.head_s[-1] / point.base_s[-1]))


# ---------------------------------------------------------------------------
# Points
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    """One benchmark at one parameter combination, and what the gate measured of it."""

    name: str
    key: list[str]
    timeout: float = 60.0
    kind: str = "time"  # "time" (seconds, paired rounds) or "peakmem" (bytes, fresh processes)
    workers: int | None = None  # the point's ``workers`` parameter, where it has one
    pinned_cpu: int | None = None  # the one CPU both sides ran on (1-worker points)
    base_s: list[float] = dataclasses.field(default_factory=list)  # per clean round: median
    head_s: list[float] = dataclasses.field(default_factory=list)  # of the round's samples
    d: list[float] = dataclasses.field(default_factory=list)  # per round: median ln(HEAD/BASE)
    busy_rounds: int = 0
    number: int = 1
    samples_per_round: int = 1
    error: str | None = None  # a side failed: "base: ..." / "head: ..."
    skip: str | None = None
    verdict: Verdict | None = None
    confirmation: Point | None = None  # the same point re-measured by new processes

    def label(self) -> str:
        return f"{self.name}({', '.join(self.key)})" if self.key else self.name

    def fresh(self) -> Point:
        """The same point with nothing measured yet (the confirmation's)."""
        return Point(self.name, self.key, self.timeout, self.kind, workers=self.workers)

    def log_ratios(self) -> list[float]:
        """One per clean round: the median over its pairs of ln(HEAD sample / BASE sample)."""
        return self.d

    def enough(self) -> bool:
        """Whether the point has the samples a verdict needs."""
        if self.kind == "peakmem":
            return min(len(self.base_s), len(self.head_s)) >= PEAKMEM_SAMPLES
        return len(self.base_s) >= pairedstats.MIN_ROUNDS

    def stats(self) -> PointStats:
        """Ratio, interval and p-values: paired rounds for time, two groups for memory."""
        if self.kind == "peakmem":
            return pairedstats.two_sample_stats(self.base_s, self.head_s)
        return pairedstats.point_stats(self.d)

    def row(self) -> dict[str, Any]:
        s = self.verdict.stats if self.verdict else None
        return {
            "benchmark": self.name, "params": self.key, "label": self.label(),
            "kind": self.kind, "unit": "bytes" if self.kind == "peakmem" else "s",
            "status": self.verdict.status if self.verdict else None,
            "ratio": s.ratio if s else None, "ci_low": s.lo if s else None,
            "ci_high": s.hi if s else None, "p_slower": s.p_slower if s else None,
            "q_slower": s.q_slower if s else None, "q_faster": s.q_faster if s else None,
            "rounds": len(self.base_s), "busy_rounds_discarded": self.busy_rounds,
            "number": self.number, "samples_per_round": self.samples_per_round,
            "base_median_s": statistics.median(self.base_s) if self.base_s else None,
            "head_median_s": statistics.median(self.head_s) if self.head_s else None,
            "base_round_s": self.base_s, "head_round_s": self.head_s,
            "round_log_ratios": self.d, "pinned_cpu": self.pinned_cpu,
            "error": self.error, "skip": self.skip,
            "notes": self.verdict.notes if self.verdict else [],
            "confirmation": self.confirmation.row() if self.confirmation else None,
        }


def _not_answered(point: Point, base: dict[str, Any], head: dict[str, Any]) -> bool:
    """Record a skip (either side) or an error (at BASE: not judged; at HEAD: failed)
    from the two sides' replies; True when there was one."""
    if "skip" in base or "skip" in head:
        point.skip = base.get("skip") or head.get("skip")
        return True
    if "error" in base:
        point.error = "base: " + base["error"].strip().splitlines()[-1]
        point.verdict = Verdict("skipped", notes=["fails at BASE"])
        return True
    if "error" in head:
        point.error = "head: " + head["error"]
        point.verdict = Verdict("failed")
        return True
    return False


def _setup_both(point: Point, sides: tuple[Side, Side]) -> tuple[float, float] | None:
    """Run ``setup`` on both sides at once (nothing in it is timed, and the two workers
    have a core each), then time one call on each side in turn to size the samples (the
    call that ends a setup ran beside the other side's setup); those seconds, or None
    (point skipped or failed)."""
    for side in sides:
        side.send(cmd="setup", name=point.name, key=point.key)
    base, head = (side.receive(SETUP_TIMEOUT + point.timeout) for side in sides)
    if _not_answered(point, base, head):
        return None
    base, head = (side.request(point.timeout + 30, cmd="sample", count=1, number=1)
                  for side in sides)
    if _not_answered(point, base, head):
        return None
    return base["times"][0], head["times"][0]


def _wide(d: list[float], factor: float) -> bool:
    """Whether the interval of ``d`` is wider than the factor it must resolve."""
    s = pairedstats.point_stats(d)
    return math.log(s.hi / s.lo) > math.log(factor)


def measure(point: Point, sides: tuple[Side, Side], *, rounds: int, busy: float,
            meter: CpuMeter, factor: float = 1.10) -> None:
    """Clean rounds of ``point`` in alternation, into ``point.d`` (and the per-side medians).

    ``rounds`` clean rounds, or up to twice as many while the interval is still wider
    than ``factor`` (the decision looks at the interval's width, never at which side is
    slower). A busy round is discarded and the next one waits, longer each time, so
    a burst of other work passes; after ``BUSY_PATIENCE_S`` of busy rounds the point
    keeps what it has. A 1-worker point's rounds run with both sides on one CPU
    (:func:`_pin_one_cpu`).
    """
    warm = _setup_both(point, sides)
    if warm is None:
        return
    call = max(min(warm), 1e-7)
    point.number = max(1, math.ceil(SAMPLE_SECONDS / call))
    point.samples_per_round = max(MIN_SAMPLES, math.ceil(ROUND_SECONDS / (call * point.number)))
    point.pinned_cpu = _pin_one_cpu(point, sides)
    try:
        ended = _take_rounds(point, sides, rounds=rounds, busy=busy, meter=meter,
                             factor=factor)
    finally:
        if point.pinned_cpu is not None:
            pin_tree(_pids(sides), _gate_cpus())
    if not ended:
        return
    for side in sides:
        side.send(cmd="teardown")
    for side in sides:
        side.receive(60.0 + point.timeout)


def _gate_cpus() -> set[int]:
    """The CPUs this process may run on (the workers inherit them); Linux only."""
    return set(os.sched_getaffinity(0))


def _pids(sides: tuple[Side, Side]) -> list[int]:
    return [s.proc.pid for s in sides if s.proc is not None]


def _pin_one_cpu(point: Point, sides: tuple[Side, Side]) -> int | None:
    """For a point at 1 worker: every thread of both sides (and of their pools) on the
    same one CPU, the last this process may use; that CPU, or None (left unpinned).

    On the shared VMs a vCPU has slow spells of a second or more (a sibling thread on
    the host, most likely), and each side tends to stay on the vCPU it last ran on.
    ``python -m benchmarks.pin_sides`` (two processes timing pure-Python Monte Carlo
    at 10^5 in alternation, 14 pairs a round, 30-40 rounds; six tries on the 2-core
    EPYC VM): left to the scheduler, 1-16 rounds a try moved by more than 10% (up to
    1.5x, either way); both sides on one CPU, none in five tries. In the sixth every
    round read 0.86x: one process slower than the other for its whole life, which
    pinning does not cure and the confirmation step (new processes) is there for."""
    if point.workers != 1 or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = _gate_cpus()
    if len(cpus) < 2:
        return None
    cpu = max(cpus)
    return cpu if pin_tree(_pids(sides), {cpu}) else None


def _take_rounds(point: Point, sides: tuple[Side, Side], *, rounds: int, busy: float,
                 meter: CpuMeter, factor: float) -> bool:
    """:func:`measure`'s rounds; False when a side failed (its verdict is set)."""
    attempts, busy_since, pause = 0, None, 0.25

    def wanted() -> int:
        if len(point.d) >= rounds and _wide(point.d, factor):
            return 2 * rounds
        return rounds

    while len(point.d) < wanted():
        attempts += 1
        meter.start()
        pairs = []
        # One sample each, back to back, the sides strictly alternating (A B A B ...),
        # so that every sample follows one of the other side's: which side goes first
        # changes from round to round, not from pair to pair. Flipping it every pair
        # (A B B A ...) had each pair set a side that had just run (its pool's threads
        # still awake, its data in cache) against one that had not, and a round's
        # median (of an odd number of pairs) took the sign of whichever kind had one
        # more pair: on identical code, 2-worker numba points gave rounds alternating
        # between about 0.75x and 1.6x (docs/regressions.md).
        order = (0, 1) if attempts % 2 == 0 else (1, 0)
        for _ in range(point.samples_per_round):
            pair = [0.0, 0.0]
            for i in order:
                ans = sides[i].request(point.timeout * point.number + 30, cmd="sample",
                                       count=1, number=point.number)
                if "error" in ans:
                    point.error = f"{sides[i].label}: {ans['error']}"
                    point.verdict = Verdict("failed" if i == 1 else "skipped")
                    return False
                pair[i] = ans["times"][0]
            pairs.append(pair)
        if meter.other_share() > busy:
            point.busy_rounds += 1
            busy_since = busy_since or time.monotonic()
            if time.monotonic() - busy_since > BUSY_PATIENCE_S:
                break
            time.sleep(pause)
            pause = min(2 * pause, 4.0)
            continue
        busy_since, pause = None, 0.25
        point.base_s.append(statistics.median(a for a, _ in pairs))
        point.head_s.append(statistics.median(h for _, h in pairs))
        point.d.append(statistics.median(math.log(h / a) for a, h in pairs))
    return True


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


def select_points(base_list: list[dict[str, Any]], head_list: list[dict[str, Any]]
                  ) -> tuple[list[Point], list[str]]:
    """HEAD's points that BASE has too, and the labels of those only HEAD has."""
    at_base = {(p["name"], tuple(p["key"])) for p in base_list}
    points, new = [], []
    for p in head_list:
        point = Point(p["name"], p["key"], float(p.get("timeout") or 60),
                      p.get("kind", "time"), workers=p.get("workers"))
        if (p["name"], tuple(p["key"])) in at_base:
            points.append(point)
        else:
            new.append(point.label())
    return points, new


def judge_points(points: list[Point], *, factor: float, alpha: float) -> None:
    """Set every point's verdict, the time points and the peakmem points each a family of
    their own for the false-alarm control (over the points with enough samples)."""
    for kind in ("time", "peakmem"):
        timed = [p for p in points if p.kind == kind and p.verdict is None and p.skip is None]
        stats: list[PointStats | None] = [p.stats() if p.enough() else None for p in timed]
        for p, v in zip(timed, pairedstats.judge(stats, factor=factor, alpha=alpha),
                        strict=True):
            p.verdict = v


def exit_code(points: list[Point]) -> int:
    """1 on a regression or a new failure; 2 when points could not be judged; else 0."""
    statuses = {p.verdict.status for p in points if p.verdict}
    if statuses & {"regressed", "failed"}:
        return 1
    return 2 if "inconclusive" in statuses else 0


def format_point(p: Point) -> str:
    """``1.023x [0.990, 1.041]  12 rounds  label`` (or why it has no ratio)."""
    s = p.verdict.stats if p.verdict else None
    busy = f", {p.busy_rounds} busy discarded" if p.busy_rounds else ""
    if s is not None:
        notes = "".join(f"\n      {n}" for n in p.verdict.notes) if p.verdict else ""
        return (f"{s.ratio:6.3f}x [{s.lo:.3f}, {s.hi:.3f}]  q={s.q_slower:.2g}  "
                f"{s.rounds} rounds{busy}  {p.label()}{notes}")
    if p.skip:
        return f"skipped ({p.skip})  {p.label()}"
    if p.error:
        return f"{p.verdict.status if p.verdict else 'error'}: {p.error.strip().splitlines()[-1]}"\
               f"  {p.label()}"
    return f"{len(p.base_s)} clean rounds{busy}  {p.label()}"


_SECTIONS = (
    ("regressed", "REGRESSED: slower than BASE x {f}, significant after correction"),
    ("failed", "FAILED at HEAD (ran at BASE)"),
    ("inconclusive", "INCONCLUSIVE: too few clean rounds (machine busy)"),
    ("unconfirmed", "flagged, then not seen again by new worker processes (not counted)"),
    ("improved", "improved: faster than BASE / {f}, significant"),
    ("slower", "slower, significant but within {f}x (not counted)"),
    ("faster", "faster, significant but within {f}x"),
    ("skipped", "not judged: fails at BASE"),
)


def render(points: list[Point], *, factor: float, verbose: bool) -> str:
    """Sections of flagged points, then every point when ``verbose``, then the verdict."""
    lines = []
    for status, title in _SECTIONS:
        group = [p for p in points if p.verdict and p.verdict.status == status]
        if group:
            lines.append(title.format(f=f"{factor:.2f}") + f" ({len(group)})")
            lines.extend("  " + format_point(p) for p in group)
            lines.append("")
    if verbose:
        lines.append("every point: ratio HEAD/BASE [95% interval]  BH q-value  rounds")
        lines.extend("  " + format_point(p) for p in points)
        lines.append("")
    counts = {s: sum(1 for p in points if p.verdict and p.verdict.status == s)
              for s in pairedstats.STATUSES}
    skipped = sum(1 for p in points if p.skip)
    code = exit_code(points)
    lines.append(
        f"{counts['regressed']} regressed, {counts['failed']} failed, "
        f"{counts['improved']} improved, {counts['unchanged']} unchanged, "
        f"{counts['slower'] + counts['faster']} changed within the factor, "
        f"{counts['inconclusive']} inconclusive ({len(points) - skipped} judged, "
        f"{skipped} skipped by setup); " + {0: "OK (exit 0)", 1: "FAIL (exit 1)",
                                            2: "NOT JUDGED (exit 2)"}[code])
    return "\n".join(lines)


@dataclasses.dataclass
class GateOptions:
    factor: float = 1.10
    rounds: int = DEFAULT_ROUNDS
    alpha: float = 0.05
    busy: float = DEFAULT_BUSY
    bench: str | None = None  # regex searched in the points' labels ``name(params)``
    all_points: bool = False  # every point of the params grids, not only gate_params
    state_dir: Path | None = None  # default <repo>/.asv/gate


def run_gate(repo: Path, base: str, head: str, opts: GateOptions,
             log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)
             ) -> list[Point]:
    """Time every selected point at BASE and HEAD in alternation and judge it."""
    state = opts.state_dir or repo / ".asv" / "gate"
    started = time.monotonic()
    roots = [checkout(repo, state / "checkouts" / name, commit)
             for name, commit in (("base", base), ("head", head))]
    pythons = [environment(requirements(r), state, log) for r in roots]
    log(f"gate: checkouts and environments ready in {time.monotonic() - started:.0f} s")
    meter = CpuMeter()

    def new_sides() -> tuple[Side, Side]:
        sides = (Side("base", base, roots[0], pythons[0], state),
                 Side("head", head, roots[1], pythons[1], state))
        for side in sides:
            side.start()
        return sides

    sides: tuple[Side, ...] = ()
    try:  # Ctrl-C, and SIGTERM where the CLI turns it into one, unwind through finally
        sides = new_sides()
        points = _list_points(sides, opts, log)
        log(f"gate: {len(points)} points, {opts.rounds} rounds each, "
            f"BASE {base[:8]} vs HEAD {head[:8]}")
        for i, point in enumerate(points, 1):
            _measure_logged(point, sides, opts, meter, log, f"[{i:>3}/{len(points)}]")
        judge_points(points, factor=opts.factor, alpha=opts.alpha)
        # Peak memory comes from fresh processes already: nothing to confirm.
        flagged = [p for p in points if p.verdict and p.kind == "time"
                   and p.verdict.status in ("regressed", "improved")]
        if flagged:
            # A worker process (its pools, its memory layout) can be a few percent
            # slower for its whole life; a flag is confirmed by new processes.
            log(f"gate: confirming {len(flagged)} flagged point(s) in new worker processes")
            for side in sides:
                side.stop()
            sides = new_sides()
            for i, point in enumerate(flagged, 1):
                again = point.fresh()
                _measure_logged(again, sides, opts, meter, log,
                                f"[confirm {i}/{len(flagged)}]")
                confirm(point, again, factor=opts.factor, alpha=opts.alpha)
    finally:
        for side in sides:
            side.stop()
    log(f"gate: {len(points)} points in {time.monotonic() - started:.0f} s")
    return points


def _list_points(sides: tuple[Side, ...], opts: GateOptions, log: Callable[[str], None]
                 ) -> list[Point]:
    lists = []
    for side in sides:
        # HEAD's suite names the points (its regression set); BASE only has to have them
        # in its params grid, so a BASE older than gate_params is still compared.
        ans = side.request(300.0, cmd="list", bench=opts.bench,
                           gate_only=side.label == "head" and not opts.all_points)
        if "error" in ans:
            raise GateError(f"{side.label}: {ans['error']}")
        lists.append(ans["points"])
    points, new = select_points(*lists)
    if not points:
        raise GateError("no benchmark point to compare"
                        + (f" matches {opts.bench!r}" if opts.bench else "")
                        + (f" (only at HEAD: {', '.join(new[:5])})" if new else ""))
    if new:
        log(f"gate: {len(new)} point(s) only at HEAD, not judged: "
            + ", ".join(new[:5]) + (" ..." if len(new) > 5 else ""))
    return points


def _measure_logged(point: Point, sides: tuple[Side, ...], opts: GateOptions, meter: CpuMeter,
                    log: Callable[[str], None], prefix: str) -> None:
    t0 = time.monotonic()
    if point.kind == "peakmem":
        measure_peakmem(point, sides)  # type: ignore[arg-type]
    else:
        measure(point, sides, rounds=opts.rounds, busy=opts.busy, meter=meter,  # type: ignore[arg-type]
                factor=opts.factor)
    if point.d:
        s = point.stats()
        what = "fresh processes a side" if point.kind == "peakmem" else "rounds"
        status = f"{s.ratio:.3f}x [{s.lo:.3f}, {s.hi:.3f}] {len(point.d)} {what}"
        if point.busy_rounds:
            status += f", {point.busy_rounds} busy discarded"
    else:
        status = point.skip and f"skipped: {point.skip}" or (point.error or "")
        status = status.strip().splitlines()[-1] if status else (
            f"no clean round, {point.busy_rounds} busy discarded")
    log(f"{prefix} {time.monotonic() - t0:5.1f} s  {status}  {point.label()}")


def confirm(point: Point, again: Point, *, factor: float, alpha: float) -> None:
    """Keep ``point``'s regression (or improvement) only if new processes see it too, on
    their own rounds.

    The confirmation is judged alone: ratio beyond ``factor`` (below 1 / ``factor`` for
    an improvement) and one-sided p < alpha. A false alarm then needs two independent
    pairs of processes to err the same way. An improvement not seen again is
    *unconfirmed* too: on identical code the first measurement alone called 2 of 250
    points improved (A/A runs at ed74ccd).
    """
    improved = point.verdict is not None and point.verdict.status == "improved"
    point.confirmation = again
    if again.verdict is not None and again.verdict.status == "failed":
        point.verdict = Verdict("failed")
        point.error = again.error
        return
    if len(again.d) < pairedstats.MIN_ROUNDS:
        point.verdict = Verdict("inconclusive", point.verdict.stats if point.verdict else None,
                                ["confirmation had too few clean rounds"])
        return
    s = pairedstats.point_stats(again.d)
    seen = (s.ratio < 1 / factor and s.p_faster < alpha) if improved else (
        s.ratio > factor and s.p_slower < alpha)
    # The second measurement's own verdict, so that --json carries its ratio too.
    again.verdict = Verdict(point.verdict.status if seen and point.verdict else "unchanged", s)
    if not seen:
        p = s.p_faster if improved else s.p_slower
        point.verdict = Verdict("unconfirmed",
                                point.verdict.stats if point.verdict else None,
                                [f"{'improvement' if improved else 'flag'} not seen again by "
                                 f"new processes: {s.ratio:.3f}x [{s.lo:.3f}, {s.hi:.3f}], "
                                 f"p={p:.2g}"])
    else:
        point.verdict.notes.append(  # type: ignore[union-attr]
            f"confirmed by new processes: {s.ratio:.3f}x [{s.lo:.3f}, {s.hi:.3f}]")


def write_json(path: str, points: list[Point], *, base: str, head: str, opts: GateOptions
               ) -> None:
    """Every point with its ratio, interval, q-value, rounds and raw round times."""
    from kernels.harness.atomic import write_json_atomic

    write_json_atomic(path, {
        "method": "paired", "base": base, "head": head, "factor": opts.factor,
        "alpha": opts.alpha, "rounds": opts.rounds, "busy_threshold": opts.busy,
        "exit_code": exit_code(points), "points": [p.row() for p in points]})
