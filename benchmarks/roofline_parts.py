"""Where a compute-bound attention step's time goes: the step with its cache in DRAM
against its arithmetic alone and its bytes alone, all three measured in the same rounds
(issue 15).

    python -m benchmarks.roofline_parts [ROUNDS] [CONTEXT] [WORKERS] [PRESETS]

Defaults: 15 rounds, 32768 tokens, 2 workers, ``mqa,mla,mla-v3``. Each round times, in
turn:

- a read pass over 1 GiB on WORKERS threads. The *bytes alone* are the step's cache and
  weight bytes at that round's read bandwidth;
- one ``numba`` step over the CONTEXT-token cache, which the read pass has just evicted
  from every cache level: the *step*;
- repeated ``numba`` steps over two small caches, of S and 2S tokens a worker, that stay
  in each core's L2. The *arithmetic alone* is the small step's time plus the slope
  per token between the two, times the tokens still missing. S holds 512 KiB of cache
  per worker (whole blocks of 128 tokens, at least one).

Under the roofline model a step takes the larger of its two parts; if nothing overlapped,
it would take their sum. Printed per preset: the three medians over the rounds, with
the rates they stand for, and how much of the smaller part the step hides,
``(arithmetic + bytes - step) / min(arithmetic, bytes)``: 100% is the roofline's full
overlap, 0% none. The three are taken seconds apart because this shared machine's
speed moves by tens of percent from one minute to the next.
"""

from __future__ import annotations

import statistics
import sys

from benchmarks.roofline_figures import _timed
from kernels import attention as A
from kernels.harness.machine import cpu_model
from kernels.harness.probes import ReadStream

PER_WORKER_BYTES = 512 * 1024
BLOCK_TOKENS = 128
SMALL_REPEATS = 20


def small_tokens(case_bytes: int, context: int, workers: int) -> int:
    """S: whole blocks of tokens a worker, about :data:`PER_WORKER_BYTES` of cache."""
    per_token = case_bytes / context
    blocks = max(1, int(PER_WORKER_BYTES / per_token) // BLOCK_TOKENS)
    return blocks * BLOCK_TOKENS


def preset_parts(preset: str, context: int, workers: int, rounds: int,
                 stream: ReadStream) -> dict:
    """Median step, arithmetic-alone and bytes-alone times (s) of one preset."""
    big = A.make_case(context, strategy="numba", workers=workers, preset=preset)
    cases = [big]
    try:
        fields = big.fields
        s = small_tokens(fields["cache_bytes"], context, workers)
        for size in (s * workers, 2 * s * workers):
            cases.append(A.make_case(size, strategy="numba", workers=workers, preset=preset))
            used = cases[-1].fields["workers_used"]
            if used != workers:
                raise SystemExit(f"{preset}: a {size}-token step runs on {used} workers, "
                                 f"not {workers}; ask for fewer workers or a larger S")
        for case in cases:  # compile, first touch
            case.run()
            case.run()
        nbytes = fields["cache_bytes"] + fields["weight_bytes"]
        steps, arith, mem = [], [], []
        per_worker = context / workers
        for _ in range(rounds):
            mem.append(nbytes / (stream.gbps() * 1e9))
            steps.append(_timed(big.run))
            t1 = _timed(cases[1].run, SMALL_REPEATS)
            t2 = _timed(cases[2].run, SMALL_REPEATS)
            arith.append(t1 + (t2 - t1) / s * (per_worker - s))
        return {"flops": fields["flops"], "bytes": nbytes, "small": s,
                "step": statistics.median(steps), "arith": statistics.median(arith),
                "mem": statistics.median(mem)}
    finally:
        for case in cases:
            case.close()


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 15
    context = int(argv[1]) if len(argv) > 1 else 32768
    workers = int(argv[2]) if len(argv) > 2 else 2
    presets = argv[3].split(",") if len(argv) > 3 else ["mqa", "mla", "mla-v3"]
    print(f"CPU: {cpu_model()}; context {context}, {workers} workers, {rounds} rounds; "
          "medians over the rounds")
    stream = ReadStream(1 << 30, workers)
    print("| preset | step | arithmetic alone (S) | bytes alone | sum / max | hidden |")
    print("|---|---|---|---|---|---|")
    for preset in presets:
        r = preset_parts(preset, context, workers, rounds, stream)
        step, arith, mem = r["step"], r["arith"], r["mem"]
        hidden = (arith + mem - step) / min(arith, mem)
        print(f"| {preset} | {step * 1e3:.2f} ms ({r['flops'] / step / 1e9:.0f} GFLOP/s) "
              f"| {arith * 1e3:.2f} ms ({r['flops'] / arith / 1e9:.0f} GFLOP/s; "
              f"S {r['small']}) | {mem * 1e3:.2f} ms ({r['bytes'] / 1e6:.1f} MB at "
              f"{r['bytes'] / mem / 1e9:.1f} GB/s) | {(arith + mem) * 1e3:.2f} / "
              f"{max(arith, mem) * 1e3:.2f} ms | {hidden:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
