"""kernelrace report: on real asv results made by a tiny project, and on hand-made result
files in asv 0.6's format (checked against asv's own loader) for the sieve's anchor and
the attention kernel's bandwidth and KV-bytes figures.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_compare import MACHINE, tiny_asv_results

from kernels.harness import asvresults, report
from kernels.harness.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return tiny_asv_results(tmp_path_factory)


def _machine_json(path: Path, read_gbps: dict[str, float] | None = None,
                  fma: dict[str, Any] | None = None) -> Path:
    """A calibration; without ``fma``, one written before the FMA probe existed."""
    read = read_gbps or {"1": 10.0, "2": 18.0}
    doc = {
        "schema": 1, "created": "2026-01-01T00:00:00+00:00", "command": "kernelrace machine",
        "cpu": {"model": "Test CPU", "affinity_cpus": 2, "llc_bytes": 1 << 28},
        "numpy": {"version": "2.x", "blas": [{"user_api": "blas", "internal_api": "openblas",
                                              "version": "0.3", "num_threads": 2}]},
        "numba": {"version": "0.68", "threading_layer": "omp", "num_threads": 2},
        "anchors": {"primesieve_python": None, "primesieve_cli": None, "torch": None},
        "bandwidth": {"array_bytes": 1 << 30, "repeats": 5},
        "bandwidth_gbps": {"read": read, "copy": read, "triad": read},
        "matmul": {"n": 2048, "gflops": {"1": 100.0, "2": 190.0}},
    }
    if fma is not None:
        doc["fma"] = fma
    path.write_text(json.dumps(doc))
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# On real asv results
# ---------------------------------------------------------------------------


def test_report_from_real_asv_results(project, tmp_path, capsys):
    results = Path(project["results"])
    before = _digest(results)
    machine = _machine_json(tmp_path / "machine.json")
    out = tmp_path / "out"
    code = cli_main(["report", "--results", str(results), "--machine", str(machine),
                     "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    text = (out / "report.md").read_text()
    # The latest run (the slower head commit) is the one reported.
    assert f"commit `{project['head'][:12]}`" in text
    assert "## tiny" in text and "bench_tiny.TimeTiny.time_work" in text
    assert "speedup vs numpy@1" in text and "parallel eff." in text
    assert "kernelrace report --results" in text  # the command that reproduces it
    assert "Test CPU" in text
    assert "numba 0.68, threading layer omp\n" in text  # a calibration without the kernels' fields
    doc = json.loads(machine.read_text())
    doc["numba"].update(simd_lanes=16, int8_scores="integers (AVX-512 VNNI)")
    machine.write_text(json.dumps(doc))
    assert cli_main(["report", "--results", str(results), "--machine", str(machine),
                     "--out", str(tmp_path / "out2")]) == 0
    assert ("numba 0.68, threading layer omp; kernels in 16-lane float32 vectors, int8 keys "
            "scored in integers (AVX-512 VNNI)") in (tmp_path / "out2" / "report.md").read_text()
    doc["numba"].update(int8_values="integers (AVX-512 VNNI)")  # this version's calibration
    machine.write_text(json.dumps(doc))
    assert cli_main(["report", "--results", str(results), "--machine", str(machine),
                     "--out", str(tmp_path / "out3")]) == 0
    assert ("kernels in 16-lane float32 vectors, int8 scores and values in integers "
            "(AVX-512 VNNI)") in (tmp_path / "out3" / "report.md").read_text()
    doc["numba"].update(bf16_products="products (AVX-512 BF16)")
    machine.write_text(json.dumps(doc))
    assert cli_main(["report", "--results", str(results), "--machine", str(machine),
                     "--out", str(tmp_path / "out4")]) == 0
    assert ("int8 scores and values in integers (AVX-512 VNNI), bfloat16 in products "
            "(AVX-512 BF16)") in (tmp_path / "out4" / "report.md").read_text()
    # The track with params (size,) is joined to the time benchmark by name:
    # 4e6 bytes in numba's 4-unit time -> a GB/s column and a share of read bandwidth.
    assert "GB/s" in text and "of read bw" in text
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["tiny_scaling.png", "tiny_speedup.png", "tiny_time_vs_size.png"]
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == PNG_MAGIC
        assert f"(plots/{p.name})" in text
    assert not list(out.rglob("*.tmp"))
    assert _digest(results) == before  # the report never rewrites asv results


def test_report_rows_match_the_result_file(project):
    results = Path(project["results"])
    files = asvresults.find_results(results, commit=project["base"])
    (bench,) = [b for b in asvresults.merge(files).values() if b.name.endswith("time_work")]
    table = report.build_table("tiny", bench, [])
    assert table.size_name == "size" and table.has_workers
    assert sorted(table.strategies) == ["numba", "numpy"]
    look = table.lookup()
    d = report.derive(table, None)
    slow, fast = look[("numpy", 4, 1, ())], look[("numba", 4, 1, ())]
    # numba sleeps half as long as numpy by construction.
    assert 1.6 < d[id(fast)].speedup < 2.4
    assert d[id(slow)].speedup == pytest.approx(1.0)
    two = look[("numba", 4, 2, ())]
    assert 0.8 < d[id(two)].efficiency < 1.1


def test_commit_option_and_missing_machine_is_noted(project, tmp_path, capsys, monkeypatch):
    # The default --machine is results/machine.json under the working directory; the
    # repository has one (the reference run), so run where there is none.
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code = cli_main(["report", "--results", str(project["results"]), "--out", str(out),
                     "--commit", project["base"][:10]])
    assert code == 0, capsys.readouterr().err
    text = (out / "report.md").read_text()
    assert f"commit `{project['base'][:12]}`" in text
    assert "not calibrated" in text and MACHINE in text


# ---------------------------------------------------------------------------
# Errors name the file
# ---------------------------------------------------------------------------


def test_missing_results_folder(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert cli_main(["report", "--results", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err
    assert not (tmp_path / "report.md").exists()


def test_corrupt_result_file_is_named_and_left_alone(project, tmp_path, capsys):
    results = tmp_path / "asv"
    shutil.copytree(project["results"], results)
    victim = next((results / MACHINE).glob(f"{project['base'][:8]}-*.json"))
    victim.write_text('{"commit_hash": "abc", "results": {')
    before = victim.read_bytes()
    out = tmp_path / "out"
    assert cli_main(["report", "--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "corrupt JSON" in err
    assert victim.read_bytes() == before
    assert not (out / "report.md").exists()


def test_corrupt_benchmarks_json_and_machine_json(project, tmp_path, capsys):
    results = tmp_path / "asv"
    shutil.copytree(project["results"], results)
    machine = tmp_path / "machine.json"
    machine.write_text("{not json")
    assert cli_main(["report", "--results", str(results), "--machine", str(machine),
                     "--out", str(tmp_path / "o")]) == 2
    assert str(machine) in capsys.readouterr().err
    assert cli_main(["report", "--results", str(results), "--machine",
                     str(tmp_path / "absent.json"), "--out", str(tmp_path / "o")]) == 2
    assert "absent.json" in capsys.readouterr().err
    (results / "benchmarks.json").write_text("[1, 2")
    assert cli_main(["report", "--results", str(results), "--out", str(tmp_path / "o")]) == 2
    assert str(results / "benchmarks.json") in capsys.readouterr().err


def test_result_file_not_from_asv(tmp_path, capsys):
    results = tmp_path / "asv"
    (results / "m").mkdir(parents=True)
    bad = results / "m" / "abcdef12-env.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert cli_main(["report", "--results", str(results), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not an asv result file" in err


def test_out_inside_asv_results_is_refused(project, capsys):
    results = Path(project["results"])
    assert cli_main(["report", "--results", str(results), "--out", str(results / "x")]) == 2
    assert "never writes there" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Hand-made results in asv's format: the kernel-specific figures
# ---------------------------------------------------------------------------


def write_asv_results(results: Path, benches: dict[str, dict[str, Any]], *,
                      machine: str = "m1", commit: str = "c0ffee00" * 5) -> Path:
    """Write benchmarks.json and one result file in asv 0.6's layout.

    ``benches``: name -> {"param_names", "params" (python values), "values" (a function of
    the params dict), "type", "unit"}; a track with ``"rounds": n`` is stored as asv
    stores one that returned its rounds (stats, 99% interval 0.9x - 1.1x the value).
    """
    columns = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a",
               "stats_ci_99_b", "stats_q_25", "stats_q_75", "stats_number", "stats_repeat",
               "samples", "profile"]
    described, rows = {}, {}
    for name, b in benches.items():
        reprs = [[repr(v) for v in p] for p in b["params"]]
        values = [b["values"](dict(zip(b["param_names"], combo, strict=True)))
                  for combo in itertools.product(*b["params"])]
        described[name] = {"name": name, "param_names": b["param_names"], "params": reprs,
                           "type": b["type"], "unit": b["unit"], "version": "v1"}
        if b["type"] == "time" or b.get("rounds"):
            stats = [[v * 0.9 if v else None for v in values],
                     [v * 1.1 if v else None for v in values],
                     [v * 0.95 if v else None for v in values],
                     [v * 1.05 if v else None for v in values],
                     [1] * len(values), [b.get("rounds", 5)] * len(values)]
            rows[name] = [values, reprs, "v1", 1_700_000_000_000, 1.0, *stats]
        else:
            rows[name] = [values, reprs, "v1", 1_700_000_000_000, 1.0]
    described["version"] = 2
    results.mkdir(parents=True, exist_ok=True)
    (results / "benchmarks.json").write_text(json.dumps(described))
    (results / machine).mkdir(exist_ok=True)
    (results / machine / "machine.json").write_text(json.dumps(
        {"machine": machine, "cpu": "x", "num_cpu": "2", "os": "Linux", "ram": "1", "version": 1}))
    path = results / machine / f"{commit[:8]}-existing-py.json"
    path.write_text(json.dumps({
        "commit_hash": commit, "env_name": "existing-py", "date": 1_700_000_000_000,
        "params": {"machine": machine, "python": "3.11"}, "python": "3.11",
        "requirements": {}, "env_vars": {}, "result_columns": columns, "results": rows,
        "durations": {}, "version": 2,
    }))
    return path


def test_handmade_format_is_what_asv_reads(tmp_path):
    asv_results = pytest.importorskip("asv.results")
    path = write_asv_results(tmp_path / "asv", {
        "bench_x.T.time_f": {"param_names": ["strategy", "n"], "params": [["numpy"], [10, 20]],
                             "values": lambda p: p["n"] * 1e-3, "type": "time",
                             "unit": "seconds"}})
    loaded = asv_results.Results.load(str(path))
    assert loaded.get_result_value("bench_x.T.time_f", [["'numpy'"], ["10", "20"]]) == [
        0.01, 0.02]
    ours = asvresults.load_result_file(path)
    assert ours.benchmarks["bench_x.T.time_f"].values == (0.01, 0.02)


def _sieve_benches() -> dict[str, dict[str, Any]]:
    speed = {"python": 200.0, "numpy": 4.0, "numba": 2.0, "threaded:numba": 2.0,
             "primesieve": 0.5}
    return {"bench_sieve.TimeSieve.time_count": {
        "param_names": ["strategy", "n", "workers"],
        "params": [list(speed), [10**6, 10**8], [1, 2]],
        # python is skipped (NaN) at the large size, fails (None) at 2 workers
        "values": lambda p: (float("nan") if p["strategy"] == "python" and p["n"] > 10**6
                             else None if p["strategy"] == "python" and p["workers"] == 2
                             else speed[p["strategy"]] * p["n"] * 1e-9
                             / (p["workers"] if p["strategy"] != "numpy" else 1)),
        "type": "time", "unit": "seconds"}}


def test_paired_ratios_are_quoted_with_their_interval(tmp_path):
    """A paired track that stored its rounds (benchmarks.common.rounds_result) appears
    under "Paired ratios" and in "Other measurements" with asv's 99% interval; a plain
    track has no interval and no paired row."""
    benches = _sieve_benches()
    benches["bench_sieve.Scaling.track_speedup_2_workers"] = {
        "param_names": ["strategy"], "params": [["numba", "threaded:numba"]],
        "values": lambda p: 1.8, "type": "track", "unit": "x", "rounds": 12}
    benches["bench_sieve.Plain.track_something"] = {
        "param_names": [], "params": [], "values": lambda p: 3.0, "type": "track",
        "unit": "x"}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    text, _ = report.build_report(results, _machine_json(tmp_path / "m.json"), tmp_path / "o")
    paired = text[text.index("## Paired ratios"):text.index("## Machine")]
    assert ("| sieve | `track_speedup_2_workers` | strategy=numba | 1.8x | "
            "[1.62x, 1.98x] (12 rounds) |") in paired
    assert "track_something" not in paired
    other = text[text.index("### Other measurements"):]
    assert "| `track_something` |  | 3x | - |" in other
    assert "[1.62x, 1.98x] (12 rounds)" in other


def _cells(text: str, start: str, has: str) -> list[str]:
    row = next(x for x in text.splitlines() if x.startswith(start) and has in x)
    return [c.strip() for c in row.strip("|").split("|")]


def test_paired_figures_stand_in_for_the_ratios_of_medians_in_their_rows(tmp_path):
    """A paired track with rounds (PAIRED_RATIOS) puts its median and 99% interval in the
    row it belongs to, in the column's scale: a speed-up over numpy@1 as is, a 2-worker
    speed-up as an efficiency (half), a time over the anchor as a speed against it
    (inverse); its parameters are the time benchmark's, less the workers where the
    ratio names them. Rows without one keep the bare ratio of medians."""
    benches = _sieve_benches()
    benches["bench_sieve.VersusNumpy.track_speedup_over_numpy"] = {
        "param_names": ["strategy", "n", "workers"], "params": [["numba"], [10**8], [2]],
        "values": lambda p: 3.0, "type": "track", "unit": "x", "rounds": 12}
    benches["bench_sieve.Scaling.track_speedup_2_workers"] = {
        "param_names": ["strategy", "n"], "params": [["numba"], [10**8]],
        "values": lambda p: 1.6, "type": "track", "unit": "x", "rounds": 12}
    benches["bench_sieve.Anchor.track_time_over_primesieve"] = {
        "param_names": ["strategy", "n"], "params": [["numba"], [10**8]],
        "values": lambda p: 5.0, "type": "track", "unit": "x", "rounds": 12}
    # Without rounds, a bare value: no better than the table's own ratio.
    benches["bench_sieve.Other.track_speedup_over_numpy"] = {
        "param_names": ["strategy", "n", "workers"],
        "params": [["threaded:numba"], [10**8], [2]],
        "values": lambda p: 9.0, "type": "track", "unit": "x"}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    text, _ = report.build_report(results, tmp_path / "none.json", tmp_path / "out")
    # numba at 2 workers, 10^8: speed-up paired 3x [2.7, 3.3] (medians alone: 4x);
    # efficiency 1.6 / 2 = 80% [72, 88] (medians alone: 100%).
    two = _cells(text, "| numba |", "| 1e8 | 2 |")
    assert "3x [2.7, 3.3]" in two and "80% [72, 88]" in two
    # numba at 1 worker: 1 / 5 of primesieve's speed, interval [1/5.5, 1/4.5].
    one = _cells(text, "| numba |", "| 1e8 | 1 |")
    assert "0.2x [0.182, 0.222]" in one and "2x" in one  # speed-up unpaired: bare
    threaded = _cells(text, "| threaded:numba |", "| 1e8 | 2 |")
    assert "4x" in threaded and not any("[" in c for c in threaded)
    assert "| sieve | time_count | 1e8 | 2 | primesieve |" in text  # headline: unpaired
    # Figures read in the rows are not listed again; the page says where they are.
    assert ("In the rows above, with their intervals: `Anchor.track_time_over_primesieve`, "
            "`Scaling.track_speedup_2_workers`, `VersusNumpy.track_speedup_over_numpy`."
            ) in text
    assert "## Paired ratios" not in text
    other = text[text.index("### Other measurements"):]
    assert "`track_speedup_over_numpy`" in other  # the bare one (no rounds) joined nothing
    assert "track_speedup_2_workers" not in other and "track_time_over" not in other


def test_paired_share_of_read_bw_sets_the_row_and_its_roofline(tmp_path):
    """``track_share_of_read_bw`` (percent) stands in for *of read bw* in the time
    benchmark's row with the same parameters."""
    benches = _attention_benches()
    benches["bench_attention.ShareOfReadBw.track_share_of_read_bw"] = {
        "param_names": ["strategy", "preset", "context", "workers"],
        "params": [["numba"], ["gqa"], [8192], [2]],
        "values": lambda p: 40.0, "type": "track", "unit": "%", "rounds": 12}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    machine = _machine_json(tmp_path / "machine.json", {"1": 20.0, "2": 32.0})
    text, _ = report.build_report(results, machine, tmp_path / "out")
    assert "40% [36, 44]" in _cells(text, "| numba | gqa |", "| 8,192 | 2 |")
    assert "50%" in _cells(text, "| numba | gqa |", "| 1,024 | 2 |")  # unpaired row


