"""The benchmarks: the code the asv suite's cold-start benchmarks hand to a fresh interpreter
runs, and the roofline figures script times what it says."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
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


def test_the_race_times_every_call_each_round_in_a_changing_order(monkeypatch) -> None:
    """benchmarks.common.race: one sample of every call per round, the order turned by one
    place each round and reversed every other round; a call shorter than the sample time
    is repeated and divided, and one shorter than the warm-up limit gets one untimed call
    just before its sample."""
    from kernels.harness import timing

    common = _suite("common")
    now = [0.0]
    order: list[str] = []

    def call(name: str, cost: float):
        def run() -> None:
            order.append(name)
            now[0] += cost
        return run

    monkeypatch.setattr(timing, "perf_counter", lambda: now[0])
    calls = {"a": call("a", 0.02), "b": call("b", 0.001), "c": call("c", 0.01)}
    times = common.race(calls, rounds=3, sample_s=0.005, warm_s=0.015)
    assert times == {"a": pytest.approx([0.02] * 3), "b": pytest.approx([0.001] * 3),
                     "c": pytest.approx([0.01] * 3)}
    timed = [k for i, k in enumerate(order) if i >= 3 and order[i - 1] != k or i == 3]
    assert timed == ["a", "b", "c", "a", "c", "b", "c", "a", "b"]
    # b: sized once, then per round one warm-up and 5 calls of 1 ms (a 5 ms sample);
    # c: sized once, then a warm-up and one call; a (20 ms, past warm_s): one call.
    assert (order.count("b"), order.count("c"), order.count("a")) == (19, 7, 4)


def test_the_race_sleeps_off_a_calls_settle_time_untimed(monkeypatch) -> None:
    """A call with ``settle_s`` (a BLAS matmul, whose threads spin on after it) is
    followed by that much sleep after its sizing call and after each sample, and the
    sleep is charged to no call: the next call's sample starts after it."""
    from kernels.harness import timing

    common = _suite("common")
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    def call(cost: float):
        def run() -> None:
            now[0] += cost
        return run

    monkeypatch.setattr(timing, "perf_counter", lambda: now[0])
    monkeypatch.setattr(common.time, "sleep", sleep)
    matmul = call(0.1)
    matmul.settle_s = 0.2
    times = common.race({"step": call(0.06), "matmul": matmul}, rounds=3,
                        sample_s=0.005, warm_s=0.05)
    assert times == {"step": pytest.approx([0.06] * 3), "matmul": pytest.approx([0.1] * 3)}
    assert [s for s in slept if s] == [0.2] * 4  # once sized, then after each of 3 samples


def test_race_ratios_divide_round_by_round_within_one_group_and_skip_or_fail() -> None:
    common = _suite("common")

    class Over(common.RaceRatio):
        def sides(self, group: str, a: str, b: str) -> tuple:
            return group, (a,), (b,)

    raced = {"groups": {"g": {"times": {("x",): [4.0, 6.0, 9.0], ("y",): [2.0, 2.0, 3.0]},
                              "failed": {("z",): "RuntimeError: boom"}},
                        "h": {"times": {("x",): [1.0, 1.0, 1.0]}, "failed": {}}},
             "failed": {"dead": "exit -9"}}
    r = Over()
    r.setup(raced, "g", "x", "y")
    assert r.ratio() == {"samples": [2.0, 3.0, 3.0], "number": 1}
    assert r.ratio(scale=100) == {"samples": [200.0, 300.0, 300.0], "number": 1}
    assert r.keys == [("x",), ("y",)] and r.raced is raced["groups"]["g"]
    with pytest.raises(NotImplementedError):  # asv's skip: not raced there
        r.setup(raced, "g", "x", "w")
    with pytest.raises(NotImplementedError):  # y was raced in g, not in h: never mixed
        r.setup(raced, "h", "x", "y")
    with pytest.raises(RuntimeError, match="boom"):  # a point that failed fails its ratios
        r.setup(raced, "g", "z", "x")
    with pytest.raises(RuntimeError, match="exit -9"):  # and so does a group's process
        r.setup(raced, "dead", "x", "y")


def test_each_group_races_in_a_fresh_interpreter_and_a_failed_one_is_named() -> None:
    import os

    common = _suite("common")
    raced = common.race_groups("tests._race_fixture", ["a", "boom", "b", "crash"])
    assert set(raced["groups"]) == {"a", "b"}
    pids = {raced["groups"][g]["times"][(g, "pid")][0] for g in ("a", "b")}
    assert len(pids) == 2 and os.getpid() not in pids
    assert "this group cannot be raced" in raced["failed"]["boom"]
    assert raced["failed"]["crash"].startswith("exit 3")


