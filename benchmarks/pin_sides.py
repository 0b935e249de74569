"""Do two processes timed in alternation agree better on one CPU? (the gate's pinning)

    python -m benchmarks.pin_sides [--reps 2] [--rounds 40] [--pairs 14] [--samples 100000]

Two worker processes run the same call, pure-Python ``estimate_pi(samples)`` on one
worker, in alternation as the regression gate's two sides do: ``pairs`` pairs a round,
which side goes first alternating, a round's log ratio the median over its pairs. Each
repetition does this three ways, with the workers' CPU affinity: ``none`` (left to the
scheduler), ``same`` (both on the last CPU) and ``split`` (one CPU each). Printed per
way: the median and interquartile range of the round log ratios, and how many rounds
moved by more than 10% (|log ratio| > 0.1) although both sides run the same code.
``kernels.harness.gate`` pins the sides of every 1-worker point to one CPU because of
what this shows on the shared VMs (docs/regressions.md, "Both sides on one CPU").
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

from kernels.harness.machine import cpu_model

WORKER = """
import sys, time
from kernels import montecarlo
samples = int(sys.argv[1])
montecarlo.estimate_pi(10_000, strategy="python", workers=1, seed=0)
for _ in sys.stdin:
    t = time.perf_counter()
    montecarlo.estimate_pi(samples, strategy="python", workers=1, seed=0)
    print(time.perf_counter() - t, flush=True)
"""


def one_way(way: str, *, rounds: int, pairs: int, samples: int) -> list[float]:
    """The round log ratios (second worker over first) with the affinity ``way``."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(samples)], cwd=root,
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    cpus = sorted(os.sched_getaffinity(0))
    pins = {"none": [None, None], "same": [{cpus[-1]}] * 2,
            "split": [{cpus[0]}, {cpus[-1]}]}[way]
    try:
        for proc, pin in zip(procs, pins, strict=True):
            if pin:
                os.sched_setaffinity(proc.pid, pin)

        def call(i: int) -> float:
            procs[i].stdin.write("go\n")
            procs[i].stdin.flush()
            return float(procs[i].stdout.readline())

        for _ in range(5):
            call(0), call(1)
        d = []
        for r in range(rounds):
            logs = []
            for j in range(pairs):
                t = {}
                for i in ((0, 1) if (j + r) % 2 == 0 else (1, 0)):
                    t[i] = call(i)
                logs.append(math.log(t[1] / t[0]))
            d.append(statistics.median(logs))
        return d
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--pairs", type=int, default=14)
    ap.add_argument("--samples", type=int, default=100_000)
    args = ap.parse_args(argv)
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        print("pin_sides: needs Linux and two CPUs", file=sys.stderr)
        return 2
    print(f"CPU: {cpu_model()}; {args.pairs} pairs a round, {args.rounds} rounds, "
          f"pure-Python estimate_pi({args.samples})")
    for rep in range(args.reps):
        for way in ("none", "same", "split"):
            d = one_way(way, rounds=args.rounds, pairs=args.pairs, samples=args.samples)
            q = statistics.quantiles(d, n=4)
            moved = sum(abs(x) > 0.1 for x in d)
            print(f"rep {rep + 1} {way:5s}  median {statistics.median(d):+.3f}  "
                  f"IQR [{q[0]:+.3f}, {q[2]:+.3f}]  moved >10%: {moved:2d}/{len(d)}  "
                  f"range [{min(d):+.3f}, {max(d):+.3f}]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