def test_speed_vs_an_anchor_that_never_shared_a_process_is_the_quotient_of_paired_speedups(
        tmp_path):
    """Attention's torch races beside numpy only: a row's *speed vs torch* is its paired
    speed-up over numpy@1 over torch's at the same workers, with the widest interval the
    two allow; numpy's own row on 1 worker is 1 over torch's speed-up; rows without both
    keep the ratio of medians. A share of read bandwidth without a read pass in the
    row's race is its paired speed-up times numpy's paired share at its workers, over
    numpy's paired 2-over-1 speed-up at 2 workers."""
    speed = {"numpy": 4.0, "numba": 1.0, "torch": 2.0}
    benches = {"bench_attention.TimeDecode.time_decode": {
        "param_names": ["preset", "context", "strategy", "workers"],
        "params": [["gqa"], [8192], list(speed), [1, 2]],
        "values": lambda p: speed[p["strategy"]] * 1e-3 / p["workers"],
        "type": "time", "unit": "seconds"}}
    paired = {("numba", 2): 4.0, ("torch", 2): 2.0, ("torch", 1): 1.25}
    benches["bench_attention.VersusNumpy.track_speedup_over_numpy"] = {
        "param_names": ["preset", "context", "strategy", "workers"],
        "params": [["gqa"], [8192], ["numba", "torch"], [1, 2]],
        "values": lambda p: paired.get((p["strategy"], p["workers"]), float("nan")),
        "type": "track", "unit": "x", "rounds": 12}
    # No read pass in torch's race: its share at 2 workers is its speed-up times numpy@2's
    # share (against the 2-thread read) over numpy's own 2-over-1 speed-up.
    benches["bench_attention.ShareOfReadBw.track_share_of_read_bw"] = {
        "param_names": ["preset", "context", "strategy", "workers"],
        "params": [["gqa"], [8192], ["numpy"], [1, 2]],
        "values": lambda p: 50.0 if p["workers"] == 1 else 40.0, "type": "track",
        "unit": "%", "rounds": 12}
    benches["bench_attention.Scaling.track_speedup_2_workers"] = {
        "param_names": ["preset", "context", "strategy"],
        "params": [["gqa"], [8192], ["numpy"]],
        "values": lambda p: 1.6, "type": "track", "unit": "x", "rounds": 12}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    text, _ = report.build_report(results, tmp_path / "none.json", tmp_path / "out")
    # numba@2: 4 [3.6, 4.4] over torch's 2 [1.8, 2.2] = 2x [3.6/2.2, 4.4/1.8].
    assert "2x [1.64, 2.44]" in _cells(text, "| numba |", "| 8,192 | 2 |")
    # torch@2's share: 2 [1.8, 2.2] x 40% [36, 44] / 1.6 [1.44, 1.76] = 50% [37, 67];
    # torch@1's: 1.25 [1.125, 1.375] x 50% [45, 55] = 62% [51, 76].
    assert "50% [37, 67]" in _cells(text, "| torch |", "| 8,192 | 2 |")
    assert "62% [51, 76]" in _cells(text, "| torch |", "| 8,192 | 1 |")
    # numpy@1: 1 / 1.25 [1.125, 1.375].
    assert "0.8x [0.727, 0.889]" in _cells(text, "| numpy |", "| 8,192 | 1 |")
    # numba@1 has no paired speed-up: its ratio of medians (torch 2 ms / numba 1 ms).
    one = _cells(text, "| numba |", "| 8,192 | 1 |")
    assert "2x" in one and not any("[" in c for c in one)
    torch = _cells(text, "| torch |", "| 8,192 | 2 |")
    assert "1x" in torch  # the anchor's own row stays 1x, bare


