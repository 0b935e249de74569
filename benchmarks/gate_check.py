"""Measure the regression gate's error rates: false alarms (A/A) and detection.

    python -m benchmarks.gate_check aa --runs 5          # HEAD vs HEAD + a docs-only commit
    python -m benchmarks.gate_check slow --runs 5        # HEAD vs HEAD + estimate_pi 15% slower
    python -m benchmarks.gate_check slow --slowdown 0.07 --factor 1.05

(``make gate-check KIND=aa RUNS=5`` runs the first.) The commit under test is made on
top of HEAD without touching the working tree or any branch (a temporary index and
``git commit-tree``). ``slow`` wraps ``kernels.montecarlo.estimate_pi`` in a busy-wait
of ``slowdown`` times the call's own duration, so every Monte Carlo point is that much
slower and no other kernel changes: each such run is also an A/A check of the sieve and
attention points. Each run is ``kernelrace compare BASE HEAD --run --json``; the tally
(exit codes, points flagged per kernel, minutes) is printed and written as JSON under
``results/gate_check/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLOW_PATCH = '''

# gate_check: a throwaway slowdown, {slowdown:.0%} of every call's own time, busy-waited.
import time as _gate_check_time

_estimate_pi_unslowed = estimate_pi


def estimate_pi(*args, **kwargs):
    t0 = _gate_check_time.perf_counter()
    result = _estimate_pi_unslowed(*args, **kwargs)
    end = t0 + (_gate_check_time.perf_counter() - t0) * {factor!r}
    while _gate_check_time.perf_counter() < end:
        pass
    return result
'''

SLOWED_KERNEL = "montecarlo"


def _git(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                          env=env, input=stdin).stdout.strip()


def make_commit(base: str, path: str, text: str, message: str) -> str:
    """A commit on top of ``base`` with ``path`` replaced by ``text``; nothing checked out."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(tmp) / "index"),
                   GIT_AUTHOR_NAME="gate_check", GIT_AUTHOR_EMAIL="gate_check@example.invalid",
                   GIT_COMMITTER_NAME="gate_check",
                   GIT_COMMITTER_EMAIL="gate_check@example.invalid")
        _git("read-tree", base, env=env)
        blob = _git("hash-object", "-w", "--stdin", stdin=text)
        _git("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        tree = _git("write-tree", env=env)
        return _git("commit-tree", tree, "-p", base, "-m", message, env=env)


def commit_under_test(kind: str, base: str, slowdown: float) -> str:
    if kind == "aa":
        readme = _git("show", f"{base}:README.md")
        return make_commit(base, "README.md", readme + "\n<!-- gate_check: docs only -->\n",
                           "gate_check: documentation only")
    path = f"kernels/{SLOWED_KERNEL}/__init__.py"
    source = _git("show", f"{base}:{path}") + "\n"
    patch = SLOW_PATCH.format(slowdown=slowdown, factor=1.0 + slowdown)
    return make_commit(base, path, source + patch,
                       f"gate_check: estimate_pi {slowdown:.0%} slower")


def kernel_of(label: str) -> str:
    """``bench_sieve.TimeCountPrimes...`` -> ``sieve``."""
    return label.split(".", 1)[0].removeprefix("bench_")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["aa", "slow"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slowdown", type=float, default=0.15)
    parser.add_argument("--factor", type=float, default=1.10)
    parser.add_argument("--base", default="HEAD")
    parser.add_argument("--out", default="results/gate_check")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more arguments for kernelrace compare")
    args = parser.parse_args(argv)
    base = _git("rev-parse", args.base)
    head = commit_under_test(args.kind, base, args.slowdown)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown")
    runs = []
    for i in range(args.runs):
        json_path = out / f"{args.kind}-{stamp}-run{i + 1}.json"
        t0 = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "kernels", "compare", base, head, "--run",
                               "--factor", str(args.factor), "--json", str(json_path),
                               *args.extra]).returncode
        minutes = (time.monotonic() - t0) / 60
        flagged: dict[str, int] = {}
        judged: dict[str, int] = {}
        if json_path.exists():
            for p in json.loads(json_path.read_text())["points"]:
                k = kernel_of(p["benchmark"])
                if p["status"] not in (None, "skipped", "inconclusive"):
                    judged[k] = judged.get(k, 0) + 1
                if p["status"] in ("regressed", "failed"):
                    flagged[k] = flagged.get(k, 0) + 1
        runs.append({"run": i + 1, "exit_code": code, "minutes": round(minutes, 2),
                     "flagged": flagged, "judged": judged, "json": str(json_path)})
        print(f"gate_check {args.kind} run {i + 1}/{args.runs}: exit {code}, "
              f"{minutes:.1f} min, flagged {flagged or 'none'} of {judged}", flush=True)
    summary = {"kind": args.kind, "base": base, "head": head, "factor": args.factor,
               "slowdown": args.slowdown if args.kind == "slow" else 0.0, "cpu": cpu,
               "date": stamp, "runs": runs}
    (out / f"{args.kind}-{stamp}.json").write_text(json.dumps(summary, indent=2) + "\n")
    expected = 0 if args.kind == "aa" else 1
    ok = sum(r["exit_code"] == expected for r in runs)
    print(f"gate_check {args.kind}: {ok}/{len(runs)} runs exited {expected} as they should "
          f"(factor {args.factor}, CPU {cpu})")
    return 0 if ok == len(runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
