"""One GQA 32k decode step (numba, 2 workers) timed three ways in one process.

    python -m benchmarks.decode_three_ways [ROUNDS]

The asv suite measures this step in ``TimeDecode.time_decode`` (right after setup's warm
step), in ``Bandwidth`` (after a 1 GiB read pass) and ``kernelrace run`` (steps back to
back); on one machine the three disagreed (issue 12). Here the step after a step and
the step after a read pass are paired round by round, and a fresh case from the same
source is timed after its own warm step, so a difference from the cache's residency
in the last-level cache, or from a freshly built case, shows up as a ratio.
"""

import statistics
import sys
import time

from kernels import attention
from kernels.harness.machine import ReadStream

T = 32768
src = attention.make_cache(attention.PRESETS["gqa"], capacity=T, batch=1)
attention.fill_random(src, T, seed=0)
case = attention.make_case(T, strategy="numba", inner=None, workers=2, preset="gqa", source=src)
case.run()
stream = ReadStream(workers=2)
nbytes = case.fields["cache_bytes"]
def step():
    t0 = time.perf_counter(); case.run(); return time.perf_counter() - t0
warm, cold = [], []
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 15):
    stream.gbps()
    cold.append(step())
    warm.append(step())
fresh = []
for r in range(5):
    c2 = attention.make_case(T, strategy="numba", inner=None, workers=2, preset="gqa", source=src)
    c2.run()
    t0 = time.perf_counter(); c2.run(); fresh.append(time.perf_counter() - t0)
    c2.close()
ratio = [c / w for c, w in zip(cold, warm)]
print(f"cache bytes {nbytes/1e6:.0f} MB")
print(f"after a step: median {1e3*statistics.median(warm):.2f} ms = {nbytes/statistics.median(warm)/1e9:.1f} GB/s")
print(f"after a 1 GiB read: median {1e3*statistics.median(cold):.2f} ms = {nbytes/statistics.median(cold)/1e9:.1f} GB/s")
print(f"paired cold/warm: median {statistics.median(ratio):.3f}, range {min(ratio):.3f}-{max(ratio):.3f}")
print(f"fresh case, second step: median {1e3*statistics.median(fresh):.2f} ms")
print(f"read pass: {stream.gbps():.1f} GB/s")
