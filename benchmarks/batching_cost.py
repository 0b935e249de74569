"""What returning to Python every third of a second costs (issue 16, item 5), paired.

    python -m benchmarks.batching_cost [PAIRS]

The sieve's and Monte Carlo's ``numba`` strategies cut long work into pieces so that
Ctrl-C is honoured between them (docs/reliability.md). Each case below times that
(``batched``) against the same compiled kernels over the whole range in one call
(``one call``, the plan before the change), in alternating order, pair by pair, at sizes
where the batching applies. The per-pair log ratios give a Hodges-Lehmann ratio with
its 95% interval; a ratio above 1 means the batched form is slower.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

from kernels import executors, montecarlo, sieve
from kernels.harness import pairedstats
from kernels.montecarlo import jit as mc_jit
from kernels.sieve import jit as sieve_jit
from kernels.sieve import reference


def _sieve_pair(n: int, workers: int) -> tuple[Callable[[], int], Callable[[], int]]:
    primes = reference.sieving_primes(n + 1)

    def one_call() -> int:
        if workers == 1:
            return sieve_jit.count_range(0, n + 1, primes)
        bounds = np.array([lo for lo, _ in sieve.plan_ranges(n, workers)] + [n + 1])
        with executors.limit_threads(workers):
            return sieve_jit.count_ranges_parallel(bounds, primes)

    def batched() -> int:
        return sieve.count_primes(n, strategy="numba", workers=workers)

    return one_call, batched


def _pi_pair(samples: int, workers: int) -> tuple[Callable[[], int], Callable[[], int]]:
    chunk = montecarlo.DEFAULT_CHUNK_SIZE
    key = np.uint64(mc_jit.seed_key(np.uint64(0)))
    n_chunks = -(-samples // chunk)

    def one_call() -> int:
        with executors.limit_threads(workers):
            return int(mc_jit.parallel_hits(key, 0, n_chunks, chunk, samples))

    def batched() -> int:
        return montecarlo.estimate_pi(samples, strategy="numba", workers=workers).hits

    return one_call, batched


CASES = {
    "sieve numba n=2e9 w=1 (8 ranges)": lambda: _sieve_pair(2 * 10**9, 1),
    "sieve numba n=4e9 w=2 (16 ranges, 4 prange calls)": lambda: _sieve_pair(4 * 10**9, 2),
    "pi numba 2^30 w=1 (16 prange calls)": lambda: _pi_pair(1 << 30, 1),
    "pi numba 2^30 w=2 (8 prange calls)": lambda: _pi_pair(1 << 30, 2),
}


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main(pairs: int = 12) -> None:
    print(f"# {platform.processor() or platform.machine()}, {executors.cpu_count()} cores, "
          f"{pairs} pairs per case, order alternating")
    for name, build in CASES.items():
        one_call, batched = build()
        assert one_call() == batched(), name  # same answer, and both warm
        logs = []
        for i in range(pairs):
            if i % 2 == 0:
                (t_one, r1), (t_bat, r2) = _timed(one_call), _timed(batched)
            else:
                (t_bat, r2), (t_one, r1) = _timed(batched), _timed(one_call)
            assert r1 == r2
            logs.append(math.log(t_bat / t_one))
        st = pairedstats.point_stats(logs)
        print(f"{name}: batched / one call = {st.ratio:.4f} "
              f"[{st.lo:.4f}, {st.hi:.4f}] (95%), p(slower) = {st.p_slower:.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
