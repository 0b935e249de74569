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
from kernels.harness import machine
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


@pytest.mark.parametrize("call, message", [
    (lambda: machine.measure_read_bandwidth(0, 1), "nbytes must be"),
    (lambda: machine.measure_read_bandwidth(1024, 0), "workers must be >= 1"),
    (lambda: machine.measure_matmul_gflops(0, 1), "n must be"),
    (lambda: machine.ReadStream(0), "nbytes must be"),
    (lambda: machine.ReadStream(1024, workers=0), "workers must be >= 1"),
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
    assert "primesieve_python" in doc["anchors"] and "torch" in doc["anchors"]
    assert doc["matmul"]["gflops"]["1"] > 0
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
