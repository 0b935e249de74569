"""Speed-up of reduced-precision KV caches over float32, paired in alternation (issue 15).

    python -m benchmarks.dtype_speedup [PAIRS] [PRESET] [CONTEXT] [STRATEGY]

Defaults: 15 pairs, gqa, 32768 tokens, numba. For each worker count (1, 2) and each
reduced type (bfloat16, float16, int8), every pair times one float32 step and one step of
the reduced cache, in alternating order, in this one process; a pair's ratio is
float32 time / reduced time. It prints the median ratio and its interquartile range over
the pairs, the median times, and the load average before and after: the machine is
shared, and a sibling vCPU busy with other work halves a compute-bound step's speed.
The caches hold the same random inputs (the reduced ones rounded on entry).

It then prints each type's *compute floor*: the numba chunk kernel over a 2048-token,
one-KV-head slab (G = 4 query heads, head dim 128) that stays in L2, in ns per (token,
KV head), and what that implies for the whole step (x context x KV heads): a step cannot
be faster than that however few bytes it reads. The first run of a dtype compiles it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import numpy as np

from kernels import attention as A
from kernels import executors
from kernels.attention import jit
from kernels.attention import precision as P

DTYPES = ("bfloat16", "float16", "int8")


def cpu_name() -> str:
    """The CPU's model name (lscpu), or what platform knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def _timed(cache: A.Cache, query: np.ndarray, strategy: str, workers: int) -> float:
    t0 = time.perf_counter()
    A.decode(cache, query, strategy=strategy, workers=workers)
    return time.perf_counter() - t0


def paired(caches: dict[str, A.Cache], query: np.ndarray, dtype: str, strategy: str,
           workers: int, pairs: int) -> tuple[np.ndarray, list[float], list[float]]:
    """Per-pair ratios float32 / ``dtype`` and both sides' times, order alternating."""
    base, other = caches["float32"], caches[dtype]
    for cache in (base, other):  # warm: JIT, first touch
        A.decode(cache, query, strategy=strategy, workers=workers)
    ratios, t_base, t_other = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            a = _timed(base, query, strategy, workers)
            b = _timed(other, query, strategy, workers)
        else:
            b = _timed(other, query, strategy, workers)
            a = _timed(base, query, strategy, workers)
        t_base.append(a)
        t_other.append(b)
        ratios.append(a / b)
    return np.array(ratios), t_base, t_other


def _slab(dtype: str, tokens: int) -> tuple:
    """partial_jit's arguments over an L2-resident slab of ``tokens`` rows of one KV head
    (4 query heads, head dim 128) stored as ``dtype``."""
    rng = np.random.default_rng(0)
    d, g = 128, 4
    q = (rng.standard_normal((1, g, d)) * d**-0.5).astype(np.float32)
    kv = [rng.standard_normal((1, 1, tokens, d)).astype(np.float32) for _ in range(2)]
    none = np.zeros((1, 1, 0), np.float32)
    scales = [none, none]
    spec = P.kv_dtype(dtype)
    if spec.scaled:
        (k, ks), (v, vs) = P.quantize_int8(kv[0]), P.quantize_int8(kv[1])
        kv, scales = [k, v], [ks, vs]
    else:
        kv = [P.numba_view(P.encode(a, spec, "x")[0]) for a in kv]
    k2 = np.zeros((1, 1, tokens, 0), kv[0].dtype)
    q2 = np.zeros((1, g, 0), np.float32)
    state = (np.empty((1, g), np.float32), np.empty((1, g), np.float32),
             np.empty((1, g, d), np.float32))
    return (q, kv[0], q2, k2, kv[1], 0, tokens, *state, scales[0], none, scales[1])


def compute_floor(dtypes: tuple[str, ...], tokens: int = 2048, rounds: int = 20) -> dict:
    """Seconds per (token, KV head) of :func:`kernels.attention.jit.partial_jit` on an
    L2-resident slab per type: the best of ``rounds`` runs of 20 calls, the types taken in
    turn within each round so that they meet the same neighbours."""
    slabs = {dtype: _slab(dtype, tokens) for dtype in dtypes}
    for args in slabs.values():
        jit.partial_jit(*args)
    best = dict.fromkeys(dtypes, float("inf"))
    for _ in range(rounds):
        for dtype, args in slabs.items():
            t0 = time.perf_counter()
            for _ in range(20):
                jit.partial_jit(*args)
            best[dtype] = min(best[dtype], (time.perf_counter() - t0) / 20 / tokens)
    return best


def main(pairs: int = 15, preset: str = "gqa", context: int = 32768,
         strategy: str = "numba") -> None:
    config = A.PRESETS[preset]
    print(f"# {cpu_name()}, {executors.cpu_count()} cores (shared machine), {preset} "
          f"T={context}, {strategy}, {pairs} pairs per point, order alternating")
    print(f"# load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    caches = {}
    for dtype in ("float32", *DTYPES):
        caches[dtype] = A.make_cache(config, capacity=context, dtype=dtype)
        A.fill_random(caches[dtype], context, seed=0)
    query = A.random_query(caches["float32"], seed=1)
    print("workers  dtype     MB/step  f32 ms  dtype ms  speed-up median [IQR]")
    for workers in (1, 2):
        for dtype in DTYPES:
            r, tb, to = paired(caches, query, dtype, strategy, workers, pairs)
            q1, med, q3 = np.percentile(r, [25, 50, 75])
            mb = caches[dtype].used_nbytes / 1e6
            print(f"{workers:>7}  {dtype:<8}  {mb:7.1f}  {np.median(tb) * 1e3:6.1f}  "
                  f"{np.median(to) * 1e3:8.1f}  {med:.2f}x [{q1:.2f}, {q3:.2f}]", flush=True)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    heads = getattr(config, "n_kv_heads", 1)
    print(f"compute floor (1 thread, L2-resident slab; x {context} tokens x {heads} KV heads):")
    for dtype, seconds in compute_floor(("float32", *DTYPES)).items():
        ns = seconds * 1e9
        print(f"  {dtype:<8}  {ns:5.1f} ns per (token, KV head) -> "
              f"{ns * context * heads / 1e6:5.1f} ms per step", flush=True)
    for cache in caches.values():
        cache.close()


if __name__ == "__main__":
    args = sys.argv[1:] + [None] * 4
    main(int(args[0] or 15), args[1] or "gqa", int(args[2] or 32768), args[3] or "numba")
