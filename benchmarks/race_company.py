"""What sharing a process does to a decode step: the two effects the suites' race is built
around (benchmarks.common.race and race_members).

    python -m benchmarks.race_company [--preset gqa] [--context 32768] [--processes 2]

1. Company. In fresh processes, ``numba`` at 2 workers is raced
   (:func:`benchmarks.common.race`, 12 rounds) beside ``numpy`` on 1 worker alone, then
   beside ``numpy`` on 1 worker and ``numpy`` at 2 workers (whose BLAS threads spin on
   after each call). Printed: numba's median step and its speed-up over numpy on 1
   worker, with the 2nd smallest and 2nd largest round.
2. After another call. On a 1k-context MQA step (shorter than a millisecond), a sample
   of ``numba`` at 2 workers timed right after one call of each other strategy, against
   the same sample after one call of its own: the ratio the race's warm-up call removes.
3. torch beside the read pass. In fresh processes, alternately with and without the
   attention race's read pass (numba's OpenMP threads beside torch's own libgomp),
   ``torch`` at 2 workers is raced beside ``numpy`` on 1 worker: why torch's race has no
   read pass (``NO_READ_PASS`` in benchmarks/bench_attention.py).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time

COMPANIES = {"alone": [], "with numpy@2": [("numpy", 2)]}
OTHERS = [("numpy", 1), ("numpy", 2), ("numba", 1), ("threaded:numba", 2),
          ("multiprocess:numba", 2)]


def company(preset: str, context: int, name: str) -> None:
    """One process: numba@2 raced beside numpy@1 and the company ``name``."""
    from benchmarks.bench_attention import _case
    from benchmarks.common import race

    members = [("numba", 2), ("numpy", 1), *COMPANIES[name]]
    cases = {m: _case(m[0], context, m[1], preset) for m in members}
    try:
        times = race({m: case.run for m, case in cases.items()})
    finally:
        for case in cases.values():
            case.close()
    ratios = sorted(b / o for b, o in zip(times[("numpy", 1)], times[("numba", 2)],
                                           strict=True))
    print(f"  {name:>13}: numba@2 {statistics.median(times[('numba', 2)]) * 1e3:6.2f} ms, "
          f"{statistics.median(ratios):.2f}x numpy@1 [{ratios[1]:.2f}, {ratios[-2]:.2f}]",
          flush=True)


def torch_beside_read(preset: str, context: int, read: bool) -> None:
    """One process: torch@2 raced beside numpy@1, with or without the read pass."""
    from benchmarks.bench_attention import _case
    from benchmarks.common import race
    from kernels.harness.probes import ReadStream

    cases = {m: _case(m[0], context, m[1], preset) for m in [("torch", 2), ("numpy", 1)]}
    calls = {m: case.run for m, case in cases.items()}
    if read:
        stream = ReadStream(workers=2)
        calls.update({("read", w): lambda w=w: stream.gbps(w) for w in (1, 2)})
    try:
        times = race(calls)
    finally:
        for case in cases.values():
            case.close()
    ratios = sorted(b / o for b, o in zip(times[("numpy", 1)], times[("torch", 2)],
                                           strict=True))
    name = "with read" if read else "without read"
    print(f"  {name:>13}: torch@2 {statistics.median(times[('torch', 2)]) * 1e3:6.2f} ms, "
          f"{statistics.median(ratios):.2f}x numpy@1 [{ratios[1]:.2f}, {ratios[-2]:.2f}]",
          flush=True)


def after_another(rounds: int = 9) -> None:
    """numba@2 on a 1k MQA step: a sample right after another strategy's call against the
    same sample right after one call of its own."""
    from benchmarks.bench_attention import _case

    probe = _case("numba", 1024, 2, "mqa")
    others = {m: _case(m[0], 1024, m[1], "mqa") for m in OTHERS}

    def sample(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            probe.run()
        return (time.perf_counter() - t0) / n

    t0 = time.perf_counter()
    probe.run()
    n = max(1, math.ceil(0.005 / (time.perf_counter() - t0)))
    cold, warm = [], []
    for _ in range(rounds):
        for case in others.values():
            case.run()
            cold.append(sample(n))
            case.run()
            probe.run()
            warm.append(sample(n))
    for case in (probe, *others.values()):
        case.close()
    print(f"  a sample of {n} steps after another strategy's call: "
          f"{statistics.median(cold) / statistics.median(warm):.2f}x the same after one "
          f"call of its own ({statistics.median(warm) * 1e6:.0f} us a step)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gqa")
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--processes", type=int, default=2,
                        help="fresh processes per company (default 2)")
    parser.add_argument("--child", nargs=1, metavar="COMPANY", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child[0] == "after":
            after_another()
        elif args.child[0] in ("read", "noread"):
            torch_beside_read(args.preset, args.context, args.child[0] == "read")
        else:
            company(args.preset, args.context, args.child[0])
        return 0
    print(f"{args.preset} at {args.context}, numba at 2 workers, one process per line:")
    for _ in range(args.processes):
        for name in COMPANIES:
            subprocess.run([sys.executable, "-m", "benchmarks.race_company",
                            "--preset", args.preset, "--context", str(args.context),
                            "--child", name], check=True)
    print("mqa at 1024, numba at 2 workers:")
    subprocess.run([sys.executable, "-m", "benchmarks.race_company", "--child", "after"],
                   check=True)
    print(f"{args.preset} at {args.context}, torch at 2 workers, one process per line:")
    for _ in range(args.processes):
        for name in ("read", "noread"):
            subprocess.run([sys.executable, "-m", "benchmarks.race_company",
                            "--preset", args.preset, "--context", str(args.context),
                            "--child", name], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
