"""Each attention preset against its roofline, with the roofline measured in the same
rounds as the step (issue 15).

    python -m benchmarks.roofline_figures [ROUNDS] [CONTEXT] [WORKERS] [PRESETS] [MODE]

Defaults: 9 rounds, 32768 tokens, 2 workers, every preset. Each round times, in turn
(the order rotating from round to round): one ``numba`` decode step, one ``torch`` step
(where torch is installed), one float32 2048 x 2048 matmul through BLAS and one read
pass over 1 GiB, all at WORKERS threads. A step is timed as a decoder runs it: right
after an untimed step of the same strategy over a second cache of the same shape (the
layer before), so that the cores are busy and the timed cache is not in the CPU's
caches. Timed cold instead, as the first compute after the read pass or the matmul's
settling sleep, a step is slower by what the idle cores take to get back to speed:
on an AMD EPYC Zen 2 (2 cores), an MQA 32k step with numba took 5.7 ms after the read
pass and 6.0 ms after a 10 ms pause, against 4.7 ms after the layer before; 2 ms of
the FMA probe's loop took 1.36x as long after a 10 ms pause as back to back. The
matmul is timed the same way, after an untimed one: timed alone after the other sides
(a torch step's OpenMP threads still spinning, or the read), it measured 156-163 GFLOP/s
in the rounds against 187-190 after them. Timing only the step warm would flatter it.
MODE ``cold`` (the fifth argument; default ``warm``) times every side alone, as the
first thing after the side before it, to show the difference. A round's roofline
time is the larger of the step's bytes (cache read plus weights) over that round's read
bandwidth and its FLOPs over that round's matmul rate, so the share of roofline
compares measurements taken within a second of each other, not a calibration from
another hour of a shared machine. Printed per preset: median step times, the median
share of roofline with its interquartile range over the rounds, which bound applies,
and numba's speed-up over torch (paired per round) with its interquartile range. Then
the FMA probe's peak
beside the matmul rate (``kernelrace machine`` measures both).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from kernels import attention as A
from kernels.harness.machine import cpu_model
from kernels.harness.probes import (
    MatmulStream,
    ReadStream,
    measure_fma_gflops,
    measure_fma_widest,
    measure_matmul_gflops,
)

MATMUL_N = 2048


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = np.percentile(values, [25, 50, 75])
    return float(q[1]), float(q[0]), float(q[2])


def _timed(fn, repeats: int = 1) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls in a row."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def _after_layer_before(case, before, warm: bool = True):
    """A call that times one step of ``case`` right after an untimed step of ``before``
    (``warm``), or alone."""
    def timed() -> float:
        if warm:
            before.run()
        return _timed(case.run)
    return timed


def preset_rounds(preset: str, context: int, workers: int, rounds: int,
                  stream: ReadStream, warm: bool = True) -> dict:
    """The per-round times of each side and the per-round roofline shares of one preset."""
    config = A.PRESETS[preset]
    caches = []
    cases: dict[str, list] = {}
    try:
        for seed in (0, 1):  # the timed layer, and the layer before it
            cache = A.make_cache(config, capacity=context)
            caches.append(cache)
            A.fill_random(cache, context, seed=seed)
        for s in ("numba", "torch"):
            if not A.unavailable_reason(s):
                cases[s] = [A.make_case(context, strategy=s, workers=workers,
                                        preset=preset, source=c, seed=i)
                            for i, c in enumerate(caches)]
        for pair in cases.values():  # compile, first touch
            for case in pair:
                case.run()
        fields = cases["numba"][0].fields
        nbytes = fields["cache_bytes"] + fields["weight_bytes"]
        flops = fields["flops"]
        matmul = MatmulStream(MATMUL_N, workers)
        sides = {**{s: _after_layer_before(*pair, warm) for s, pair in cases.items()},
                 "matmul": matmul.gflops, "read": stream.gbps}
        names = list(sides)
        times: dict[str, list[float]] = {n: [] for n in names}
        gflops, gbps = [], []
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                if name == "matmul":
                    if warm:
                        matmul.seconds()  # untimed, as each step follows the layer before
                    gflops.append(sides[name]())
                    time.sleep(matmul.settle_s)  # BLAS's threads stop spinning
                elif name == "read":
                    gbps.append(sides[name]())
                else:
                    times[name].append(sides[name]())
        rates = list(zip(gbps, gflops, strict=True))
        roof = [max(nbytes / bw / 1e9, flops / mm / 1e9) for bw, mm in rates]
        bound = ["memory" if nbytes / bw > flops / mm else "compute"
                 for bw, mm in rates]
        out = {"preset": preset, "bytes": nbytes, "flops": flops,
               "numba_ms": _quartiles([t * 1e3 for t in times["numba"]]),
               "roofline_share": _quartiles(
                   [r / t for r, t in zip(roof, times["numba"], strict=True)]),
               "bound": statistics.mode(bound),
               "matmul_gflops": _quartiles(gflops), "read_gbps": _quartiles(gbps)}
        if "torch" in times:
            out["torch_ms"] = _quartiles([t * 1e3 for t in times["torch"]])
            out["vs_torch"] = _quartiles(
                [t / n for t, n in zip(times["torch"], times["numba"], strict=True)])
        return out
    finally:
        for pair in cases.values():
            for case in pair:
                case.close()
        for cache in caches:
            cache.close()


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 9
    context = int(argv[1]) if len(argv) > 1 else 32768
    workers = int(argv[2]) if len(argv) > 2 else 2
    presets = argv[3].split(",") if len(argv) > 3 else list(A.PRESETS)
    mode = argv[4] if len(argv) > 4 else "warm"
    if mode not in ("warm", "cold"):
        raise SystemExit(f"MODE must be warm or cold, got {mode!r}")
    print(f"CPU: {cpu_model()}; context {context}, {workers} workers, {rounds} rounds, "
          f"steps timed {'after the layer before' if mode == 'warm' else 'alone (cold)'}")
    A.unavailable_reason("torch")  # torch loads before numba's OpenMP threads start
    stream = ReadStream(1 << 30, workers)
    print("| preset | numba ms | of roofline [IQR] | bound | torch ms | vs torch [IQR] "
          "| matmul GFLOP/s | read GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in presets:
        r = preset_rounds(preset, context, workers, rounds, stream, mode == "warm")
        share = r["roofline_share"]
        torch = ("-", "-")
        if "vs_torch" in r:
            v = r["vs_torch"]
            torch = (f"{r['torch_ms'][0]:.2f}", f"{v[0]:.2f}x [{v[1]:.2f}, {v[2]:.2f}]")
        print(f"| {preset} | {r['numba_ms'][0]:.2f} | {share[0]:.0%} [{share[1]:.0%}, "
              f"{share[2]:.0%}] | {r['bound']} | {torch[0]} | {torch[1]} | "
              f"{r['matmul_gflops'][0]:.0f} | {r['read_gbps'][0]:.1f} |", flush=True)
    fma = statistics.median(measure_fma_gflops("float32", workers, 5))
    widest = measure_fma_widest([workers], 5)
    wide = (f", {statistics.median(widest['samples_gflops']['float32'][str(workers)]):.0f} "
            "in the widest vectors" if widest else "")
    mm = statistics.median(measure_matmul_gflops(MATMUL_N, workers, 5))
    print(f"float32 FMA probe at {workers} threads: {fma:.0f} GFLOP/s in numba's default "
          f"vectors{wide}; matmul {mm:.0f} GFLOP/s (one after the other, after the rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
