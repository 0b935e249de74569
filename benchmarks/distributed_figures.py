"""The ``distributed`` strategy's figures (issue 14), paired where they are ratios.

    python -m benchmarks.distributed_figures start [--workers W]
    python -m benchmarks.distributed_figures pairs [--workers W] [--pairs P]
    python -m benchmarks.distributed_figures sieve N [--workers W]

``start``: a LocalCluster's start (cold, ``W`` single-threaded workers), the latency of
a first trivial task, and of a first kernel call (the sieve at 10^6: imports and numba's
cache load on the workers).

``pairs``: ``distributed:numba`` against ``multiprocess:numba`` at ``W`` workers, timed in
alternating order pair by pair in one process (both executors warm), for the sieve at
10^10, Monte Carlo at 10^9 samples (its hits checked against ``numba`` at 1 worker) and
a GQA decode step at 32k tokens. The per-pair log ratios give a Hodges-Lehmann ratio
with its 95% interval (above 1: distributed is slower). For attention it also prints
what one step sends to the cluster and gets back (the pickled tasks and results: the
query and the partial states, not the cache, whose shards stay on the workers).

``sieve N``: one count to ``N`` on ``W`` workers: its time, the count against the known
value where there is one, the tasks, and each worker's peak resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

from kernels import attention, executors, montecarlo, sieve
from kernels.harness import pairedstats
from kernels.harness.machine import cpu_model

#: pi(10^12) (the sieve package knows the powers of ten it tests).
PI_1E12 = 37_607_912_018


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def start(workers: int) -> None:
    from kernels.distributed import DaskExecutor

    t_start, cluster = _timed(lambda: DaskExecutor(workers))
    try:
        t_task, _ = _timed(lambda: cluster.map(abs, [-1]))
        t_again, _ = _timed(lambda: cluster.map(abs, [-1]))
        executors._pools[("dask", DaskExecutor.warm_key(workers))] = cluster
        t_kernel, _ = _timed(lambda: sieve.count_primes(10**6, strategy="distributed",
                                                        workers=workers))
        print(f"LocalCluster start, {workers} workers: {t_start:.2f} s; first task "
              f"{t_task * 1e3:.1f} ms, next {t_again * 1e3:.1f} ms; first sieve 1e6 call "
              f"{t_kernel * 1e3:.0f} ms")
    finally:
        executors.shutdown_pools()
        cluster.close()


def _pair(name: str, a: Callable[[], Any], b: Callable[[], Any], pairs: int,
          same: Callable[[Any, Any], bool] = lambda x, y: x == y) -> None:
    """Distributed (``a``) over multiprocess (``b``), alternating which goes first."""
    assert same(a(), b()), name  # both warm, and the same answer
    logs, ta, tb = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            (t_a, r_a), (t_b, r_b) = _timed(a), _timed(b)
        else:
            (t_b, r_b), (t_a, r_a) = _timed(b), _timed(a)
        assert same(r_a, r_b), name
        logs.append(math.log(t_a / t_b))
        ta.append(t_a)
        tb.append(t_b)
    st = pairedstats.point_stats(logs)
    ta.sort()
    tb.sort()
    print(f"{name}: distributed / multiprocess = {st.ratio:.3f} [{st.lo:.3f}, {st.hi:.3f}] "
          f"(95%, {pairs} pairs); medians {ta[pairs // 2] * 1e3:.1f} ms vs "
          f"{tb[pairs // 2] * 1e3:.1f} ms", flush=True)


@contextlib.contextmanager
def _traffic(workers: int) -> Iterator[tuple[list[int], list[int]]]:
    """While in the block: the pickled size of every task the warm Dask executor is
    given, and of every result it returns."""
    import cloudpickle

    executor = executors.get_executor("dask", workers)
    sent: list[int] = []
    back: list[int] = []
    plain = executor.map

    def counting(fn: Any, tasks: Any) -> Any:
        sent.extend(len(cloudpickle.dumps(t)) for t in tasks)
        results = plain(fn, tasks)
        back.extend(len(pickle.dumps(r)) for r in results)
        return results

    executor.map = counting
    try:
        yield sent, back
    finally:
        del executor.map


def pairs(workers: int, n_pairs: int) -> None:
    def count(strategy: str, n: int) -> Callable[[], int]:
        return lambda: sieve.count_primes(n, strategy=strategy, inner="numba", workers=workers)

    _pair(f"sieve 1e10, {workers} workers", count("distributed", 10**10),
          count("multiprocess", 10**10), n_pairs)

    def hits(strategy: str) -> Callable[[], int]:
        return lambda: montecarlo.estimate_pi(10**9, strategy=strategy, inner="numba",
                                              workers=workers).hits

    want = montecarlo.estimate_pi(10**9, strategy="numba", workers=1).hits
    assert hits("distributed")() == want, "distributed hits differ from numba at 1 worker"
    print(f"Monte Carlo 1e9: distributed hits {want} = numba at 1 worker", flush=True)
    _pair(f"Monte Carlo 1e9, {workers} workers", hits("distributed"), hits("multiprocess"),
          n_pairs)

    config = attention.PRESETS["gqa"]
    cache = attention.make_cache(config, capacity=32768, shared=True)
    attention.fill_random(cache, 32768, seed=0)
    query = attention.random_query(cache)

    def step(strategy: str) -> Callable[[], Any]:
        return lambda: attention.decode(cache, query, strategy=strategy, inner="numba",
                                        workers=workers)

    def close(x: Any, y: Any) -> bool:
        return float(abs(x - y).max()) <= 1e-4 * max(1.0, float(abs(y).max()))

    _pair(f"attention GQA 32k, {workers} workers", step("distributed"),
          step("multiprocess"), n_pairs, close)
    with _traffic(workers) as (sent, back):
        step("distributed")()
    print(f"attention GQA 32k, one step: {len(sent)} tasks, {sum(sent)} bytes pickled to "
          f"the cluster, {sum(back)} bytes back (the cache, {cache.used_nbytes} bytes, "
          f"stays on the workers)", flush=True)
    cache.close()


def count(n: int, workers: int) -> None:
    cluster = executors.get_executor("dask", workers)
    with _traffic(workers) as (sent, _):
        seconds, got = _timed(lambda: sieve.count_primes(n, strategy="distributed",
                                                         inner="numba", workers=workers))
    want = {10**12: PI_1E12, **sieve.KNOWN_PI}.get(n)

    def peak_rss() -> int:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    peaks = sorted(cluster.client.run(peak_rss).values())
    print(f"sieve {n:.0e}, distributed, {workers} workers: {seconds:.1f} s, "
          f"{len(sent)} tasks, count {got}"
          + ("" if want is None else f" ({'right' if got == want else f'WRONG, want {want}'})")
          + f"; peak RSS per worker {', '.join(f'{p / 2**20:.0f} MiB' for p in peaks)}",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["start", "pairs", "sieve"])
    ap.add_argument("n", nargs="?", type=float, default=1e10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=9)
    args = ap.parse_args()
    print(f"# {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    if args.what == "start":
        start(args.workers)
    elif args.what == "pairs":
        pairs(args.workers, args.pairs)
    else:
        count(int(args.n), args.workers)


if __name__ == "__main__":
    main()