def test_the_headline_names_the_fastest_by_the_paired_speedup_over_the_baseline(tmp_path):
    """Each strategy's paired speed-up is timed against numpy@1 in its own process, so a
    process that ran slow for its life cancels out; the medians come from processes of
    their own. The headline ranks by the speed-up column (paired where raced) and falls
    back to the medians only where a row has none."""
    benches = _sieve_benches()
    speedups = {("numba", 1): 1.5, ("numba", 2): 3.0, ("threaded:numba", 1): 1.2,
                ("threaded:numba", 2): 2.0, ("primesieve", 1): 1.8, ("primesieve", 2): 2.5}
    benches["bench_sieve.VersusNumpy.track_speedup_over_numpy"] = {
        "param_names": ["strategy", "n", "workers"],
        "params": [["numba", "threaded:numba", "primesieve"], [10**8], [1, 2]],
        "values": lambda p: speedups[(p["strategy"], p["workers"])], "type": "track",
        "unit": "x", "rounds": 12}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    text, _ = report.build_report(results, tmp_path / "none.json", tmp_path / "out")
    # By the medians, primesieve at 2 workers is the fastest (25 ms against numba's 100);
    # paired, numba is 3x [2.7, 3.3] against primesieve's 2.5x.
    headline = text[text.index("## Headline"):text.index("## ", text.index("## Headline") + 3)]
    assert "| sieve | time_count | 1e8 | 2 | numba |" in headline
    assert "3x [2.7, 3.3]" in headline and "primesieve" not in headline.split("|---")[-1]


