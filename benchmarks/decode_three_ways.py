"""One GQA 32k decode step (numba, 2 workers) timed three ways in one process.

    python -m benchmarks.decode_three_ways [ROUNDS]

The asv suite measures this step in ``TimeDecode.time_decode`` (right after setup's warm
step), in ``Bandwidth`` (after a 1 GiB read pass) and ``kernelrace run`` (steps back to
back); on one machine the three disagreed (issue 12). Here the step after a step and
the step after a read pass are paired round by round, and a fresh case from the same
source is timed after its own warm step, so a difference from the cache's residency
in the last-level cache, or from a freshly built case, shows up as a ratio.
"""

from __future__ import annotations

import statistics
import sys
import time

from kernels import attention
from kernels.harness.machine import ReadStream

CONTEXT = 32768


def _timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def main(rounds: int = 15) -> None:
    source = attention.make_cache(attention.PRESETS["gqa"], capacity=CONTEXT, batch=1)
    attention.fill_random(source, CONTEXT, seed=0)
    kwargs = {"strategy": "numba", "inner": None, "workers": 2, "preset": "gqa"}
    case = attention.make_case(CONTEXT, source=source, **kwargs)
    case.run()
    stream = ReadStream(workers=2)
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


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
