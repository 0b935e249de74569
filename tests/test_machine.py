"""kernelrace machine: the measuring functions, bad input, and the JSON it writes.

Sizes are small (a few MiB): these check that the figures are real numbers measured
the stated way, not what the machine reaches; `kernelrace machine` does that.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest

from kernels.executors import cpu_count
from kernels.harness import machine, probes
from kernels.harness.cli import main as cli_main

MiB = 1 << 20


def test_bandwidth_functions_return_gbps():
    for fn in (machine.measure_read_bandwidth, machine.measure_copy_bandwidth,
               machine.measure_triad_bandwidth):
        gbps = fn(4 * MiB, 1, repeats=2)
        assert math.isfinite(gbps) and 0.1 < gbps < 10_000, (fn.__name__, gbps)


def test_bandwidth_samples_per_kind_and_workers():
    samples = machine.measure_bandwidth(2 * MiB, [1, cpu_count()], repeats=2)
    assert set(samples) == {"read", "copy", "triad"}
    for per in samples.values():
        assert set(per) == {1, cpu_count()}
        assert all(len(v) == 2 and min(v) > 0 for v in per.values())


def test_read_stream_times_one_pass_of_its_array():
    stream = machine.ReadStream(4 * MiB, workers=cpu_count())
    assert stream.nbytes == 4 * MiB and stream.array.nbytes == stream.nbytes
    gbps = stream.gbps()
    assert math.isfinite(gbps) and 0.1 < gbps < 10_000


def test_matmul_gflops():
    (g,) = machine.measure_matmul_gflops(128, 1, repeats=1)
    assert 0.01 < g < 100_000


def test_matmul_stream_times_one_blas_matmul_and_computes_it():
    import numpy as np

    stream = machine.MatmulStream(96, workers=cpu_count())
    assert stream.flops == 2 * 96**3 and stream.settle_s > 0
    g = stream.gflops(1)
    assert math.isfinite(g) and 0.01 < g < 100_000
    np.testing.assert_allclose(stream.out, stream.a.astype(np.float64) @ stream.b,
                               rtol=1e-4, atol=1e-3)


def test_fma_probe_returns_a_positive_rate_per_run():
    samples = machine.measure_fma_gflops("float64", 1, repeats=2, seconds=0.01)
    assert len(samples) == 2 and all(math.isfinite(g) and 0.01 < g < 100_000 for g in samples)
    # Two threads each run the same loop: their rate is counted over both.
    (two,) = machine.measure_fma_gflops("float32", 2, repeats=1, seconds=0.01)
    assert math.isfinite(two) and two > 0.01


def test_fma_loop_keeps_its_accumulators_in_vector_registers():
    # Loads and stores in the hot loop capped an earlier attempt at a third of the
    # matmul rate: the FMAs must be vector FMAs, the chain unrolled (8 deep x 12 chains).
    import platform

    asm = machine.fma_asm("float32")
    if platform.machine().lower() not in ("x86_64", "amd64") or "vfmadd" not in asm:
        pytest.skip("no x86 FMA on this machine")
    assert machine.fma_register(asm) in ("ymm", "zmm")
    vector_fmas = [line for line in asm.splitlines()
                   if "vfmadd" in line and ("ymm" in line or "zmm" in line)]
    assert len(vector_fmas) >= probes.FMA_DEPTH * probes.FMA_CHAINS
    assert machine.fma_register("vfmadd231ps %zmm1, %zmm2, %zmm3\n") == "zmm"
    assert machine.fma_register("vmulpd %ymm1, %ymm2, %ymm3") is None


def test_fma_figures_are_read_back_per_dtype_workers_and_width():
    doc = {"matmul": {"gflops": {"1": 100.0, "2": 190.0}},
           "fma": {"gflops": {"float32": {"1": 160.0, "2": 300.0}, "float64": {"1": 80.0}},
                   "register": {"float32": "zmm", "float64": "zmm"},
                   "numba_default": {"gflops": {"float32": {"1": 90.0, "2": 170.0}},
                                     "register": {"float32": "ymm", "float64": "ymm"}}}}
    assert machine.fma_gflops(doc, "float32", 2) == 300.0
    assert machine.fma_gflops(doc, "float32") == 300.0  # all measured cores
    assert machine.fma_gflops(doc, "float64", 2) == 80.0  # nearest count below
    assert machine.fma_gflops(doc, "float32", 1, width="numba") == 90.0
    lines = machine.fma_summary(doc)
    assert "160 GFLOP/s on 1 thread, 1.60x matmul" in lines[0]
    assert "numba's default code here uses ymm" in lines[2]
    # Files written before the probe existed still load and read as "not measured".
    old = {"bandwidth_gbps": {}, "matmul": doc["matmul"]}
    assert machine.fma_gflops(old) is None and machine.fma_summary(old) == []
    with pytest.raises(ValueError, match="width must be"):
        machine.fma_gflops(doc, width="wide")


@pytest.mark.parametrize("call, message", [
    (lambda: machine.measure_read_bandwidth(0, 1), "nbytes must be"),
    (lambda: machine.measure_read_bandwidth(1024, 0), "workers must be >= 1"),
    (lambda: machine.measure_matmul_gflops(0, 1), "n must be"),
    (lambda: machine.ReadStream(0), "nbytes must be"),
    (lambda: machine.measure_fma_gflops("float16"), "dtype must be one of"),
    (lambda: machine.measure_fma_gflops("float32", 0), "workers must be >= 1"),
    (lambda: machine.measure_fma_gflops("float32", 1, seconds=0), "seconds must be in"),
    (lambda: machine.ReadStream(1024, workers=0), "workers must be >= 1"),
    (lambda: machine.MatmulStream(0), "n must be"),
    (lambda: machine.MatmulStream(8, workers=0), "workers must be >= 1"),
])
def test_bad_input_is_refused_before_work(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cache_info_and_sizes():
    caches = machine.cache_info()
    assert caches, "no cache information from /sys or lscpu"
    assert all(c["size_bytes"] and c["size_bytes"] > 0 for c in caches)
    assert machine.last_level_cache_bytes(caches) == max(
        c["size_bytes"] for c in caches if c["type"] != "Instruction")
    assert machine._parse_size("48K") == 48 * 1024
    assert machine._parse_size("260 MiB") == 260 * MiB


def test_command_writes_json_atomically(tmp_path, capsys):
    out = tmp_path / "sub" / "machine.json"
    code = cli_main(["machine", "--out", str(out), "--array-bytes", "4M", "--repeats", "1",
                     "--quick"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "read" in printed and "GB/s" in printed and f"wrote {out}" in printed
    doc = machine.load_machine(out)
    cores = str(cpu_count())
    assert set(doc["bandwidth_gbps"]) == {"read", "copy", "triad"}
    assert set(doc["bandwidth_gbps"]["read"]) == {"1", cores}
    assert doc["bandwidth"]["array_bytes"] == 4 * MiB
    assert doc["cpu"]["affinity_cpus"] == cpu_count()
    assert doc["numba"]["threading_layer"]
    from kernels import simd

    assert doc["numba"]["simd_lanes"] == simd.LANES
    want = {"vnni": "integers (AVX-512 VNNI)", "": "float tiles"}.get(
        simd.INT_MADD, "integers (AVX2 vpmaddwd)" if simd.LANES == 8
        else "integers (AVX-512BW vpmaddwd)")
    scores = want if simd.INT_MADD != "vnni" else \
        f"integers (AVX-512 VNNI, {'int8' if simd.QUERY_BYTES else 'int16'} query)"
    assert doc["numba"]["int8_scores"] == scores
    assert doc["numba"]["int8_values"] == want
    together = f"int8 scores and values in {want}"
    apart = f"int8 scores in {scores}, values in {want}"
    assert (together if scores == want else apart) in printed
    bf16 = "products (AVX-512 BF16)" if simd.BF16_DOT else "float tiles"
    assert doc["numba"]["bf16_products"] == bf16 and f"bfloat16 in {bf16}" in printed
    assert "primesieve_python" in doc["anchors"] and "torch" in doc["anchors"]
    assert doc["matmul"]["gflops"]["1"] > 0
    # The FMA probe round-trips through the file beside the matmul figure.
    fma = doc["fma"]
    for dtype in ("float32", "float64"):
        assert set(fma["gflops"][dtype]) == {"1", cores}
        assert machine.fma_gflops(doc, dtype, 1) == fma["gflops"][dtype]["1"] > 0
        assert machine.fma_gflops(doc, dtype, 1, width="numba") > 0
        assert len(fma["samples_gflops"][dtype]["1"]) == 1
    assert "fma" in printed and "x matmul" in printed
    assert doc["quick"] is True and doc["command"].startswith("kernelrace machine")
    assert len(doc["load_average"]["before"]) == 3
    assert 0 <= doc["other_cpu_share"] <= 1
    assert [p.name for p in out.parent.iterdir()] == ["machine.json"]  # no temp left over
    # The report reads figures back per worker count, falling back to the nearest below.
    assert machine.bandwidth_gbps(doc, "read", 1) == doc["bandwidth_gbps"]["read"]["1"]
    assert machine.bandwidth_gbps(doc, "read", 64) == doc["bandwidth_gbps"]["read"][cores]


def test_load_machine_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "machine.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=str(bad)):
        machine.load_machine(bad)
    bad.write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a kernelrace machine file"):
        machine.load_machine(bad)


def test_busy_machine_is_flagged():
    doc = {"cpu": {"affinity_cpus": 2}, "load_average": {"before": [0.1, 0, 0],
                                                         "after": [0.2, 0, 0]}}
    assert machine.busy_note(doc) is None
    doc["load_average"]["after"] = [5.0, 4.0, 3.0]
    assert "load average up to 5.0 on 2 cores" in machine.busy_note(doc)
    assert machine.busy_note({"cpu": {}}) is None  # older files without the field
    # Where the file says how much CPU other processes took, that decides, not the load.
    doc["other_cpu_share"] = 0.02
    assert machine.busy_note(doc) is None
    doc["other_cpu_share"] = 0.35
    assert "other processes used 35% of the CPU time" in machine.busy_note(doc)


def _other_cpu_shares() -> tuple[float | None, float | None, float | None]:
    """(idle, own, child): the share other processes used while this one slept, spun,
    and waited on a spinning child, each over about half a second."""

    def spin() -> None:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            pass

    idle = machine._OtherCpu()
    time.sleep(0.5)
    idle_share = idle.share()
    quiet = machine._OtherCpu()
    spin()  # this process busy: not counted
    own = quiet.share()
    busy = machine._OtherCpu()
    subprocess.run([sys.executable, "-c", "import time\nt = time.monotonic() + 0.5\n"
                    "while time.monotonic() < t: pass"], check=True)
    return idle_share, own, busy.share()


def test_other_cpu_share_sees_a_busy_child_and_not_this_process():
    # Other work on a shared machine moves all three figures; each attempt compares them
    # with the idle share measured just before, and one clean attempt of three suffices.
    # Counting this process, or missing the child, fails every attempt.
    cores = os.cpu_count() or 1
    for _ in range(3):
        idle, own, other = _other_cpu_shares()
        if own is None:
            pytest.skip("no /proc/stat here")
        # The child kept one CPU busy for most of its life (start-up included).
        if own < idle + 0.3 / cores + 0.1 and other > idle + 0.5 / cores:
            break
    assert own < idle + 0.3 / cores + 0.1
    assert other > idle + 0.5 / cores


# ---------------------------------------------------------------------------
# The one timing loop (kernels/harness/timing.py): runner, probes, paired ratios
# ---------------------------------------------------------------------------


class _Clock:
    """A fake perf_counter: each call of a timed function moves it by that function's
    cost, so seconds per call are exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now

    def call(self, name: str, cost: float):
        def fn() -> str:
            self.log.append(name)
            self.now += cost
            return name
        return fn


