"""One decode step at 32k timed three ways in one process, and then across processes.

    python -m benchmarks.decode_three_ways [--rounds 15] [--preset gqa]
        [--strategy numba] [--workers 2] [--processes 0]

The asv suite measures this step in ``TimeDecode.time_decode`` (right after setup's warm
step), in ``Bandwidth`` (after a 1 GiB read pass) and ``kernelrace run`` (steps back to
back); on one machine the three disagreed (issue 12). Here the step after a step and
the step after a read pass are paired round by round, and a fresh case from the same
source is timed after its own warm step, so a difference from the cache's residency
in the last-level cache, or from a freshly built case, shows up as a ratio.

With ``--processes N`` it then starts N fresh interpreters one after another, each
building the case and timing 30 steps after its warm step, and prints each one's median
and fastest step: asv times every benchmark point in a process of its own, so a spread
between processes here is what separates two benchmarks' figures of the same step.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from kernels import attention, registry
from kernels.harness.machine import ReadStream

CONTEXT = 32768
STEPS_PER_PROCESS = 30


def _timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _source(preset: str) -> attention.Cache:
    source = attention.make_cache(attention.PRESETS[preset], capacity=CONTEXT, batch=1)
    attention.fill_random(source, CONTEXT, seed=0)
    return source


def _kwargs(preset: str, label: str, workers: int) -> dict:
    strategy, inner = registry.parse_label(label)
    return {"strategy": strategy, "inner": inner, "workers": workers, "preset": preset}


def three_ways(preset: str, label: str, workers: int, rounds: int) -> None:
    source = _source(preset)
    kwargs = _kwargs(preset, label, workers)
    case = attention.make_case(CONTEXT, source=source, **kwargs)
    case.run()
    stream = ReadStream(workers=workers)
    nbytes = case.fields["cache_bytes"]
    warm, cold = [], []
    for _ in range(rounds):
        stream.gbps()
        cold.append(_timed(case.run))
        warm.append(_timed(case.run))
    fresh = []
    for _ in range(5):
        other = attention.make_case(CONTEXT, source=source, **kwargs)
        other.run()
        fresh.append(_timed(other.run))
        other.close()
    case.close()
    ratio = [c / w for c, w in zip(cold, warm, strict=True)]
    for name, times in (("after a step", warm), ("after a 1 GiB read", cold),
                        ("fresh case, second step", fresh)):
        med = statistics.median(times)
        print(f"{name}: median {1e3 * med:.2f} ms = {nbytes / med / 1e9:.1f} GB/s")
    print(f"paired (after a read) / (after a step): median {statistics.median(ratio):.3f}, "
          f"range {min(ratio):.3f}-{max(ratio):.3f}; cache {nbytes / 1e6:.0f} MB; "
          f"read pass {stream.gbps():.1f} GB/s")


def one_process(preset: str, label: str, workers: int) -> None:
    """This process's steps after the warm one: prints 'median_ms min_ms'."""
    case = attention.make_case(CONTEXT, source=_source(preset), **_kwargs(preset, label,
                                                                          workers))
    try:
        case.run()
        times = [_timed(case.run) for _ in range(STEPS_PER_PROCESS)]
    finally:
        case.close()
    print(f"{1e3 * statistics.median(times):.3f} {1e3 * min(times):.3f}")


def across_processes(preset: str, label: str, workers: int, processes: int) -> None:
    medians = []
    for i in range(processes):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.decode_three_ways", "--one", "--preset",
             preset, "--strategy", label, "--workers", str(workers)],
            capture_output=True, text=True, check=True, timeout=600)
        med, fastest = (float(x) for x in out.stdout.split()[-2:])
        medians.append(med)
        print(f"process {i + 1}: median {med:.2f} ms, fastest {fastest:.2f} ms "
              f"({STEPS_PER_PROCESS} steps)")
    lo, hi = min(medians), max(medians)
    print(f"{processes} processes: per-process medians {lo:.2f}-{hi:.2f} ms "
          f"(slowest / fastest {hi / lo:.2f}), median of medians "
          f"{statistics.median(medians):.2f} ms")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rounds_pos", nargs="?", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--preset", default="gqa", choices=sorted(attention.PRESETS))
    ap.add_argument("--strategy", default="numba")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--processes", type=int, default=0,
                    help="then time the step in this many fresh processes")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        one_process(args.preset, args.strategy, args.workers)
        return
    print(f"{args.preset} at {CONTEXT}, {args.strategy}, {args.workers} worker(s)")
    three_ways(args.preset, args.strategy, args.workers, args.rounds_pos or args.rounds)
    if args.processes > 0:
        across_processes(args.preset, args.strategy, args.workers, args.processes)


if __name__ == "__main__":
    main()
