"""The regression gate end to end on a tiny repository: checkouts, workers, verdicts, exits.

The tiny suite spins a pure-Python loop whose length lives in a module of its own, so
a commit can make it exactly twice as slow (exit 1), leave it alone and change only a
README (exit 0), or break it (exit 1, failed at HEAD); a ``peakmem_`` benchmark holds
a block whose size lives there too, so a commit can double it (exit 1). ``--busy-threshold 1`` keeps
every round: the test must pass on a busy machine, and the thresholds it checks (a
factor of 1.25 against a 2x slowdown) leave room for that.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _repo import git

from kernels.harness import gate
from kernels.harness.cli import main as cli_main

BENCH = '''
import os

from benchmarks import _work


class TimeTiny:
    params = ([1, 2, 3],)
    param_names = ["size"]
    gate_params = [([1, 2],)]

    def setup(self, size):
        if size == 3:
            raise NotImplementedError("size 3 is not raced")

    def time_work(self, size):
        _work.spin(size)


class TimeOther:
    def time_other(self):
        _work.spin(1)


class TimeOnWorkers:
    params = ([1, 2],)
    param_names = ["workers"]

    def time_spin(self, workers):
        _work.spin(1)
        log = os.environ.get("TINY_AFFINITY_LOG")
        if log:
            with open(log, "a") as f:
                cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
                f.write(f"{workers} {cpus}\\n")


class PeakTiny:
    params = ([1, 2],)
    param_names = ["size"]
    gate_params = [([1],)]

    def peakmem_hold(self, size):
        _work.hold(size)
'''

WORK = '''
LOOPS = {loops}
MEGABYTES = {mb}


def hold(size):
    block = b"\\x01" * (MEGABYTES * size << 20)  # written, so resident
    return len(block)


def spin(size):
    total = 0
    for i in range(LOOPS * size):
        total += i
    return total
'''


def _commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("gaterepo")
    (root / "benchmarks").mkdir()
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "bench_tiny.py").write_text(textwrap.dedent(BENCH))
    (root / "benchmarks" / "_work.py").write_text(WORK.format(loops=20_000, mb=40))
    (root / "README.md").write_text("tiny\n")
    (root / ".gitignore").write_text(".asv/\n__pycache__/\n")
    git(root, "init", "-q", "-b", "main")
    (root / "benchmarks" / "bench_tiny.py").write_text(
        textwrap.dedent(BENCH).replace("    gate_params = [([1, 2],)]\n", ""))
    commits = {"old": _commit(root, "before the suite had a regression set")}
    (root / "benchmarks" / "bench_tiny.py").write_text(textwrap.dedent(BENCH))
    commits["base"] = _commit(root, "base")
    (root / "README.md").write_text("tiny, documented\n")
    commits["docs"] = _commit(root, "docs only")
    (root / "benchmarks" / "_work.py").write_text(WORK.format(loops=40_000, mb=40))
    commits["slow"] = _commit(root, "twice the loop")
    git(root, "checkout", "-q", commits["docs"])
    (root / "benchmarks" / "_work.py").write_text(WORK.format(loops=20_000, mb=80))
    commits["fat"] = _commit(root, "twice the block")
    git(root, "checkout", "-q", commits["docs"])
    (root / "benchmarks" / "_work.py").write_text(WORK.format(loops=10_000, mb=40))
    commits["fast"] = _commit(root, "half the loop")
    git(root, "checkout", "-q", commits["docs"])
    (root / "benchmarks" / "_work.py").write_text("def spin(size):\n    raise OSError('x')\n")
    commits["broken"] = _commit(root, "broken benchmark")
    git(root, "checkout", "-q", "main")
    return {"root": root, **commits}


def _gate(repo, head: str, *extra: str, json_path: Path | None = None,
          base: str = "base") -> int:
    args = ["compare", repo[base], head, "--run", "--rounds", "8", "--factor", "1.25",
            "--busy-threshold", "1", "--config", str(Path(repo["root"]) / "asv.conf.json")]
    if json_path is not None:
        args += ["--json", str(json_path)]
    return cli_main([*args, *extra])


def test_docs_only_commit_passes(repo, tmp_path, capsys):
    path = tmp_path / "aa.json"
    assert _gate(repo, repo["docs"], json_path=path) == 0
    out = capsys.readouterr().out
    assert "paired in alternation" in out and "OK (exit 0)" in out
    rows = json.loads(path.read_text())
    assert rows["method"] == "paired" and rows["exit_code"] == 0
    labels = {p["label"]: p for p in rows["points"]}
    # the regression set: gate_params, not the whole grid, and not TimeOther
    peak = "bench_tiny.PeakTiny.peakmem_hold(1)"
    assert set(labels) == {"bench_tiny.TimeTiny.time_work(1)",
                           "bench_tiny.TimeTiny.time_work(2)", peak}
    for label, p in labels.items():
        assert p["ci_low"] <= p["ratio"] <= p["ci_high"]
        assert len(p["round_log_ratios"]) == p["rounds"]
        if label == peak:  # one fresh process a side per sample, five a side
            assert p["kind"] == "peakmem" and p["unit"] == "bytes"
            assert p["rounds"] == gate.PEAKMEM_SAMPLES
            assert 40 << 20 < min(p["base_round_s"] + p["head_round_s"]) < 200 << 20
        else:  # 8 rounds, or up to 16 where the interval was still wider than the factor
            assert p["kind"] == "time" and 8 <= p["rounds"] <= 16


def test_twice_as_slow_fails_with_every_point_flagged(repo, tmp_path, capsys):
    path = tmp_path / "slow.json"
    assert _gate(repo, repo["slow"], "--split", json_path=path) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "FAIL (exit 1)" in out
    points = [p for p in json.loads(path.read_text())["points"] if p["kind"] == "time"]
    assert [p["status"] for p in points] == ["regressed", "regressed"]
    for p in points:
        assert 1.5 < p["ratio"] < 2.6 and p["ci_low"] > 1.25
        assert p["confirmation"]["rounds"] >= 8  # seen again by new worker processes
        assert any("confirmed by new processes" in n for n in p["notes"])


def test_twice_as_fast_is_an_improvement_seen_again_by_new_processes(repo, tmp_path):
    path = tmp_path / "fast.json"
    assert _gate(repo, repo["fast"], json_path=path) == 0
    points = [p for p in json.loads(path.read_text())["points"] if p["kind"] == "time"]
    assert [p["status"] for p in points] == ["improved", "improved"]
    for p in points:
        assert p["ci_high"] < 1 / 1.25 and p["confirmation"]["rounds"] >= 8
        assert any("confirmed by new processes" in n for n in p["notes"])


def test_twice_the_memory_fails_on_the_peakmem_point_alone(repo, tmp_path, capsys):
    path = tmp_path / "fat.json"
    assert _gate(repo, repo["fat"], json_path=path) == 1
    assert "REGRESSED" in capsys.readouterr().out
    points = {p["label"]: p for p in json.loads(path.read_text())["points"]}
    peak = points.pop("bench_tiny.PeakTiny.peakmem_hold(1)")
    assert peak["status"] == "regressed" and peak["ci_low"] > 1.25
    assert peak["confirmation"] is None  # fresh processes already: nothing to confirm
    assert all(p["status"] != "regressed" for p in points.values())


def test_bench_regex_picks_from_the_whole_grid(repo, tmp_path):
    path = tmp_path / "grid.json"
    assert _gate(repo, repo["docs"], "--all-points", "--bench", r"time_(work\(3\)|other)",
                 json_path=path) == 0
    points = {p["label"]: p for p in json.loads(path.read_text())["points"]}
    assert set(points) == {"bench_tiny.TimeTiny.time_work(3)", "bench_tiny.TimeOther.time_other"}
    assert points["bench_tiny.TimeTiny.time_work(3)"]["skip"] == "size 3 is not raced"


def test_a_base_older_than_the_regression_set_is_compared_on_heads(repo, tmp_path):
    path = tmp_path / "old.json"
    assert _gate(repo, repo["docs"], json_path=path, base="old") == 0
    assert len(json.loads(path.read_text())["points"]) == 3


def test_a_benchmark_that_fails_at_head_is_a_failure(repo, capsys):
    assert _gate(repo, repo["broken"]) == 1
    out = capsys.readouterr().out
    assert "FAILED at HEAD" in out and "OSError" in out


@pytest.mark.parametrize("extra, message", [
    (("--factor", "nan"), "--factor must be a finite number > 1.0"),
    (("--rounds", "3"), "--rounds must be an integer in [6, 1000]"),
    (("--bench", "nomatch"), "no benchmark point to compare matches 'nomatch'"),
])
def test_bad_arguments_exit_2(repo, capsys, extra, message):
    assert _gate(repo, repo["docs"], *extra) == 2
    assert message in capsys.readouterr().err


def test_unknown_commit_exits_2(repo, capsys):
    assert _gate(repo, "no-such-rev") == 2
    assert "cannot resolve 'no-such-rev'" in capsys.readouterr().err


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs two CPUs to choose from")


@needs_two_cpus
def test_one_worker_points_run_both_sides_on_one_cpu(repo, tmp_path, monkeypatch):
    log = tmp_path / "affinity.log"
    monkeypatch.setenv("TINY_AFFINITY_LOG", str(log))
    path = tmp_path / "pin.json"
    # Twice as slow at HEAD: both points are flagged and measured again by new processes.
    assert _gate(repo, repo["slow"], "--all-points", "--bench", "TimeOnWorkers",
                 json_path=path) == 1
    points = {p["params"][0]: p for p in json.loads(path.read_text())["points"]}
    cpus = sorted(os.sched_getaffinity(0))
    one, every = str(cpus[-1]), ",".join(map(str, cpus))
    for p in (points["1"], points["1"]["confirmation"]):
        assert p["pinned_cpu"] == cpus[-1]
    for p in (points["2"], points["2"]["confirmation"]):
        assert p["pinned_cpu"] is None
    seen: dict[str, list[str]] = {"1": [], "2": []}
    for line in log.read_text().splitlines():
        workers, on = line.split()
        seen[workers].append(on)
    # In each pair of processes, the setup's calls and the sizing call run before the
    # pin, every timed sample after them on the one CPU; the 2-worker point, next in
    # the same processes, has every CPU back.
    stretches = [cpus_of for cpus_of, _ in itertools.groupby(seen["1"])]
    assert stretches == [every, one, every, one]
    assert seen["1"].count(one) >= 2 * 2 * 8 * gate.MIN_SAMPLES
    assert seen["2"] and set(seen["2"]) == {every}


@needs_two_cpus
def test_pin_tree_reaches_every_thread_of_the_descendants():
    script = ("import subprocess, sys, threading, time\n"
              "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        from kernels.harness.gate_env import tree_pids
        deadline = time.monotonic() + 30
        while len(tree_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the child's own start
        pids = tree_pids(proc.pid)
        tids = [int(t) for pid in pids for t in os.listdir(f"/proc/{pid}/task")]
        assert len(pids) == 2 and len(tids) >= 3
        cpus = os.sched_getaffinity(0)
        assert gate.pin_tree([proc.pid], {max(cpus)})
        assert {frozenset(os.sched_getaffinity(t)) for t in tids} == {frozenset({max(cpus)})}
        assert gate.pin_tree([proc.pid], cpus)
        assert {frozenset(os.sched_getaffinity(t)) for t in tids} == {frozenset(cpus)}
    finally:
        for pid in reversed(tree_pids(proc.pid)):
            os.kill(pid, signal.SIGKILL)
        proc.wait()


def _workers_of(root: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "gate_worker.py" in cmd and str(root) in cmd:
            pids.append(int(entry))
    return pids


def test_sigterm_stops_the_workers(repo):
    root = Path(repo["root"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernels", "compare", repo["base"], repo["docs"], "--run",
         "--rounds", "1000", "--busy-threshold", "1", "--config", str(root / "asv.conf.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _workers_of(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workers_of(root), "the gate never started its workers"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143  # 128 + SIGTERM, as for every kernelrace command
    deadline = time.monotonic() + 10
    while _workers_of(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workers_of(root) == []


def test_environment_is_this_python_when_it_satisfies_the_commit(tmp_path):
    assert gate.satisfied_here([])
    assert gate.satisfied_here(["pytest>=1"])
    assert not gate.satisfied_here(["pytest<1"])
    assert not gate.satisfied_here(["no-such-package-kernelrace-test"])
    assert gate.environment(["pytest>=1"], tmp_path, print) == sys.executable
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n'
                                             'dependencies = ["numpy>=1", "attrs"]\n')
    assert gate.requirements(tmp_path) == ["attrs", "numpy>=1"]