def test_sieve_anchor_column_and_skips(tmp_path):
    results = tmp_path / "asv"
    write_asv_results(results, _sieve_benches())
    text, plots = report.build_report(results, tmp_path / "none.json", tmp_path / "out")
    assert "speed vs primesieve" in text
    row = next(x for x in text.splitlines()
               if x.startswith("| numba |") and "| 1e8 | 1 |" in x)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # numba 2 ns/n against primesieve 0.5 ns/n: a quarter of primesieve's speed;
    # numpy 4 ns/n: numba is 2x numpy.
    assert "0.25x" in cells and "2x" in cells
    assert "2 combination(s) skipped" in text
    assert "Failed: bench_sieve.TimeSieve.time_count('python', 1000000, 2)" in text
    assert "## Headline" in text and "| sieve | time_count | 1e8 | 2 | primesieve |" in text
    names = {p.name for p in plots}
    assert {"sieve_time_vs_size.png", "sieve_speedup.png", "sieve_scaling.png"} <= names


def _attention_benches() -> dict[str, dict[str, Any]]:
    per_token = {"mha": 16384, "gqa": 4096, "mla": 1152}
    presets = list(per_token)
    bw = {1: 10e9, 2: 16e9}  # what the fake kernel reaches, bytes/s

    def kv_bytes(p: dict[str, Any]) -> float:
        return per_token[p["preset"]] * p["context"]

    return {
        "bench_attention.Decode.time_decode": {
            "param_names": ["strategy", "preset", "context", "workers"],
            "params": [["numpy", "numba"], presets, [1024, 8192], [1, 2]],
            "values": lambda p: kv_bytes(p) / bw[p["workers"]] * (
                2.0 if p["strategy"] == "numpy" else 1.0),
            "type": "time", "unit": "seconds"},
        "bench_attention.Decode.track_kv_bytes": {
            "param_names": ["preset", "context"], "params": [presets, [1024, 8192]],
            "values": kv_bytes, "type": "track", "unit": "bytes"},
        "bench_attention.Decode.track_kv_bytes_per_token": {
            "param_names": ["preset"], "params": [presets],
            "values": lambda p: per_token[p["preset"]], "type": "track",
            "unit": "bytes/token"},
    }


def test_attention_bandwidth_fraction_and_plots(tmp_path):
    results = tmp_path / "asv"
    write_asv_results(results, _attention_benches())
    machine = _machine_json(tmp_path / "machine.json", {"1": 20.0, "2": 32.0})
    text, plots = report.build_report(results, machine, tmp_path / "out")
    row = next(x for x in text.splitlines()
               if x.startswith("| numba | gqa |") and "| 8,192 | 2 |" in x)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # numba reaches 16 GB/s on 2 workers; the machine's 2-thread read is 32 GB/s.
    assert "16" in cells and "50%" in cells
    names = {p.name for p in plots}
    assert {"attention_bandwidth.png", "attention_kv_bytes_per_token.png",
            "attention_time_vs_size.png"} <= names
    for p in plots:
        assert p.read_bytes()[:8] == PNG_MAGIC
    assert "track_kv_bytes_per_token" in text  # listed under other measurements


def test_one_quantity_measured_twice_is_checked_for_agreement(tmp_path):
    """A step's GB/s from time_decode (cache bytes / time, asv's 99% interval) against the
    rate track of the same point with its rounds: the report names the points whose two
    intervals do not overlap, and only those."""
    benches = _attention_benches()
    bw = {1: 10.0, 2: 16.0}  # what the time benchmark's fake kernel reaches, GB/s
    benches["bench_attention.Decode.track_gbps"] = {
        "param_names": ["strategy", "preset", "context", "workers"],
        "params": [["numba"], ["gqa"], [8192], [1, 2]],
        # agrees at 1 worker (10.5 within the intervals), half the figure at 2
        "values": lambda p: 10.5 if p["workers"] == 1 else 8.0,
        "type": "track", "unit": "GB/s", "rounds": 12}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    text, _ = report.build_report(results, tmp_path / "none.json", tmp_path / "out")
    assert "disagrees beyond both 99% intervals at 1 point(s)" in text
    line = next(x for x in text.splitlines() if x.startswith("- strategy=numba, preset=gqa"))
    assert "workers=2" in line and f"{bw[2]:.3g} GB/s" in line and "8 GB/s" in line
    assert "track_gbps" in line
    assert "1 point(s) of bench_attention.Decode.time_decode disagree" in text


def test_param_roles_are_found_by_name():
    roles = report.param_roles(["strategy", "samples", "workers", "seed"])
    assert roles == {"strategy": "strategy", "samples": "size", "workers": "workers",
                     "seed": "seed"}
    assert report.param_roles(["label", "context", "preset"])["context"] == "size"
    assert asvresults.kernel_of("bench_montecarlo.TimeEstimatePi.time_estimate_pi") == (
        "montecarlo")
    assert report.fmt_size(10**8) == "1e8" and report.fmt_size(4096) == "4,096"


@pytest.mark.parametrize("units", [("bytes/token", "ratio"), ("bytes", "bytes")],
                         ids=["declared", "stored-before-declared"])
def test_attention_suite_layout_per_token_track_with_dtype(tmp_path, units):
    """The layout of benchmarks/bench_attention.py: bytes per token in its own class with a
    dtype parameter, a ratio track that is not bytes, a GB/s track on fewer contexts;
    with the units the suite declares, and with those stored before (both "bytes")."""
    per_token_unit, ratio_unit = units
    per_token = {"mha": 16384, "gqa": 4096, "mla": 2304}
    presets = list(per_token)
    dtypes = {"float32": 1, "float64": 2}

    def seconds(p: dict[str, Any]) -> float:
        return per_token[p["preset"]] * p["context"] / (8e9 * p["workers"])

    benches = {
        "bench_attention.TimeDecode.time_decode": {
            "param_names": ["preset", "context", "strategy", "workers"],
            "params": [presets, [1024, 8192], ["numpy", "numba"], [1, 2]],
            "values": seconds, "type": "time", "unit": "seconds"},
        "bench_attention.Sizes.track_kv_bytes_per_token": {
            "param_names": ["preset", "dtype"], "params": [presets, list(dtypes)],
            "values": lambda p: per_token[p["preset"]] * dtypes[p["dtype"]],
            "type": "track", "unit": per_token_unit},
        "bench_attention.Sizes.track_kv_bytes_ratio_to_mha": {
            "param_names": ["preset", "dtype"], "params": [presets, list(dtypes)],
            "values": lambda p: per_token[p["preset"]] / per_token["mha"],
            "type": "track", "unit": ratio_unit},
        "bench_attention.Bandwidth.track_gbps": {
            "param_names": ["preset", "context", "strategy", "workers"],
            "params": [presets, [8192], ["numba"], [1, 2]],
            "values": lambda p: 123.0, "type": "track", "unit": "GB/s"},
    }
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    machine = _machine_json(tmp_path / "machine.json", {"1": 10.0, "2": 20.0})
    text, plots = report.build_report(results, machine, tmp_path / "out")
    row = next(x for x in text.splitlines()
               if x.startswith("| numba | mla |") and "| 1,024 | 2 |" in x)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # float32 bytes per token x context / time = 16 GB/s on 2 workers: 80% of 20 GB/s.
    assert "16" in cells and "80%" in cells
    names = {p.name for p in plots}
    assert {"attention_bandwidth.png", "attention_kv_bytes_per_token.png"} <= names


# ---------------------------------------------------------------------------
# Track kinds: declared by asv's unit, not guessed from names (issue 13)
# ---------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _track(name: str, unit: str) -> asvresults.BenchmarkResult:
    return asvresults.BenchmarkResult(name=name, param_names=(), params=(), values=(1.0,),
                                      stats=(None,), samples=(None,), version="v",
                                      type="track", unit=unit)


