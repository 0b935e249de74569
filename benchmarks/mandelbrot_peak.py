"""How far Mandelbrot's numba escape loop is from the core's arithmetic, in one run.

    python -m benchmarks.mandelbrot_peak

Times, on one core and in alternation, a float64 2048x2048 matmul (BLAS, capped to one
thread: the core's practical float64 peak, FMAs included) and the numba ``render`` of
the default view at 1024x1024, max_iter 256. The escape loop does 8 float64 operations
per iteration (4 multiplies, 4 adds or subtracts, and a compare) and may not fuse them
into FMAs (every strategy must give the reference's counts exactly), so half of the
matmul rate is the most it could reach.
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from kernels import mandelbrot

FLOP_PER_ITERATION = 8


def main(rounds: int = 7) -> None:
    a = np.random.default_rng(0).random((2048, 2048))
    b = np.random.default_rng(1).random((2048, 2048))
    iterations = int(mandelbrot.render(1024, 1024, strategy="numba", workers=1).sum())
    matmul, escape = [], []
    with threadpool_limits(1):
        a @ b
        for _ in range(rounds):
            t0 = time.perf_counter()
            a @ b
            t1 = time.perf_counter()
            mandelbrot.render(1024, 1024, strategy="numba", workers=1)
            t2 = time.perf_counter()
            matmul.append(2 * 2048**3 / (t1 - t0) / 1e9)
            escape.append(iterations / (t2 - t1) / 1e9)
    peak = statistics.median(matmul)
    rate = statistics.median(escape)
    print(f"# {platform.processor() or platform.machine()}, one core, {rounds} rounds")
    print(f"float64 matmul: {peak:.1f} GFLOP/s (range {min(matmul):.1f}-{max(matmul):.1f})")
    print(f"numba escape loop: {rate:.3f} iterations/ns (range {min(escape):.3f}-"
          f"{max(escape):.3f}) = {FLOP_PER_ITERATION * rate:.2f} GFLOP/s = "
          f"{FLOP_PER_ITERATION * rate / peak:.0%} of the matmul rate")


if __name__ == "__main__":
    main()