def test_time_calls_warms_up_untimed_then_times_each_call(monkeypatch):
    from kernels.harness import timing

    clock = _Clock()
    monkeypatch.setattr(timing, "perf_counter", clock)
    result, times = timing.time_calls(clock.call("f", 2.0), repeat=3, warmup=2)
    assert result == "f" and clock.log == ["f"] * 5 and times == [2.0, 2.0, 2.0]
    assert timing.time_once(lambda x: x * 2, 21) == (42, 0.0)


def test_alternate_times_callables_in_turn_with_shared_clock_reads(monkeypatch):
    from kernels.harness import timing

    clock = _Clock()
    monkeypatch.setattr(timing, "perf_counter", clock)
    fns = [clock.call("a", 3.0), clock.call("b", 1.0), clock.call("c", 0.5)]
    times = timing.alternate(fns, rounds=2, warmup=1)
    assert clock.log == ["a", "b", "c"] * 3
    assert times == [[3.0, 3.0], [1.0, 1.0], [0.5, 0.5]]
    with pytest.raises(ValueError, match="at least one callable"):
        timing.alternate([], rounds=1)


def test_alternate_measures_real_sleeps():
    from kernels.harness import timing

    slow, fast = timing.alternate([lambda: time.sleep(0.02), lambda: time.sleep(0.005)], 3)
    assert len(slow) == len(fast) == 3
    assert all(s >= 0.02 and f >= 0.005 for s, f in zip(slow, fast, strict=True))


def test_runner_and_probes_time_through_the_one_loop(monkeypatch):
    from kernels.harness import probes, runner, timing

    clock = _Clock()
    monkeypatch.setattr(timing, "perf_counter", clock)
    assert runner.time_call(clock.call("run", 0.25), repeat=2, warmup=1) == ("run", [0.25, 0.25])
    median, times = probes._median_seconds(clock.call("probe", 0.5), repeats=3)
    assert (median, times) == (0.5, [0.5, 0.5, 0.5]) and clock.log.count("probe") == 4
