"""kernelrace compare on real asv results made here: a tiny project, two commits, one slower.

The tiny project's benchmark sleeps (no kernels import: under ``--python=same`` asv
drops PYTHONPATH), so the slowdown is certain and the test is quick. asv runs with
HOME in a temp folder so that its machine file never touches the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _repo import asv_env, git

from kernels.harness import compare
from kernels.harness.asvresults import BenchmarkResult
from kernels.harness.cli import main as cli_main

pytest.importorskip("asv")

MACHINE = "testmachine"

BENCH = '''
"""A tiny parameterised suite with the kernelrace naming (strategy, size, workers)."""
import time

from benchmarks import _speed


class TimeTiny:
    params = (["numpy", "numba"], [1, 4], [1, 2])
    param_names = ["strategy", "size", "workers"]
    number = 1
    repeat = 10
    rounds = 1
    warmup_time = 0.0

    def time_work(self, strategy, size, workers):
        per = {"numpy": 2.0, "numba": 1.0}[strategy]
        time.sleep(_speed.SLOW * per * size * 5e-3 / workers)


class Cache:
    params = ([1, 4],)
    param_names = ["size"]

    def track_cache_bytes(self, size):
        return size * 1_000_000
    track_cache_bytes.unit = "bytes"
'''

_CACHE: dict[str, dict[str, object]] = {}


def _asv(root: Path, *args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "asv", *args], cwd=root, env=asv_env(root / "home"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def tiny_asv_results(factory: pytest.TempPathFactory) -> dict[str, object]:
    """Build once per session: a git repo, two commits benchmarked, the second 3x slower.

    Returns ``{"root", "results", "config", "base", "head"}``.
    """
    if "project" in _CACHE:
        return _CACHE["project"]
    root = factory.mktemp("asvproject")
    (root / "home").mkdir()
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "bench_tiny.py").write_text(textwrap.dedent(BENCH))
    (root / "benchmarks" / "_speed.py").write_text("SLOW = 1\n")
    (root / "asv.conf.json").write_text(json.dumps({
        "version": 1, "project": "tiny", "repo": ".", "branches": ["main"],
        "environment_type": "virtualenv", "benchmark_dir": "benchmarks",
        "results_dir": "results/asv", "html_dir": "results/html", "env_dir": ".asv/env",
    }))
    (root / ".gitignore").write_text("home/\nresults/\n.asv/\n__pycache__/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    base = git(root, "rev-parse", "HEAD")
    _asv(root, "machine", "--yes", "--machine", MACHINE)
    _asv(root, "run", "--python=same", "--set-commit-hash", base, "--machine", MACHINE)
    (root / "benchmarks" / "_speed.py").write_text("SLOW = 3\n")
    git(root, "commit", "-qam", "three times slower")
    head = git(root, "rev-parse", "HEAD")
    _asv(root, "run", "--python=same", "--set-commit-hash", head, "--machine", MACHINE)
    _CACHE["project"] = {
        "root": root, "results": root / "results" / "asv", "config": root / "asv.conf.json",
        "base": base, "head": head,
    }
    return _CACHE["project"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return tiny_asv_results(tmp_path_factory)


def _compare(project: dict[str, object], *args: str) -> int:
    return cli_main(["compare", *args, "--config", str(project["config"])])


def test_slowdown_is_flagged_with_exit_1(project, tmp_path, capsys):
    path = tmp_path / "cmp.json"
    code = _compare(project, project["base"], project["head"], "--json", str(path))
    out = capsys.readouterr().out
    assert code == 1, out
    assert "REGRESSED" in out and "FAIL (exit 1)" in out
    changes = {c["label"]: c for c in json.loads(path.read_text())["changes"]}
    # Every time point sleeps three times longer at HEAD; ten samples a side let asv's
    # Mann-Whitney test see it even on a loaded machine (scheduling delays blur a few).
    timed = [c for c in changes.values() if c["type"] == "time"]
    assert len(timed) == 8
    assert all(c["ratio"] > 1.5 for c in timed), [c["ratio"] for c in timed]
    significant = [c for c in timed if c["status"] == "regressed" and c["significant"]]
    assert len(significant) >= 4, [(c["label"], c["status"]) for c in timed]
    largest = changes["bench_tiny.TimeTiny.time_work('numpy', 4, 1)"]
    assert largest["status"] == "regressed" and 2.0 < largest["ratio"] < 4.0
    assert "bench_tiny.TimeTiny.time_work('numpy', 4, 1)" in out


def test_the_reverse_is_an_improvement_with_exit_0(project, capsys):
    code = _compare(project, project["head"], project["base"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "IMPROVED" in out and "REGRESSED" not in out


def test_git_revisions_resolve_and_same_commit_is_unchanged(project, capsys):
    root = project["root"]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert cli_main(["compare", "HEAD~1", "HEAD", "--factor", "1.5"]) == 1
        capsys.readouterr()
        assert cli_main(["compare", "HEAD", "HEAD", "--split"]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "unchanged within 1.10x" in out and "tracked values" in out


def test_json_output_and_bench_filter(project, tmp_path, capsys):
    path = tmp_path / "cmp.json"
    code = _compare(project, project["base"], project["head"], "--json", str(path),
                    "--bench", "track_")
    assert code == 0  # track values are listed, never judged
    data = json.loads(path.read_text())
    assert data["exit_code"] == 0
    assert {c["status"] for c in data["changes"]} == {"tracked"}


def test_missing_commit_is_a_clear_error(project, capsys):
    code = _compare(project, project["base"], "deadbeef")
    err = capsys.readouterr().err
    assert code == 2
    assert "no asv results for deadbeef" in err
    assert project["base"][:8] in err  # it lists the commits that do have results


def test_unknown_revision_is_a_clear_error(project, capsys):
    assert _compare(project, project["base"], "no-such-branch") == 2
    assert "cannot resolve 'no-such-branch'" in capsys.readouterr().err


def test_corrupt_results_file_is_named(project, tmp_path, capsys):
    results = tmp_path / "asv"
    shutil.copytree(project["results"], results)
    victim = next((results / MACHINE).glob(f"{project['head'][:8]}-*.json"))
    victim.write_text(victim.read_text()[:200])
    code = _compare(project, project["base"], project["head"], "--results", str(results))
    err = capsys.readouterr().err
    assert code == 2
    assert str(victim) in err and "corrupt JSON" in err


@pytest.mark.parametrize("factor", ["0.5", "1.0", "nan", "inf"])
def test_bad_factor_is_refused(project, capsys, factor):
    # nan would compare false with every ratio and switch the gate off.
    assert _compare(project, project["base"], project["head"], "--factor", factor) == 2
    assert "--factor must be a finite number > 1.0" in capsys.readouterr().err


def _bench(values, stats=None, samples=None, kind="time") -> BenchmarkResult:
    n = len(values)
    return BenchmarkResult(
        name="bench_x.T.time_f", param_names=("strategy",),
        params=(tuple(repr(f"s{i}") for i in range(n)),), values=tuple(values),
        stats=tuple(stats or [None] * n), samples=tuple(samples or [None] * n),
        version="v", type=kind, unit="seconds" if kind == "time" else "bytes",
    )


def test_classification_without_stats():
    base = _bench([1.0, 1.0, 1.0, 1.0, 1.0])
    head = _bench([1.2, 0.8, 1.05, None, float("nan")])
    changes = {c.key[0]: c.status for c in compare.compare_benchmarks({"b": base}, {"b": head})}
    assert changes == {"'s0'": "regressed", "'s1'": "improved", "'s2'": "unchanged",
                       "'s3'": "failed", "'s4'": "skipped"}


def test_not_significant_slowdown_is_noise_unless_stats_are_ignored():
    wide = {"ci_99_a": 0.5, "ci_99_b": 2.0, "repeat": 5, "q_25": 0.9, "q_75": 1.1}
    base = _bench([1.0], stats=[wide])
    head = _bench([1.3], stats=[dict(wide, ci_99_a=0.6, ci_99_b=2.1)])
    (c,) = compare.compare_benchmarks({"b": base}, {"b": head})
    assert (c.status, c.significant) == ("noise", False)
    assert compare.exit_code([c]) == 0
    (c,) = compare.compare_benchmarks({"b": base}, {"b": head}, use_stats=False)
    assert c.status == "regressed" and compare.exit_code([c]) == 1


def test_peak_memory_growth_counts_as_regression():
    (c,) = compare.compare_benchmarks({"b": _bench([100e6], kind="memory")},
                                      {"b": _bench([150e6], kind="memory")})
    assert c.status == "regressed"
    assert compare.format_value(150e6, "bytes") == "150M"


def test_run_calls_asv_continuous_then_judges_the_files(project, monkeypatch, capsys):
    calls = []

    def fake_asv(args, config):
        calls.append(args)
        return 1  # asv continuous's own "found a regression" code is not an error

    monkeypatch.setattr(compare, "_asv", fake_asv)
    monkeypatch.setenv("HOME", str(project["root"] / "home"))  # asv machine already set up
    code = _compare(project, project["base"], project["head"], "--run-asv", "--factor", "1.2",
                    "--bench", "time_")
    assert code == 1
    assert calls == [["continuous", "--factor", "1.2", "--bench", "time_",
                      project["base"], project["head"]]]
    monkeypatch.setattr(compare, "_asv", lambda args, config: 2)
    assert _compare(project, project["base"], project["head"], "--run-asv") == 2
    assert "asv continuous` failed with exit code 2" in capsys.readouterr().err


def test_changed_benchmark_code_is_marked():
    base = _bench([1.0])
    head = BenchmarkResult(**{**base.__dict__, "values": (2.0,), "version": "other"})
    (c,) = compare.compare_benchmarks({"b": base}, {"b": head})
    assert c.code_changed and c.status == "regressed"
    assert "[benchmark code changed]" in compare.render([c], factor=1.1, split=False,
                                                        use_stats=True)


def test_asv_publish_writes_html_from_these_results(project):
    root = Path(project["root"])
    _asv(root, "publish")
    html = root / "results" / "html"
    assert (html / "index.html").exists() and (html / "index.json").exists()
    graphs = list((html / "graphs").rglob("bench_tiny.TimeTiny.time_work.json"))
    assert graphs, "asv publish wrote no graph for the tiny benchmark"