@pytest.mark.parametrize("suite", SUITES)
def test_a_suites_race_runs_once_and_its_keys_are_the_time_benchmarks_points(suite) -> None:
    """Every ratio class of a suite names the same setup_cache function, so asv runs the
    race once for all of them (its cache key is the function's file and line), and not
    another suite's. The keys a ratio reads are points of the suite's time benchmark, in
    its parameter order, so the report joins each ratio to its row; where a suite races
    the points of several time benchmarks (attention), a key starts with the name of the
    benchmark's class. The read pass (``READ``) and the matmul pass (``MATMUL``) may
    stand in the strategy's place."""
    from asv_runner.benchmarks._base import get_setup_cache_key

    module = _suite(suite)
    common = _suite("common")
    ratios = [c for c in vars(module).values()
              if isinstance(c, type) and issubclass(c, common.RaceRatio)
              and c is not common.RaceRatio and not c.__name__.startswith("_")]  # as asv
    assert {"VersusNumpy", "Scaling"} <= {c.__name__ for c in ratios}
    keys = {get_setup_cache_key(c().setup_cache) for c in ratios}
    assert len(keys) == 1 and suite in keys.pop()
    (time_class,) = [c for c in vars(module).values() if isinstance(c, type)
                     and c.__module__ == module.__name__ and c.__name__.startswith("Time")
                     and c.__name__ in ("TimeCountPrimes", "TimeEstimatePi", "TimeDecode",
                                        "TimeRender")]
    passes = [getattr(module, name) for name in ("READ", "MATMUL") if hasattr(module, name)]
    for cls in ratios:
        first = [values[0] for values in cls.params]
        group, *keys = cls().sides(*first)
        assert group == first[cls.param_names.index("strategy")]  # each strategy's own race
        for key in keys:
            timed = time_class
            if isinstance(key[0], str) and key[0].startswith("Time"):
                timed, key = getattr(module, key[0]), key[1:]
                assert set(cls.param_names) <= set(timed.param_names)
            grid = list(timed.params)
            at = timed.param_names.index("strategy")
            grid[at] = [*grid[at], *passes]
            assert len(key) == len(grid)
            assert all(v in values for v, values in zip(key, grid, strict=True)), key


def test_a_race_holds_numpy_on_one_worker_the_strategy_and_its_anchors() -> None:
    common = _suite("common")
    assert common.race_members("numba") == [("numpy", 1), ("numba", 1), ("numba", 2)]
    assert common.race_members("numba", ("primesieve",)) == [
        ("numpy", 1), ("numba", 1), ("numba", 2), ("primesieve", 1), ("primesieve", 2)]
    # numpy's BLAS threads at 2 workers only ever share a process with numpy's own race
    assert common.race_members("numpy") == [("numpy", 1), ("numpy", 2)]


def test_a_size_where_only_the_baseline_runs_is_not_raced() -> None:
    """race_point: the baseline alone (the group's strategy skipped at this size) has no
    ratio and is not timed, nor are the baseline and a read pass without the group's
    strategy (``needs``); with the strategy it is, and a failure is kept by key."""
    common = _suite("common")
    runs: list[str] = []

    def make(name: str, workers: int):
        if name == "python" and workers == 2:
            common.skip("one core")
        if name == "broken":
            raise ValueError("no")
        return lambda: runs.append(name)

    raced = {"times": {}, "failed": {}}
    common.race_point([("numpy", 1), ("python", 2), ("broken", 1)], make, raced)
    assert raced["times"] == {} and runs == []
    assert raced["failed"] == {("broken", 1): "ValueError: no"}
    # With needs: the baseline and a read pass without the group's strategy are not raced.
    common.race_point([("numpy", 1), ("read", 1), ("python", 2)], make, raced,
                      needs=[("python", 2)])
    assert raced["times"] == {} and runs == []
    common.race_point([("numpy", 1), ("numba", 2)], make, raced, needs=[("numba", 2)])
    assert set(raced["times"]) == {("numpy", 1), ("numba", 2)}
    assert all(len(v) == common.RACE_ROUNDS for v in raced["times"].values())


def test_each_attention_table_has_the_step_counts_of_its_own_calls() -> None:
    """Every attention time table with a preset has a step-cost class whose parameters are
    its own less strategy and workers (the report joins the one sharing the most), and
    the counts are those of the table's calls: a naive MLA step is counted as naive, a
    batch of 8 as 8 sequences. Before, ``TimeMLA`` joined the batch-1 absorbed counts."""
    from kernels import attention
    from kernels.attention import config as attention_config

    module = _suite("bench_attention")
    costs = {c.TIME: c for c in vars(module).values() if isinstance(c, type)
             and issubclass(c, module._TableCost) and c is not module._TableCost}
    assert set(costs) == {module.TimeDecode, module.TimeMLA, module.TimeDecodeBatch8}
    for time_class, cost in costs.items():
        names = [n for n in time_class.param_names if n not in ("strategy", "workers")]
        assert cost.param_names == names
        assert list(cost.params) == [time_class.params[time_class.param_names.index(n)]
                                     for n in names]
    # TimeDecodeDtype has no class of its own: StepCost's counts are its, float32 weights.
    dtype_names = set(module.TimeDecodeDtype.param_names)
    assert set(module.StepCost.param_names) < dtype_names
    mla, v3 = attention.PRESETS["mla"], attention.PRESETS["mla-v3"]
    naive = module.StepCostMLA().track_step_flops("mla", "naive", 8192)
    assert naive == attention_config.step_cost(mla, 8192, mla_impl="naive").flops
    assert naive > 50 * module.StepCostMLA().track_step_flops("mla", "absorbed", 8192)
    assert module.StepCostMLA().track_step_flops("mla-v3", "absorbed", 1024) == (
        attention_config.step_cost(v3, 1024).flops)
    gqa = attention.PRESETS["gqa"]
    assert module.StepCostBatch8().track_step_flops("gqa") == (
        8 * attention_config.step_cost(gqa, 8192).flops)
    assert module.StepCostBatch8().track_weight_bytes("mla") == (
        attention_config.step_cost(mla, 8192).weight_bytes)
    assert module.StepCost().track_step_flops("mqa", 32768) == (
        attention_config.step_cost(attention.PRESETS["mqa"], 32768).flops)


