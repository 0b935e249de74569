"""Measure each strategy's minimum grain: the work per worker below which a second worker
costs more than it saves (issue 15; the kernels' ``MIN_GRAIN``).

    python -m benchmarks.min_grain [--kernel K ...] [--label L ...] [--budget S]

For each kernel (sieve, Monte Carlo, Mandelbrot) and each strategy label (``numba``, and
every pool strategy with every chunk kernel), three figures, each paired in alternation
(ABBA) with the 1-worker call in the same seconds:

- ``c``, the cost of going parallel: at a tiny size, the lower quartile over rounds of
  time(2 workers, split forced) - time(1 worker) (the median is printed too). What a
  prange launch (numba's threads waking, ``limit_threads``) or a pool round trip per
  extra task costs when the second core is free: on a shared machine the median also
  holds the waits for a core that another process has (tens of ms at a load of 5 on
  2 cores), which no grain can avoid short of never splitting;
- ``r``, one worker's rate: items (numbers, samples, worst-case pixel-iterations) per
  second of the 1-worker call at a mid size (tens of ms);
- ``s``, the speed-up of 2 workers at that mid size, split forced: what the second
  worker gives where its cost is small (a GIL-bound chunk kernel on threads gives ~1).

Two workers that halve the work beat one when each holds more than ``c * r`` items; the
grain printed is twice that (a margin for noise and for an efficiency below 1),
rounded up to a power of two. ``s`` is printed as a check, not used: on a loaded
machine it says more about the other processes than about the strategy, while a
chunk kernel that holds the GIL (pure Python on threads) never gains, whatever the
load. The grains go into each kernel's ``MIN_GRAIN`` by hand (with a reason where one
departs from this figure), with this script's output in its docs/*.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.workers_penalty import LABELS, cpu_model, paired
from kernels import executors, registry

# Per kernel: the tiny size (every label can split it in two) and, per chunk kernel, the
# mid size (tens of ms on one core) with the case options; ``items`` turns a size into
# the unit MIN_GRAIN counts.
TINY = {"sieve": (1 << 18) - 1, "montecarlo": 1 << 14, "mandelbrot": 32 * 32}
TINY_OPTIONS = {"montecarlo": {"chunk_size": 1 << 10}}
MID = {
    "sieve": {"numba": 2 * 10**8, "numpy": 3 * 10**6, "python": 3 * 10**6},
    "montecarlo": {"numba": 1 << 25, "numpy": 1 << 23, "python": 1 << 17},
    "mandelbrot": {"numba": 512 * 512, "numpy": 128 * 128, "python": 64 * 64},
}
MAX_ITER = 256


def items(kernel: str, size: int) -> int:
    """The work of ``size`` in MIN_GRAIN's unit."""
    if kernel == "sieve":
        return size + 1
    if kernel == "mandelbrot":
        return math.isqrt(size) ** 2 * MAX_ITER
    return size


def _options(kernel: str, size: int, tiny: bool) -> dict[str, Any]:
    if tiny:
        return dict(TINY_OPTIONS.get(kernel, {}))
    if kernel == "montecarlo":  # at least 16 chunks, so that 2 workers can split them
        from kernels import montecarlo

        return {"chunk_size": min(montecarlo.DEFAULT_CHUNK_SIZE, size // 16)}
    return {}


def _call(kernel: str, label: str, size: int, workers: int,
          options: dict[str, Any]) -> Callable[[], Any]:
    strategy, inner = registry.parse_label(label)
    module = registry.kernel_module(kernel)
    return module.make_case(size, strategy=strategy, inner=inner, workers=workers,
                            **options).run


class forced_split:
    """Within the block, ``label`` of ``module`` splits as asked (grain of one item)."""

    def __init__(self, module: Any, label: str) -> None:
        self.module, self.label = module, label

    def __enter__(self) -> None:
        self.saved = self.module.MIN_GRAIN.get(self.label)
        self.module.MIN_GRAIN[self.label] = 1

    def __exit__(self, *exc: object) -> None:
        if self.saved is None:
            self.module.MIN_GRAIN.pop(self.label, None)
        else:
            self.module.MIN_GRAIN[self.label] = self.saved


def _in_turn(one: Callable[[], Any], two: Callable[[], Any], module: Any, label: str,
             force_one: bool) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The two calls, the second (and the first if ``force_one``) with the split forced."""
    def forced(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with forced_split(module, label):
                return fn()
        return run

    return (forced(one) if force_one else one), forced(two)


def grain_from(c: float, r: float) -> float:
    """Items per worker past which 2 workers that halve the work win, doubled."""
    return 2 * max(c, 0.0) * r


def measure(kernel: str, label: str, budget: float) -> dict[str, float]:
    module = registry.kernel_module(kernel)
    strategy, inner = registry.parse_label(label)
    chunk = inner or strategy
    tiny = TINY[kernel]
    opts = _options(kernel, tiny, tiny=True)
    one, two = _in_turn(_call(kernel, label, tiny, 1, opts), _call(kernel, label, tiny, 2, opts),
                        module, label, force_one=False)
    one(), two()
    t1, t2 = paired(one, two, budget / 2, min_rounds=20)
    diffs = [b - a for a, b in zip(t1, t2, strict=True)]
    c25 = statistics.quantiles(diffs, n=4, method="inclusive")[0]
    c_median = statistics.median(diffs)
    mid = MID[kernel][chunk]
    opts = _options(kernel, mid, tiny=False)
    one, two = _in_turn(_call(kernel, label, mid, 1, opts), _call(kernel, label, mid, 2, opts),
                        module, label, force_one=True)
    one(), two()
    m1, m2 = paired(one, two, budget / 2, min_rounds=6)
    s = statistics.median([a / b for a, b in zip(m1, m2, strict=True)])
    r = items(kernel, mid) / statistics.median(m1)
    return {"c": c25, "c_median": c_median, "r": r, "s": s, "t1": statistics.median(m1),
            "grain": grain_from(c25, r)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", action="append", choices=sorted(TINY))
    ap.add_argument("--label", action="append")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds per label (default 3)")
    args = ap.parse_args(argv)
    import os

    print(f"# {cpu_model()}, {executors.cpu_count()} cores; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("kernel      label                c25 (us) c50 (us)  r (items/s)  s (x)  1w mid (ms)"
          "  grain (items/worker)  log2")
    for kernel in args.kernel or list(TINY):
        module = registry.kernel_module(kernel)
        for label in args.label or LABELS:
            strategy, _ = registry.parse_label(label)
            if registry.unavailable_reason(module, strategy):
                continue
            m = measure(kernel, label, args.budget)
            g = m["grain"]
            log2 = str(max(0, math.ceil(math.log2(max(g, 1)))))
            print(f"{kernel:<11} {label:<20} {m['c'] * 1e6:8.1f} {m['c_median'] * 1e6:8.1f}"
                  f"  {m['r']:11.3e}  "
                  f"{m['s']:5.2f}  {m['t1'] * 1e3:10.2f}  {g:20.3e}  {log2}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
