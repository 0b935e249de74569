"""How ``make bench`` runs asv: ``--launch-method forkserver`` through
``kernels.harness.asvrun``, on a tiny asv project made here.

- A benchmark process forked by asv's server runs its ``atexit`` callbacks (the pools'
  shutdown) before asv's ``os._exit``, as a spawned one does at its end
  (``benchmarks.common.exit_cleanly_after_fork``); a process it forks does not.
- SIGTERM (``timeout``, a CI cancellation) stops the run with exit 143, and neither the
  server nor the benchmark process it forked is left running. asv alone, killed by
  SIGTERM, leaves its server waiting on its socket for ever.
- ``kernelrace compare --run-asv`` runs asv through it too, and, stopped alone, stops
  asv with SIGTERM instead of killing it, so asv stops the point it runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _repo import asv_env, git

pytest.importorskip("asv")

ROOT = Path(__file__).resolve().parents[1]

SUITE = '''
import atexit, os, sys, time

sys.path.insert(0, {root!r})
import benchmarks.common  # kernelrace's suite module: it hooks asv's forkserver

OUT = {out!r}


def _say(text):
    with open(OUT, "a") as f:
        f.write(text + "\\n")


atexit.register(lambda: _say(f"atexit {{os.getpid()}}"))


class Quick:
    def track_forks(self):
        _say(f"child {{os.getpid()}} {{os.getppid()}}")
        pid = os.fork()
        if pid == 0:  # a process the benchmark forks: no atexit callbacks at its os._exit
            _say(f"grandchild {{os.getpid()}}")
            os._exit(0)
        os.waitpid(pid, 0)
        return 1


class Slow:
    timeout = 300

    def track_sleep(self):
        _say(f"slow {{os.getpid()}} {{os.getppid()}}")
        time.sleep(120)
        return 1
'''


def _lines(out: Path, word: str) -> list[list[int]]:
    if not out.exists():
        return []
    return [[int(x) for x in line.split()[1:]] for line in out.read_text().splitlines()
            if line.startswith(word + " ")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "events.txt"
    (tmp_path / "home").mkdir()
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "__init__.py").write_text("")
    (tmp_path / "suite" / "bench_exit.py").write_text(
        textwrap.dedent(SUITE.format(root=str(ROOT), out=str(out))))
    (tmp_path / "asv.conf.json").write_text(json.dumps({
        "version": 1, "project": "tiny", "repo": ".", "branches": ["main"],
        "environment_type": "virtualenv", "benchmark_dir": "suite",
        "results_dir": "results/asv", "html_dir": "results/html", "env_dir": ".asv/env",
    }))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "tiny"]):
        git(tmp_path, *args)
    subprocess.run([sys.executable, "-m", "asv", "machine", "--yes", "--machine", "t"],
                   cwd=tmp_path, env=asv_env(tmp_path / "home"), check=True, capture_output=True,
                   timeout=120)
    return tmp_path, out


def _asvrun(root: Path, bench: str) -> subprocess.Popen:
    head = git(root, "rev-parse", "HEAD")
    return subprocess.Popen(
        [sys.executable, "-m", "kernels.harness.asvrun", "run", "--python=same",
         "--launch-method", "forkserver", "--machine", "t", "--set-commit-hash", head,
         "--show-stderr", "--bench", bench],
        cwd=root, env=asv_env(root / "home"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def test_a_forked_benchmark_runs_its_atexit_callbacks_and_sigterm_leaves_nothing(
        project: tuple[Path, Path]) -> None:
    root, out = project
    run = _asvrun(root, "Quick")
    log, _ = run.communicate(timeout=120)
    assert run.returncode == 0, log[-2000:]
    [(child, server)] = _lines(out, "child")
    [(grandchild,)] = _lines(out, "grandchild")
    at_exit = {pid for (pid,) in _lines(out, "atexit")}
    assert child in at_exit  # the forked benchmark process ran its callbacks
    assert grandchild not in at_exit  # a process it forked did not
    assert not _alive(server)

    run = _asvrun(root, "Slow")
    deadline = time.monotonic() + 120
    while not _lines(out, "slow") and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    [(slow, server)] = _lines(out, "slow")
    run.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    log, _ = run.communicate(timeout=60)
    assert run.returncode == 143, log[-2000:]
    assert time.monotonic() - t0 < 30
    deadline = time.monotonic() + 10
    while (_alive(slow) or _alive(server)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(slow) and not _alive(server), log[-2000:]


STOPPED_COMPARE = '''
import sys
from kernels.harness import compare, termination

termination.sigterm_raises()
compare.ASV_STOP_S = (0.5, 60.0)
try:
    compare._asv(sys.argv[2:], sys.argv[1])
except termination.Terminated:
    sys.exit(143)
'''


def test_kernelrace_compare_stopped_alone_stops_its_asv_and_the_point_it_runs(
        project: tuple[Path, Path]) -> None:
    """``kernelrace compare --run-asv`` runs asv (spawned points, asv's default) through
    asvrun: a SIGTERM to kernelrace alone, not to its process group, reaches asv as
    SIGTERM and asv stops its benchmark process. Killed outright (as ``subprocess.run``
    does on an exception), asv left that process sleeping to its end."""
    root, out = project
    head = git(root, "rev-parse", "HEAD")
    run = subprocess.Popen(
        [sys.executable, "-c", STOPPED_COMPARE, str(root / "asv.conf.json"), "run",
         "--python=same", "--machine", "t", "--set-commit-hash", head, "--bench", "Slow"],
        cwd=root, env=asv_env(root / "home"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    deadline = time.monotonic() + 120
    while not _lines(out, "slow") and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
    [(slow, _)] = _lines(out, "slow")
    run.send_signal(signal.SIGTERM)
    log, _ = run.communicate(timeout=90)
    assert run.returncode == 143, log[-2000:]
    deadline = time.monotonic() + 10
    while _alive(slow) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(slow), log[-2000:]
