"""Is a second worker ever a penalty? 1 worker against 2, paired in alternation (issue 15).

    python -m benchmarks.workers_penalty [--kernel K ...] [--label L ...] [--budget S]

For every pool and ``numba`` strategy of the sieve, Monte Carlo, Mandelbrot and
attention kernels (attention: each preset of its asv grid, at 1k tokens), at the small
sizes of their asv grids (where a second worker can cost more than it
saves), each round times one call at 1 worker and one at 2, back to back, the order
alternating (ABBA) so that neither side always runs second. It prints the median of the
per-round ratios time(2 workers) / time(1 worker), their interquartile range, the
rounds, both medians, and ``used``: the workers the 2-worker call really runs on (the
kernel's ``workers_used``; ``-`` where the kernel does not say, as before issue 15).
Issue 15 asks for a ratio of at most 1.10 at every size of the grid. The last lines
give the worst median twice: over the rows whose 2-worker call runs on 2 workers (the
penalty asked about), and over those where it runs on 1, as the other side does: the
same work timed twice, so how far that median strays from 1 is this machine's noise.

The kernels imported are whatever ``kernels`` resolves to: run it with
``PYTHONPATH=<a checkout of an older commit>`` to time that commit's kernels.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from kernels import executors, registry

#: The small sizes of each suite's grid (benchmarks/bench_*.py), where the penalty lives.
SIZES = {
    "sieve": [10**6, 10**7],
    "montecarlo": [10**6, 10**7],
    "mandelbrot": [1 << 14, 1 << 16, 1 << 18],
    "attention": [1024],
}
#: Options each size runs with, per kernel (attention: its presets).
OPTIONS: dict[str, list[dict[str, Any]]] = {
    "attention": [{"preset": p} for p in ("mha", "gqa", "mqa", "mla")],
}
LABELS = ["numba"] + [f"{pool}:{inner}" for pool in executors.POOL_STRATEGIES
                      for inner in registry.INNERS]


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` gives it (platform's string where lscpu is absent)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _case(kernel: str, label: str, size: int, workers: int,
          options: dict[str, Any]) -> tuple[Callable[[], Any], Any]:
    strategy, inner = registry.parse_label(label)
    case = registry.kernel_module(kernel).make_case(size, strategy=strategy, inner=inner,
                                                    workers=workers, **options)
    return case.run, case.fields.get("workers_used", "-")


def _same(a: Any, b: Any) -> bool:
    try:
        import numpy as np

        if isinstance(a, np.ndarray):
            return bool(np.array_equal(a, b))
    except ImportError:
        pass
    return a == b


def paired(one: Callable[[], Any], two: Callable[[], Any], budget: float,
           min_rounds: int = 12, max_rounds: int = 400) -> tuple[list[float], list[float]]:
    """Seconds of ``one`` and ``two``, round by round in ABBA order, for about ``budget``
    seconds (at least ``min_rounds`` rounds)."""
    t1: list[float] = []
    t2: list[float] = []
    start = time.perf_counter()
    for i in range(max_rounds):
        order = ((one, t1), (two, t2)) if i % 2 == 0 else ((two, t2), (one, t1))
        for fn, out in order:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        if i + 1 >= min_rounds and time.perf_counter() - start > budget:
            break
    return t1, t2


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", action="append", choices=sorted(SIZES))
    ap.add_argument("--label", action="append", help="strategy label, e.g. threaded:numba")
    ap.add_argument("--budget", type=float, default=1.5, help="seconds per point (default 1.5)")
    args = ap.parse_args(argv)
    kernels = args.kernel or list(SIZES)
    labels = args.label or LABELS
    import kernels as package

    print(f"# {cpu_model()}, {executors.cpu_count()} cores; kernels from {package.__path__[0]}")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")
    print("kernel         label                 size        used  t2/t1 median [IQR]   rounds"
          "   1 worker   2 workers")
    # the worst median where the 2-worker call runs on 2 (or does not say), and where it
    # runs on 1 like the other side: identical work, so that ratio is the machine's noise
    worst = {"two": (0.0, ""), "one": (0.0, "")}
    for kernel in kernels:
        module = registry.kernel_module(kernel)
        spec = module.SPEC
        for label in labels:
            strategy, inner = registry.parse_label(label)
            if registry.unavailable_reason(module, strategy):
                continue
            for size, options in ((s, o) for s in SIZES[kernel]
                                  for o in OPTIONS.get(kernel, [{}])):
                if size > spec.size_limit(strategy, inner):
                    continue
                one, _ = _case(kernel, label, size, 1, options)
                two, used = _case(kernel, label, size, 2, options)
                a, b = one(), two()  # warm: JIT, pools started and filled
                if kernel == "attention":  # float32 sums split differently: close, not equal
                    import numpy as np

                    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
                elif not _same(a, b) and not hasattr(a, "hits"):
                    raise AssertionError(f"{kernel} {label} {size}: 1 and 2 workers differ")
                if hasattr(a, "hits") and a.hits != b.hits:
                    raise AssertionError(f"{kernel} {label} {size}: hits {a.hits} vs {b.hits}")
                t1, t2 = paired(one, two, args.budget)
                lo, mid, hi = quartiles([y / x for x, y in zip(t1, t2, strict=True)])
                m1, m2 = statistics.median(t1) * 1e3, statistics.median(t2) * 1e3
                what = f"{kernel}:{options['preset']}" if options else kernel
                side = "one" if used == 1 else "two"
                worst[side] = max(worst[side], (mid, f"{what} {label} {size}"))
                print(f"{what:<14} {label:<20} {size:<11} {used!s:>4}  "
                      f"{mid:6.3f} [{lo:.3f}, {hi:.3f}]  {len(t1):6d}  "
                      f"{m1:8.3f} ms {m2:8.3f} ms", flush=True)
    for side, words in (("two", "where 2 workers ran"),
                        ("one", "where 1 ran on both sides (identical work: the noise)")):
        mid, where = worst[side]
        print(f"# worst median ratio {words}: " + (f"{mid:.3f} ({where})" if where else "-"))
    print(f"# load average after: "
          f"{' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