def test_a_track_kind_is_its_declared_unit_not_its_name():
    kinds = {unit: report.classify_track(_track("bench_k.T.track_anything", unit))
             for unit in ("bytes", "bytes/token", "weight bytes", "FLOP", "GB/s", "GFLOP/s",
                          "ratio", "x", "%", "seconds", "stderr", "unit")}
    assert kinds == {"bytes": "bytes", "bytes/token": "per_token",
                     "weight bytes": "weight_bytes", "FLOP": "flops", "GB/s": "gbps",
                     "GFLOP/s": "gflops", "ratio": None, "x": None, "%": None,
                     "seconds": None, "stderr": None, "unit": None}
    # Names say nothing: a "gbps" in percent, a "per_token" in bytes, a "ratio" in GB/s.
    assert report.classify_track(_track("bench_k.T.track_gbps", "%")) is None
    assert report.classify_track(_track("bench_k.T.track_kv_per_token", "bytes")) == "bytes"
    assert report.classify_track(_track("bench_k.T.track_ratio", "GB/s")) == "gbps"


def test_legacy_units_apply_only_to_the_units_those_results_were_stored_with():
    legacy = report.LEGACY_TRACK_UNITS
    kinds = {name.rsplit(".", 1)[1]: report.classify_track(_track(name, unit))
             for name, unit in legacy}
    assert kinds == {"track_kv_bytes_per_token": "per_token",
                     "track_kv_bytes_ratio_to_mha": None,
                     "track_weight_bytes": "weight_bytes"}
    for (name, unit), declared in legacy.items():
        assert report.declared_unit(_track(name, unit)) == declared
        # Stored since, with the declared unit, the one table decides alone.
        assert report.declared_unit(_track(name, declared)) == declared
        assert report.classify_track(_track(name, declared)) == report.TRACK_KINDS.get(declared)
    # Another benchmark stored in "bytes" is bytes one call reads, whatever its name.
    assert report.classify_track(_track("bench_k.T.track_kv_bytes_per_token", "bytes")) == (
        "bytes")


def test_the_suite_declares_the_kinds_the_report_joins():
    """asv_runner's discovery (what asv writes to benchmarks.json) gives every joined track
    of the suite its kind by unit alone, with no legacy entry."""
    discovery = pytest.importorskip("asv_runner.discovery")
    found = {b.name: b.unit for b in discovery.disc_benchmarks(str(REPO / "benchmarks"))
             if b.name.split(".")[-1].startswith("track_")}
    kinds = {name: report.TRACK_KINDS.get(unit) for name, unit in found.items()}
    assert not {(name, found[name]) for name in found} & set(report.LEGACY_TRACK_UNITS)
    expected = {
        "bench_attention.Sizes.track_kv_bytes_per_token": "per_token",
        "bench_attention.Sizes.track_kv_bytes_ratio_to_mha": None,
        "bench_attention.StepCost.track_weight_bytes": "weight_bytes",
        "bench_attention.StepCost.track_step_flops": "flops",
        "bench_attention.StepCostMLA.track_weight_bytes": "weight_bytes",
        "bench_attention.StepCostMLA.track_step_flops": "flops",
        "bench_attention.StepCostBatch8.track_weight_bytes": "weight_bytes",
        "bench_attention.StepCostBatch8.track_step_flops": "flops",
        "bench_attention.Bandwidth.track_gbps": "gbps",
        "bench_attention.Bandwidth.track_gflops": "gflops",
        "bench_attention.ShareOfReadBw.track_share_of_read_bw": None,
    }
    assert {n: kinds[n] for n in expected} == expected
    # Every other track is a figure of its own (speed-ups, seconds, errors), joined to none.
    assert {n: k for n, k in kinds.items() if n not in expected and k is not None} == {}


def test_the_stored_reference_results_keep_their_joins(tmp_path):
    """The reference runs' benchmarks.json was written before units were declared (the
    per-token track and the ratio to MHA both in "bytes"): read through the legacy table,
    the reference run's decode table still gets bytes per token and the GB/s track.

    A frozen copy of that file (tests/data/legacy_benchmarks.json) stands beside the
    committed reference runs: any asv run rewrites results/asv/benchmarks.json with
    today's units (``make bench``, and ``make asv-check`` before it restored the file)."""
    results = tmp_path / "asv"
    shutil.copytree(REPO / "results" / "asv" / "reference", results / "reference")
    shutil.copy(Path(__file__).parent / "data" / "legacy_benchmarks.json",
                results / "benchmarks.json")
    stored = asvresults.load_benchmarks(results)
    assert stored["bench_attention.Sizes.track_kv_bytes_per_token"]["unit"] == "bytes"
    (run,) = asvresults.find_results(results, commit="f94a8c2c")
    merged = list(run.benchmarks.values())
    tracks = [b for b in merged if b.type == "track"]
    kinds = {b.name.rsplit(".", 1)[1]: report.classify_track(b) for b in tracks
             if asvresults.kernel_of(b.name) == "attention"}
    assert kinds == {"track_gbps": "gbps", "track_share_of_read_bw": None,
                     "track_kv_bytes_per_token": "per_token",
                     "track_kv_bytes_ratio_to_mha": None}
    (decode,) = [b for b in merged if b.name.endswith("TimeDecode.time_decode")]
    table = report.build_table("attention", decode, tracks)
    assert set(table.tracks) == {"gbps", "per_token"}
    assert all(r.extra["per_token"] for r in table.rows)


# ---------------------------------------------------------------------------
# All or nothing (issue 16, item 7)
# ---------------------------------------------------------------------------


def _handmade(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """Hand-made sieve results and a report of them in out/; the argv that made it."""
    results = tmp_path / "asv"
    write_asv_results(results, _sieve_benches())
    out = tmp_path / "out"
    argv = ["report", "--results", str(results), "--machine",
            str(_machine_json(tmp_path / "machine.json")), "--out", str(out)]
    assert cli_main(argv) == 0
    assert (out / "report.md").exists() and list((out / "plots").glob("*.png"))
    return results, out, argv


def _no_leftovers(out: Path) -> None:
    assert not list(out.glob(".report-*")), list(out.iterdir())
    assert not list(out.rglob("*.tmp"))


def test_a_crash_after_the_plots_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    _, out, argv = _handmade(tmp_path)
    (out / "plots" / "notes.txt").write_text("mine")  # not the report's: carried over
    before = _digest(out)

    def crash() -> list[str]:  # runs after every plot is drawn
        raise KeyboardInterrupt

    monkeypatch.setattr(report.build, "_how_to_read", crash)
    assert cli_main(argv) == 130  # "interrupted", as at a Ctrl-C
    assert _digest(out) == before
    _no_leftovers(out)
    monkeypatch.undo()
    assert cli_main(argv) == 0
    assert (out / "plots" / "notes.txt").read_text() == "mine"
    _no_leftovers(out)


def _result_file(results: Path) -> Path:
    return next(p for p in (results / "m1").glob("*.json") if p.name != "machine.json")


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("params list", "'params' is not an object"),
        ("asv machine list", "machine.json: expected a JSON object"),
        ("zero time", "has a time of 0.0 s"),
        ("out is a file", "is a file, not a folder"),
        ("calibration cpu list", "malformed input"),
    ],
)
def test_malformed_inputs_exit_2_and_leave_the_report_alone(tmp_path, capsys, case, message):
    results, out, argv = _handmade(tmp_path)
    before = _digest(out)
    name = "bench_sieve.TimeSieve.time_count"
    if case == "params list":
        _edit_json(_result_file(results), lambda d: d.__setitem__("params", [1]))
    elif case == "asv machine list":
        (results / "m1" / "machine.json").write_text("[1, 2]")
    elif case == "zero time":
        _edit_json(_result_file(results),
                   lambda d: d["results"][name][0].__setitem__(3, 0.0))
    elif case == "out is a file":
        out = tmp_path / "a-file"
        out.write_text("x")
        argv = argv[:-1] + [str(out)]
        before = {"file": out.read_text()}
    else:  # a shape no check foresees still ends as a clear error
        _edit_json(tmp_path / "machine.json", lambda d: d.__setitem__("cpu", [1]))
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if case == "out is a file":
        assert out.read_text() == before["file"]
    else:
        assert _digest(out) == before
        _no_leftovers(out)


