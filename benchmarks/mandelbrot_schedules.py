"""The Mandelbrot figures of docs/mandelbrot.md: numba's iterations per ns on one core, and
the 2-worker speed-up of the static and dynamic schedules, paired in alternation.

Each round times, back to back and in a rotating order, one render at 1 worker (serial
numba) and one at 2 workers under each schedule, so that a machine whose speed drifts
(a shared VM) moves all three alike; the figures are medians over the rounds of the
per-round ratios, with their range. Timing lives here, not in kernels/.

    python -m benchmarks.mandelbrot_schedules [--rounds 10] [--side 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from kernels import mandelbrot
from kernels.harness.machine import cpu_model


def _timed(fn) -> tuple[float, float]:
    """Wall seconds of ``fn()`` and this process's CPU seconds (all its threads)."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def _spread(values: list[float]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
    return (f"median {statistics.median(values):.3f}  IQR {q[0]:.3f}..{q[2]:.3f}  "
            f"range {min(values):.3f}..{max(values):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--side", type=int, default=1024, help="image side (pixels)")
    parser.add_argument("--labels", default="numba,threaded:numba,multiprocess:numba")
    parser.add_argument("--views", default="full,upper")
    args = parser.parse_args(argv)
    side = args.side
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; load average "
          f"{os.getloadavg()[0]:.2f}; {side}x{side} pixels, max_iter "
          f"{mandelbrot.DEFAULT_MAX_ITER}, {args.rounds} rounds")
    for view in args.views.split(","):
        region = mandelbrot.VIEWS[view]
        common = {"max_iter": mandelbrot.DEFAULT_MAX_ITER, "region": region}
        iterations = mandelbrot.checksum(mandelbrot.render(side, side, strategy="numba",
                                                           workers=1, **common))
        for label in args.labels.split(","):
            strategy, _, inner = label.partition(":")
            calls = {"1 worker": dict(strategy="numba", workers=1)}
            for schedule in mandelbrot.SCHEDULES:
                calls[f"2 workers {schedule}"] = dict(strategy=strategy, inner=inner or None,
                                                      workers=2, schedule=schedule)
            fns = {}
            for name, kw in calls.items():
                fns[name] = lambda kw={**common, **kw}: mandelbrot.render(side, side, **kw)
                got = mandelbrot.checksum(fns[name]())  # warm: JIT, pool start; and check
                assert got == iterations, (name, got, iterations)
            times: dict[str, list[float]] = {name: [] for name in fns}
            cpu: dict[str, list[float]] = {name: [] for name in fns}
            names = list(fns)
            for r in range(args.rounds):
                for name in names[r % 3:] + names[:r % 3]:  # rotate who goes first
                    wall, used = _timed(fns[name])
                    times[name].append(wall)
                    cpu[name].append(used / wall)
            one = times["1 worker"]
            static, dynamic = times["2 workers static"], times["2 workers dynamic"]
            print(f"\n{view} view, {label}: {iterations} iterations")
            print(f"  numba 1 worker: {statistics.median(one) * 1e3:.1f} ms, "
                  f"{iterations / statistics.median(one) / 1e9:.3f} iterations/ns/core")
            print("  speed-up static  (1 worker / 2 workers): "
                  + _spread([a / b for a, b in zip(one, static, strict=True)]))
            print("  speed-up dynamic (1 worker / 2 workers): "
                  + _spread([a / b for a, b in zip(one, dynamic, strict=True)]))
            print("  dynamic over static (static / dynamic):  "
                  + _spread([a / b for a, b in zip(static, dynamic, strict=True)]))
            if strategy != "multiprocess":  # the workers' CPU is not this process's
                print("  cores used (CPU time / wall time): " + ", ".join(
                    f"{name} {statistics.median(cpu[name]):.2f}" for name in names))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
