"""The asv suite's cold-start benchmarks: the code they hand to a fresh interpreter runs."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from kernels import registry

ROOT = Path(__file__).resolve().parents[1]
# Every kernel's suite, found as the kernels are: adding a kernel edits nothing here.
SUITES = [f"bench_{k}" for k in registry.kernel_names()
          if (ROOT / "benchmarks" / f"bench_{k}.py").exists()]


def _suite(name: str):
    """benchmarks.<name>, imported from this checkout (asv imports it by path too)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{name}")


def _timeraw(bench) -> str:
    """The name of a cold-start class's one ``timeraw_`` benchmark."""
    (name,) = [n for n in dir(bench) if n.startswith("timeraw_")]
    return name


@pytest.mark.parametrize("suite", SUITES)
def test_cold_start_code_runs_in_a_fresh_interpreter(suite: str) -> None:
    bench = _suite(suite).ColdStart()
    code = getattr(bench, _timeraw(bench))("numpy", 1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("suite", SUITES)
def test_compiling_variant_alone_gives_numba_an_empty_cache(suite: str) -> None:
    module = _suite(suite)
    if not hasattr(module, "ColdStartCompiling"):
        pytest.skip(f"{suite} has no compiling cold start")
    warm, compiling = module.ColdStart(), module.ColdStartCompiling()
    # The same benchmark name in both, so asv reports them side by side.
    assert _timeraw(warm) == _timeraw(compiling) == "timeraw_cold_start"
    assert "NUMBA_CACHE_DIR" not in warm.timeraw_cold_start("numba", 1)
    fresh = compiling.timeraw_cold_start("numba", 1)
    assert fresh.index("NUMBA_CACHE_DIR") < fresh.index("from kernels")


def test_paired_ratios_are_kept_per_round_and_asv_stores_their_median(monkeypatch) -> None:
    """The paired figures (Scaling, Anchor, ScheduleSpeedup) time both sides call by call
    through kernels.harness.timing: baseline/other per round. They return every round,
    in the form asv reads as samples, so the stored value is the median and its stats
    carry the rounds' spread and an interval."""
    from asv_runner.statistics import compute_stats

    from kernels.harness import timing

    common = _suite("common")
    now = [0.0]
    costs = iter([4.0, 1.0, 6.0, 2.0, 9.0, 1.0] * 2)  # rounds: 4x, 3x, 9x

    def call() -> None:
        now[0] += next(costs)

    monkeypatch.setattr(timing, "perf_counter", lambda: now[0])
    assert common.paired_ratios(call, call, 3) == [4.0, 3.0, 9.0]

    class Pair(common.Paired):
        ROUNDS = 3
        pair = [call, call]

    result = Pair().ratio()
    assert result == {"samples": [4.0, 3.0, 9.0], "number": 1}
    value, stats = compute_stats(result["samples"], result["number"])
    assert value == 4.0
    assert stats["repeat"] == 3 and stats["ci_99_a"] <= 3.0 and stats["ci_99_b"] >= 9.0