def test_stale_temporary_files_are_removed(tmp_path):
    _, out, argv = _handmade(tmp_path)
    (out / "plots" / ".sieve_speedup.png.abc123.tmp").write_bytes(b"half a png")
    (out / ".report.md.xyz.tmp").write_text("half a page")
    dead = out / ".report-999999999-abc.tmp"  # beyond pid_max: its writer is gone
    (dead / "plots").mkdir(parents=True)
    assert cli_main(argv) == 0
    _no_leftovers(out)


def test_a_truncated_file_of_an_older_run_is_skipped_with_a_warning(project, tmp_path, capsys):
    results = tmp_path / "asv"
    shutil.copytree(project["results"], results)
    older = next((results / MACHINE).glob(f"{project['base'][:8]}-*.json"))
    latest = next((results / MACHINE).glob(f"{project['head'][:8]}-*.json"))
    older.write_text(older.read_text()[:200])  # asv killed mid-write
    when = latest.stat().st_mtime - 3600
    os.utime(older, (when, when))
    out = tmp_path / "out"
    assert cli_main(["report", "--results", str(results), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and str(older) in err
    text = (out / "report.md").read_text()
    assert f"commit `{project['head'][:12]}`" in text
    assert "skipped unreadable result file of an older run" in text
    # Asked for by --commit, the broken file stops the report.
    assert cli_main(["report", "--results", str(results), "--out", str(out),
                     "--commit", project["base"][:10]]) == 2
    assert "corrupt JSON" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Time per worker band, and a kernel's picture
# ---------------------------------------------------------------------------


def _band_track(values: tuple[float | None, ...], band: str = "band"
                ) -> asvresults.BenchmarkResult:
    return asvresults.BenchmarkResult(
        name="bench_k.Bands.track_band_seconds", param_names=("schedule", band),
        params=(("'static'", "'dynamic'"), ("0", "1")), values=values,
        stats=(None,) * len(values), samples=(None,) * len(values), version=None,
        type="track", unit="seconds",
    )


def test_a_track_with_a_band_parameter_draws_time_per_band(tmp_path) -> None:
    from kernels.harness.report import plots

    path = tmp_path / "bands.png"
    assert plots.plot_bands("k", _band_track((0.2, 0.6, 0.4, 0.41)), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_band = _band_track((0.2, 0.6, 0.4, 0.41), band="worker")
    assert not plots.plot_bands("k", no_band, tmp_path / "none.png")
    assert not plots.plot_bands("k", _band_track((None,) * 4), tmp_path / "failed.png")
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "failed.png").exists()


def test_a_kernel_picture_is_drawn_from_a_2d_array_only(tmp_path) -> None:
    import numpy as np

    from kernels.harness.report import plots

    assert plots.plot_picture("k", np.arange(12).reshape(3, 4), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0
    assert not plots.plot_picture("k", np.arange(12), tmp_path / "q.png")
    assert not plots.plot_picture("k", np.zeros((0, 3)), tmp_path / "r.png")


def test_attention_roofline_share_and_bound(tmp_path):
    """A GFLOP/s track joins the time table: the row's share of the matmul peak beside its
    share of read bandwidth, the larger of the two as "of roofline", and which binds."""
    benches = _attention_benches()
    # numba at 2 workers: 16 GB/s = 50% of the 32 GB/s read; 95 GFLOP/s = 50% of 190;
    # gqa is given 38 GFLOP/s (20%: memory-bound), mla 152 GFLOP/s (80%: compute-bound).
    rate = {"mha": 19.0, "gqa": 38.0, "mla": 152.0}
    benches["bench_attention.Bandwidth.track_gflops"] = {
        "param_names": ["preset", "context", "strategy", "workers"],
        "params": [list(rate), [1024, 8192], ["numpy", "numba"], [1, 2]],
        "values": lambda p: rate[p["preset"]], "type": "track", "unit": "GFLOP/s"}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    machine = _machine_json(tmp_path / "machine.json", {"1": 20.0, "2": 32.0})
    text, _ = report.build_report(results, machine, tmp_path / "out")
    header = next(x for x in text.splitlines() if x.startswith("|") and "of roofline" in x)
    names = [c.strip() for c in header.strip("|").split("|")]

    def cells(preset: str) -> dict[str, str]:
        row = next(x for x in text.splitlines()
                   if x.startswith(f"| numba | {preset} |") and "| 8,192 | 2 |" in x)
        return dict(zip(names, [c.strip() for c in row.strip("|").split("|")], strict=True))

    gqa, mla = cells("gqa"), cells("mla")
    assert (gqa["of read bw"], gqa["of matmul peak"], gqa["of roofline"], gqa["bound"]) == (
        "50%", "20%", "50%", "memory")
    assert (mla["of matmul peak"], mla["of roofline"], mla["bound"]) == ("80%", "80%", "compute")


def test_a_paired_share_of_matmul_sets_the_row_its_roofline_and_the_anchors(tmp_path):
    """``track_share_of_matmul`` (percent) stands in for *of matmul peak* where the suite
    raced the matmul pass; *of roofline* then carries the interval of the share it
    takes. torch's race has no matmul pass: its share is its paired speed-up times
    numpy's paired share at its workers, over numpy's own 2-over-1 speed-up. A row
    without a paired share keeps the ratio of medians, bare."""
    benches = _attention_benches()
    rate = {"mha": 19.0, "gqa": 38.0, "mla": 152.0}
    benches["bench_attention.Decode.time_decode"]["params"][0].append("torch")
    benches["bench_attention.Bandwidth.track_gflops"] = {
        "param_names": ["preset", "context", "strategy", "workers"],
        "params": [list(rate), [1024, 8192], ["numpy", "numba", "torch"], [1, 2]],
        "values": lambda p: rate[p["preset"]], "type": "track", "unit": "GFLOP/s"}
    share = {("numba", 2): 60.0, ("numpy", 2): 30.0, ("numpy", 1): 40.0}
    benches["bench_attention.ShareOfMatmul.track_share_of_matmul"] = {
        "param_names": ["strategy", "preset", "context", "workers"],
        "params": [["numpy", "numba"], ["mla"], [8192], [1, 2]],
        "values": lambda p: share.get((p["strategy"], p["workers"]), float("nan")),
        "type": "track", "unit": "%", "rounds": 12}
    benches["bench_attention.VersusNumpy.track_speedup_over_numpy"] = {
        "param_names": ["strategy", "preset", "context", "workers"],
        "params": [["torch"], ["mla"], [8192], [2]],
        "values": lambda p: 3.0, "type": "track", "unit": "x", "rounds": 12}
    benches["bench_attention.Scaling.track_speedup_2_workers"] = {
        "param_names": ["strategy", "preset", "context"],
        "params": [["numpy"], ["mla"], [8192]],
        "values": lambda p: 1.5, "type": "track", "unit": "x", "rounds": 12}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    machine = _machine_json(tmp_path / "machine.json", {"1": 20.0, "2": 32.0})
    text, _ = report.build_report(results, machine, tmp_path / "out")
    mla = _header_cells(text, "of roofline", "| numba | mla |", "| 8,192 | 2 |")
    assert (mla["of matmul peak"], mla["of roofline"], mla["bound"]) == (
        "60% [54, 66]", "60% [54, 66]", "compute")
    # torch@2: 3 [2.7, 3.3] x 30% [27, 33] / 1.5 [1.35, 1.65] = 60% [44, 81].
    torch = _header_cells(text, "of roofline", "| torch | mla |", "| 8,192 | 2 |")
    assert torch["of matmul peak"] == "60% [44, 81]" == torch["of roofline"]
    # gqa is memory-bound and unpaired: both bare; so is mla at 1,024.
    gqa = _header_cells(text, "of roofline", "| numba | gqa |", "| 8,192 | 2 |")
    assert (gqa["of matmul peak"], gqa["of roofline"], gqa["bound"]) == (
        "20%", "50%", "memory")
    assert _header_cells(text, "of roofline", "| numba | mla |", "| 1,024 | 2 |")[
        "of matmul peak"] == "80%"


# ---------------------------------------------------------------------------
# The FMA probe in the report: roofline, attention, Monte Carlo, Mandelbrot (issue 15)
# ---------------------------------------------------------------------------

FMA = {"gflops": {"float32": {"1": 160.0, "2": 320.0}, "float64": {"1": 80.0, "2": 160.0}},
       "register": {"float32": "zmm", "float64": "zmm"}, "method": "test", "peak_from": "test",
       "numba_default": {"gflops": {"float32": {"1": 80.0, "2": 160.0}},
                         "register": {"float32": "ymm", "float64": "ymm"}}}


def _header_cells(text: str, header_has: str, row_start: str, row_has: str) -> dict[str, str]:
    lines = text.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("| strategy |") and header_has in x
              and any(y.startswith(row_start) and row_has in y for y in lines[i:i + 60]))
    names = [c.strip() for c in lines[at].strip("|").split("|")]
    row = next(x for x in lines[at:] if x.startswith(row_start) and row_has in x)
    return dict(zip(names, [c.strip() for c in row.strip("|").split("|")], strict=True))


def test_attention_roofline_from_flop_and_weight_counts(tmp_path):
    """FLOP-count and weight-bytes tracks give each point its FLOP per byte (cache +
    weights) and its GFLOP/s from the row's own time; the plot is drawn from them and the
    rows get their share of the FMA probe beside the matmul peak."""
    benches = _attention_benches()
    flops = {"mha": 4.0, "gqa": 4.0, "mla": 200.0}  # FLOP per context token
    weights = {"mha": 0, "gqa": 0, "mla": 1 << 20}
    benches["bench_attention.Cost.track_step_flops"] = {
        "param_names": ["preset", "context"], "params": [list(flops), [1024, 8192]],
        "values": lambda p: flops[p["preset"]] * p["context"], "type": "track", "unit": "FLOP"}
    benches["bench_attention.Cost.track_weight_bytes"] = {
        "param_names": ["preset"], "params": [list(weights)],
        "values": lambda p: weights[p["preset"]], "type": "track", "unit": "weight bytes"}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    machine = _machine_json(tmp_path / "machine.json", {"1": 20.0, "2": 32.0}, fma=FMA)
    text, plots = report.build_report(results, machine, tmp_path / "out")
    table = next(t for t in _tables(results, "attention"))
    derived = report.derive(table, json.loads(machine.read_text()))
    row = table.lookup()[("numba", 8192, 2, (("preset", "mla"),))]
    d = derived[id(row)]
    cache = 1152 * 8192
    assert d.flops == 200.0 * 8192
    assert d.intensity == pytest.approx(200.0 * 8192 / (cache + (1 << 20)))
    assert d.gflops == pytest.approx(200.0 * 8192 / row.seconds / 1e9)
    assert d.fma_fraction == pytest.approx(d.gflops / 320.0)
    assert d.intensity_bytes == "cache + weights"
    names = {p.name for p in plots}
    assert "attention_roofline.png" in names
    png = next(p for p in plots if p.name == "attention_roofline.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "Roofline:" in text and "FMA probe (320 GFLOP/s" in text
    assert "of FMA peak" in text
    # The machine section gives the probe beside the matmul rate, and its ratio.
    assert "| FMA probe float32, zmm (GFLOP/s) | 160 | 320 |" in text
    assert "| FMA probe float32 / matmul | 1.60x | 1.68x |" in text
    assert "FMA at numba's default width, float32, ymm" in text


def test_a_table_joins_the_step_counts_sharing_the_most_parameters(tmp_path):
    """Two FLOP-count tracks fit an MLA table's parameters: the batch-1 absorbed counts by
    (preset, context) and the table's own by (preset, mla_impl, context). The report
    takes the table's own, so a naive step gets the naive count (it once got the
    absorbed one, about 100x too few FLOPs)."""
    absorbed, naive = 100.0, 10_000.0  # FLOP per context token
    benches = {
        "bench_attention.MLA.time_mla": {
            "param_names": ["preset", "mla_impl", "context", "strategy", "workers"],
            "params": [["mla"], ["naive", "absorbed"], [1024], ["numpy", "numba"], [1, 2]],
            "values": lambda p: 1e-3 * (100 if p["mla_impl"] == "naive" else 1),
            "type": "time", "unit": "seconds"},
        "bench_attention.Cost.track_step_flops": {
            "param_names": ["preset", "context"], "params": [["mla"], [1024]],
            "values": lambda p: absorbed * p["context"], "type": "track", "unit": "FLOP"},
        "bench_attention.CostMLA.track_step_flops": {
            "param_names": ["preset", "mla_impl", "context"],
            "params": [["mla"], ["naive", "absorbed"], [1024]],
            "values": lambda p: (naive if p["mla_impl"] == "naive" else absorbed) * p["context"],
            "type": "track", "unit": "FLOP"},
    }
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    (table,) = _tables(results, "attention")
    derived = report.derive(table, None)
    for impl, per_token in (("naive", naive), ("absorbed", absorbed)):
        row = table.lookup()[("numba", 1024, 2, (("preset", "mla"), ("mla_impl", impl)))]
        assert derived[id(row)].flops == per_token * 1024


def _tables(results: Path, kernel: str) -> list[Any]:
    files = asvresults.find_results(results)
    merged = asvresults.merge(files).values()
    tracks = [b for b in merged if b.type == "track"]
    return [report.build_table(kernel, b, tracks) for b in merged if b.type == "time"]


def test_roofline_from_rate_tracks_only_and_its_points(tmp_path):
    """Without a FLOP count, the GFLOP/s track over the row's GB/s places the point (the
    suite's Bandwidth.track_gflops today); one point per preset and strategy at the most
    workers and largest context."""
    from kernels.harness.report import plots

    benches = _attention_benches()
    rate = {"mha": 4.0, "gqa": 8.0, "mla": 150.0}
    benches["bench_attention.Bandwidth.track_gflops"] = {
        "param_names": ["strategy", "preset", "context", "workers"],
        "params": [["numpy", "numba"], list(rate), [8192], [1, 2]],
        "values": lambda p: rate[p["preset"]], "type": "track", "unit": "GFLOP/s"}
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    machine = json.loads(_machine_json(tmp_path / "m.json", {"1": 20.0, "2": 32.0},
                                       fma=FMA).read_text())
    (table,) = _tables(results, "attention")
    derived = report.derive(table, machine)
    size, points = plots.roofline_points(table, derived)
    assert size == 8192 and len(points) == 6  # 3 presets x 2 strategies, 2 workers
    gqa = table.lookup()[("numba", 8192, 2, (("preset", "gqa"),))]
    d = derived[id(gqa)]
    # numba reaches 16 GB/s at 2 workers by construction: 8 GFLOP/s / 16 GB/s.
    assert d.intensity == pytest.approx(0.5) and d.intensity_bytes == "cache (from the rates)"
    assert d.fma_fraction == pytest.approx(8.0 / 320.0)
    assert plots.plot_roofline(table, derived, machine, tmp_path / "r.png")
    # An old calibration (no probe) still draws, with the matmul roof alone.
    old = {k: v for k, v in machine.items() if k != "fma"}
    assert plots.plot_roofline(table, report.derive(table, old), old, tmp_path / "o.png")
    assert not plots.plot_roofline(table, derived, None, tmp_path / "none.png")


def test_montecarlo_and_mandelbrot_against_the_fma_probe(tmp_path):
    """Known times give the stated counts' rates: Monte Carlo 17 int64 operations per
    sample against the float64 probe's lane slots (2 FLOP each), Mandelbrot 8 FLOP per
    escape iteration over the image's total iterations (its known checksum)."""
    from kernels import mandelbrot
    from kernels.harness.report import arithmetic

    benches = {
        "bench_montecarlo.TimeEstimatePi.time_estimate_pi": {
            "param_names": ["strategy", "samples", "workers"],
            "params": [["numpy", "numba"], [10**6, 10**8], [1, 2]],
            "values": lambda p: p["samples"] * 1e-9 / p["workers"], "type": "time",
            "unit": "seconds"},
        "bench_mandelbrot.TimeRender.time_render": {
            "param_names": ["strategy", "schedule", "size", "workers"],
            "params": [["numpy", "numba"], ["dynamic"], [1 << 16, 1 << 22], [1, 2]],
            "values": lambda p: 0.01 * p["size"] / (1 << 16) / p["workers"], "type": "time",
            "unit": "seconds"},
    }
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    machine = _machine_json(tmp_path / "machine.json", fma=FMA)
    text, _ = report.build_report(results, machine, tmp_path / "out")
    # 1 ns per sample per worker: 17 Gop/s on one core, 2 x 17 / 80 = 42% of float64 FMA.
    mc = _header_cells(text, "Gint64 op/s", "| numba |", "| 1e8 | 1 |")
    assert (mc["Gint64 op/s"], mc["of FMA peak"]) == ("17", "42%")
    mc2 = _header_cells(text, "Gint64 op/s", "| numba |", "| 1e8 | 2 |")
    assert (mc2["Gint64 op/s"], mc2["of FMA peak"]) == ("34", "42%")
    # 256x256 = 4,426,010 iterations (the checksum) in 10 ms: 3.54 GFLOP/s, 4.4% of 80.
    md = _header_cells(text, "GFLOP/s", "| numba | dynamic |", "| 65,536 | 1 |")
    assert md["GFLOP/s"] == "3.54" and md["of FMA peak"] == "4%"
    assert mandelbrot.KNOWN_CHECKSUMS[(256, 256, "full")] == 4426010
    # A side without a known checksum: the mean per pixel of the largest known side.
    est = mandelbrot.SPEC.arithmetic.units_of(128 * 128)
    assert est == pytest.approx(1103031, rel=0.005)  # the render's checksum at 128x128
    assert "Arithmetic count: *Gint64 op/s* counts 17" in text
    assert "Arithmetic count: *GFLOP/s* counts 8 float64 operations" in text
    assert arithmetic.count_for("sieve") is None  # the sieve keeps its anchor


def test_parallel_efficiency_divides_by_the_workers_a_call_really_ran_on(tmp_path):
    """Below the sieve's minimum grain, workers=2 runs 1 worker (the kernel's spec says
    so): the table shows what it ran on, and the efficiency is not halved for a worker
    that never ran."""
    from kernels import sieve

    small, large = 10**6, 10**9
    assert sieve.SPEC.workers_used(small, "numba", None, 2) == 1
    assert sieve.SPEC.workers_used(large, "numba", None, 2) == 2
    benches = {
        "bench_sieve.TimeCountPrimes.time_count_primes": {
            "param_names": ["strategy", "n", "workers"],
            "params": [["numpy", "numba"], [small, large], [1, 2]],
            "values": lambda p: (1.0 if p["n"] == small else 1000.0) / (
                p["workers"] if p["n"] == large else 1), "type": "time", "unit": "seconds"},
    }
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    text, _ = report.build_report(results, _machine_json(tmp_path / "m.json"), tmp_path / "o")
    below = _header_cells(text, "ran on", "| numba |", f"| {report.fmt_size(small)} | 2 |")
    above = _header_cells(text, "ran on", "| numba |", f"| {report.fmt_size(large)} | 2 |")
    assert (below["ran on"], below["parallel eff."]) == ("1", "100%")
    assert (above["ran on"], above["parallel eff."]) == ("2", "100%")


def test_a_paired_efficiency_divides_by_the_workers_a_call_really_ran_on(tmp_path):
    """The paired 2-worker speed-up (Scaling) becomes an efficiency over the workers that
    ran, as the ratio of medians does: below the minimum grain a 1.0x speed-up is 100%,
    not 50%; above it 1.8x is 90%. Its interval scales with it."""
    small, large = 10**6, 10**9
    benches = {
        "bench_sieve.TimeCountPrimes.time_count_primes": {
            "param_names": ["strategy", "n", "workers"],
            "params": [["numpy", "numba"], [small, large], [1, 2]],
            "values": lambda p: 1.0, "type": "time", "unit": "seconds"},
        "bench_sieve.Scaling.track_speedup_2_workers": {
            "param_names": ["strategy", "n"], "params": [["numba"], [small, large]],
            "values": lambda p: 1.0 if p["n"] == small else 1.8, "type": "track",
            "unit": "x", "rounds": 12},
    }
    results = tmp_path / "asv"
    write_asv_results(results, benches)
    text, _ = report.build_report(results, _machine_json(tmp_path / "m.json"), tmp_path / "o")
    below = _header_cells(text, "ran on", "| numba |", f"| {report.fmt_size(small)} | 2 |")
    above = _header_cells(text, "ran on", "| numba |", f"| {report.fmt_size(large)} | 2 |")
    assert (below["ran on"], below["parallel eff."]) == ("1", "100% [90, 110]")
    assert (above["ran on"], above["parallel eff."]) == ("2", "90% [81, 99]")


def test_a_paired_interval_needs_eight_rounds():
    """Below 8 rounds no distribution-free 99% interval of a median exists, and asv's
    fallback can reach past the rounds (a speed-up's lower bound below zero after QUICK's
    3 rounds): such a point gives no paired figure, only its medians' ratio."""
    from kernels.harness.report import model

    def point(rounds: int) -> asvresults.Point:
        stats = {"ci_99_a": -0.05, "ci_99_b": 0.41, "repeat": rounds}
        return asvresults.Point("b.track_x", {}, (), 0.157, stats)

    assert model.rounds_interval(point(model.MIN_CI_ROUNDS - 1)) is None
    assert model.rounds_interval(point(3)) is None
    assert model.rounds_interval(point(model.MIN_CI_ROUNDS)) == (-0.05, 0.41, 8)