def test_attention_races_the_matmul_pass_only_where_a_step_can_be_compute_bound(
        monkeypatch) -> None:
    """The matmul pass joins a race point at the longest context of presets whose step
    does at least COMPUTE_INTENSITY FLOP per byte (MQA, MLA: not GQA or MHA, at most 2),
    never in torch's race; ShareOfMatmul's grid is cut to those points; and a group's
    race times the pass with its FLOPs and the step's analytic FLOPs beside it, so that
    the share is the step's GFLOP/s over the matmul's in the same rounds."""
    from kernels import attention

    module = _suite("bench_attention")
    mm = module.MATMUL
    with_mm = [tuple(k[:-2]) for keys in module._race_points("numba") for k in keys
               if k[-2] == mm and k[-1] == 1]
    assert ("TimeDecode", "mqa", 32768) in with_mm and ("TimeDecode", "mla", 32768) in with_mm
    assert not any(p[0] == "TimeDecode" and p[1] in ("gqa", "mha") for p in with_mm)
    assert not any(p[0] == "TimeDecode" and p[2] != 32768 for p in with_mm)
    assert ("TimeMLA", "mla", "absorbed", 8192) in with_mm
    assert not any(k[-2] == mm for keys in module._race_points("torch") for k in keys)
    for preset in ("gqa", "mha"):
        cost = attention.step_cost(attention.PRESETS[preset], 32768)
        assert cost.intensity < module.COMPUTE_INTENSITY
    assert module.ShareOfMatmul.params[:2] == (["mqa", "mla"], [32768])
    assert "torch" not in module.ShareOfMatmul.params[2]
    assert module.ShareOfMatmulMLA.params[2] == [8192]

    # One small point, for real, with a small matmul.
    from kernels.harness import probes

    class Small(probes.MatmulStream):
        settle_s = 0.001

        def __init__(self, n: int = 64, workers: int = 1) -> None:
            super().__init__(64, workers)

    monkeypatch.setattr(module, "MatmulStream", Small)
    point = [("TimeDecode", "mqa", 1024, "numpy", 1), ("TimeDecode", "mqa", 1024, mm, 1)]
    monkeypatch.setattr(module, "_race_points", lambda label: [point])
    raced = module.race_group("numpy")
    assert set(raced["times"]) == set(point)
    assert raced["flops"][point[1]] == 2 * 64**3
    assert raced["flops"][point[0]] == attention.step_cost(attention.PRESETS["mqa"], 1024).flops
    share = module.ShareOfMatmul()
    share.setup({"groups": {"numpy": raced}, "failed": {}}, "mqa", 1024, "numpy", 1)
    step_t, mm_t = raced["times"][point[0]], raced["times"][point[1]]
    expected = [100 * (raced["flops"][point[0]] / s) / (2 * 64**3 / m)
                for s, m in zip(step_t, mm_t, strict=True)]
    assert share.track_share_of_matmul(None)["samples"] == pytest.approx(expected)


def test_roofline_figures_times_a_step_after_the_layer_before() -> None:
    """benchmarks.roofline_figures: warm, each timed step follows an untimed one over the
    other cache; cold, the step is timed alone. And a tiny run of its rounds gives a
    share of roofline per round from the same rounds' matmul and read."""
    from kernels.harness.probes import ReadStream

    figures = _suite("roofline_figures")
    calls: list[str] = []

    class Side:
        def __init__(self, name: str) -> None:
            self.name = name

        def run(self) -> None:
            calls.append(self.name)

    warm = figures._after_layer_before(Side("timed"), Side("before"))
    assert warm() >= 0 and calls == ["before", "timed"]
    calls.clear()
    cold = figures._after_layer_before(Side("timed"), Side("before"), warm=False)
    assert cold() >= 0 and calls == ["timed"]
    with warnings.catch_warnings():  # torch, where installed, loads after numba's threads
        warnings.simplefilter("ignore", RuntimeWarning)
        r = figures.preset_rounds("mqa", 256, 1, 2, ReadStream(1 << 22, 1))
    assert r["bound"] in ("memory", "compute") and r["numba_ms"][0] > 0
    assert 0 < r["roofline_share"][0] < 10 and r["matmul_gflops"][0] > 0
