"""Monte Carlo pi: exact agreement across executors, honest statistics, bad input, cleanup."""

from __future__ import annotations

import json
import math
import os
import tracemalloc

import numpy as np
import pytest
from _procs import alive as _alive
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import executors, registry
from kernels import montecarlo as mc
from kernels.montecarlo import jit, reference, vectorized

SAMPLES = 50_003  # ragged: 12 full chunks of 4096 and one of 851
CHUNK = 4096

# Every (strategy, inner) that runs a given chunk kernel.
RUNNERS = {
    kernel: [(kernel, None), ("threaded", kernel), ("multiprocess", kernel)]
    for kernel in registry.INNERS
}


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    executors.shutdown_pools()


# ---------------------------------------------------------------------------
# Exact agreement
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", registry.INNERS)
def test_every_executor_and_worker_count_gives_the_same_hits(kernel: str) -> None:
    want = mc.serial_hits(kernel, SAMPLES, 5, CHUNK)
    for strategy, inner in RUNNERS[kernel]:
        # python and numpy run on one core and refuse workers > 1 (as the sieve's do).
        for workers in (1,) if inner is None and kernel != "numba" else (1, 2):
            got = mc.estimate_pi(
                SAMPLES, strategy=strategy, inner=inner, workers=workers, seed=5, chunk_size=CHUNK
            )
            assert got.hits == want, (strategy, inner, workers)
            assert got.samples == SAMPLES


def test_numba_default_chunking_same_on_prange_threads_and_processes() -> None:
    samples = 3 * mc.DEFAULT_CHUNK_SIZE + 12_345
    results = {
        (s, i, w): mc.estimate_pi(samples, strategy=s, inner=i, workers=w, seed=11).hits
        for s, i in RUNNERS["numba"]
        for w in (1, 2)
    }
    assert len(set(results.values())) == 1, results


@settings(max_examples=40, deadline=None)
@given(
    samples=st.integers(1, 40_000),
    chunk_size=st.integers(1, 5_000),
    n_tasks=st.integers(1, 64),
    seed=st.integers(0, 2**64 - 1),
)
def test_grouping_chunks_into_tasks_does_not_change_hits(samples, chunk_size, n_tasks, seed):
    plan = mc._plan(samples, "threaded", 2, seed, "numba", chunk_size)
    grouped = sum(mc.run_task(t) for t in mc.make_tasks(plan, n_tasks))
    assert grouped == mc.serial_hits("numba", samples, seed, chunk_size)
    assert grouped == mc.estimate_pi(samples, seed=seed, chunk_size=chunk_size, workers=2).hits


@pytest.mark.parametrize("strategy", ["numba", "threaded"])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_batches_that_let_ctrl_c_through_do_not_change_hits(monkeypatch, strategy, workers):
    """Tasks and numba's prange calls are capped at MAX_TASK_SAMPLES (so that Ctrl-C is
    seen between them); small caps make many batches and the hits stay the same."""
    samples, chunk_size = 200_003, 1_000
    expected = mc.serial_hits("numba", samples, 5, chunk_size)
    monkeypatch.setitem(mc.MAX_TASK_SAMPLES, "numba", 7 * chunk_size + 3)
    plan = mc._plan(samples, strategy, workers, 5, None, chunk_size)
    assert all(t[3] <= 7 for t in mc.make_tasks(plan, 1))
    got = mc.estimate_pi(samples, strategy=strategy, workers=workers, seed=5,
                         chunk_size=chunk_size)
    assert got.hits == expected


@pytest.mark.parametrize("samples", [1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7])
def test_sample_counts_that_are_not_a_multiple_of_the_chunk_are_exact(samples: int) -> None:
    key = np.uint64(jit.seed_key(np.uint64(9)))
    lengths = [min(CHUNK, samples - start) for start in range(0, samples, CHUNK)]
    assert sum(lengths) == samples
    want = sum(int(jit.chunk_hits(key, i, n)) for i, n in enumerate(lengths))
    got = mc.estimate_pi(samples, strategy="numba", workers=2, seed=9, chunk_size=CHUNK)
    assert (got.hits, got.samples) == (want, samples)
    assert 0 <= got.hits <= samples
    assert got.pi == 4 * got.hits / samples


def test_numba_chunk_kernel_matches_its_python_recomputation() -> None:
    for seed, chunk, length in [(0, 0, 1000), (7, 3, 2001), (2**64 - 1, 2**32 - 1, 500)]:
        key = np.uint64(jit.seed_key(np.uint64(seed)))
        assert int(key) == reference.splitmix_key(seed)
        assert int(jit.chunk_hits(key, chunk, length)) == reference.splitmix_chunk_hits(
            seed, chunk, length
        )
        assert int(jit.draw(key, np.uint64(5))) == reference.splitmix_draw(int(key), 5)


def test_numpy_chunk_kernel_matches_its_python_recomputation() -> None:
    # Longer than one sub-block, so the block loop and its ragged end are covered.
    length = vectorized.BLOCK + 1234
    assert vectorized.chunk_hits(3, 2, length) == reference.pcg64_chunk_hits(3, 2, length)


def test_chunk_streams_match_seedsequence_spawn() -> None:
    children = np.random.SeedSequence(42).spawn(3)
    for i, child in enumerate(children):
        a = np.random.PCG64(child).random_raw(8)
        b = vectorized.chunk_generator(42, i).random_raw(8)
        assert np.array_equal(a, b)


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

STAT_SEEDS = (0, 1, 2, 3, 12345)


@pytest.mark.parametrize("seed", STAT_SEEDS)
@pytest.mark.parametrize(
    ("strategy", "inner", "samples"),
    [
        ("python", None, 50_000),
        ("numpy", None, 10**6),
        ("numba", None, 10**6),
        ("threaded", "numba", 10**6),
        ("multiprocess", "numpy", 10**6),
    ],
)
def test_estimate_within_five_standard_errors(strategy, inner, samples, seed) -> None:
    workers = 1 if strategy in ("python", "numpy") else 2  # the one-core strategies take 1
    r = mc.estimate_pi(samples, strategy=strategy, inner=inner, workers=workers, seed=seed)
    assert abs(r.error_in_stderr) <= 5.0, r
    p = r.hits / r.samples
    assert r.stderr == pytest.approx(4 * math.sqrt(p * (1 - p) / samples))
    assert r.generator == mc.generator_name(inner or strategy)


def test_different_seeds_give_different_streams() -> None:
    hits = {mc.estimate_pi(10**5, seed=s, workers=1).hits for s in range(8)}
    assert len(hits) > 4


def _draws(chunk: int, n: int, seed: int = 0) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    jit.fill_draws(np.uint64(jit.seed_key(np.uint64(seed))), chunk << 32, out)
    return out


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def _chi_square_ok(stat: float, df: int) -> bool:
    # Normal approximation, 6 sigma: a sound generator fails about once in 10**9 runs.
    return stat < df + 6.0 * math.sqrt(2.0 * df)


def test_numba_generator_buckets_are_uniform() -> None:
    r = _draws(chunk=1, n=10**6)
    x = (r & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2**32
    y = (r >> np.uint64(32)).astype(np.float64) / 2**32
    for u in (x, y):
        counts = np.bincount((u * 100).astype(np.int64), minlength=100)
        assert _chi_square_ok(_chi_square(counts), 99), counts
    # The pairs (x, y) that make one sample, on a 16 x 16 grid.
    cells = (x * 16).astype(np.int64) * 16 + (y * 16).astype(np.int64)
    assert _chi_square_ok(_chi_square(np.bincount(cells, minlength=256)), 255)
    # Low bits too: the top bits are not the only ones used.
    low = np.bincount((r & np.uint64(0xFF)).astype(np.int64), minlength=256)
    assert _chi_square_ok(_chi_square(low), 255)


def test_numba_generator_successive_draws_are_uncorrelated() -> None:
    n = 10**6
    r = _draws(chunk=2, n=n)
    u = (r >> np.uint64(11)).astype(np.float64) / 2**53
    limit = 5.0 / math.sqrt(n)  # 5 standard errors of a correlation of zero
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < limit
    x = (r & np.uint64(0xFFFFFFFF)).astype(np.float64)
    y = (r >> np.uint64(32)).astype(np.float64)
    assert abs(np.corrcoef(x, y)[0, 1]) < limit
    # Neighbouring chunks, draw by draw.
    other = (_draws(chunk=3, n=n) >> np.uint64(11)).astype(np.float64) / 2**53
    assert abs(np.corrcoef(u, other)[0, 1]) < limit


def test_numba_chunks_never_share_draws() -> None:
    a, b = _draws(chunk=0, n=2**16), _draws(chunk=1, n=2**16)
    assert len(np.intersect1d(a, b)) == 0
    assert len(np.unique(a)) == len(a)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"samples": 0}, ValueError, "samples"),
        ({"samples": -5}, ValueError, "samples"),
        ({"samples": 1.0}, TypeError, "samples"),
        ({"samples": 1e6}, TypeError, "samples"),
        ({"samples": True}, TypeError, "samples"),
        ({"samples": "1000"}, TypeError, "samples"),
        ({"samples": None}, TypeError, "samples"),
        ({"samples": 2**70}, ValueError, "samples"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**64}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"seed": None}, TypeError, "seed"),
        ({"seed": False}, TypeError, "seed"),
        ({"strategy": "cuda"}, ValueError, "strategy"),
        ({"strategy": "numba", "inner": "numpy"}, ValueError, "inner"),
        ({"strategy": "threaded", "inner": "rust"}, ValueError, "inner"),
        ({"workers": 0}, ValueError, "workers"),
        ({"workers": 1.5}, TypeError, "workers"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chunk_size": 2**33}, ValueError, "chunk_size"),
        ({"samples": 2**40, "chunk_size": 16}, ValueError, "chunk_size"),
    ],
)
@pytest.mark.parametrize("strategy", ["multiprocess", "threaded"])
def test_bad_input_is_refused_before_any_pool_starts(
    kwargs, error, name, strategy, monkeypatch
) -> None:
    def no_pool(*args, **kw):
        raise AssertionError("a pool was started before the arguments were checked")

    monkeypatch.setattr(executors, "get_executor", no_pool)
    monkeypatch.setattr(executors, "run_chunks", no_pool)
    call = {"samples": 1000, "strategy": strategy, **kwargs}
    with pytest.raises(error, match=name):
        mc.estimate_pi(call.pop("samples"), **call)


def test_numpy_integers_are_accepted() -> None:
    a = mc.estimate_pi(np.int64(10_000), seed=np.uint64(3), workers=np.int32(1))
    b = mc.estimate_pi(10_000, seed=3, workers=1)
    assert a == b


# ---------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_process_pool_leaves_no_children() -> None:
    executors.shutdown_pools()
    mc.estimate_pi(SAMPLES, strategy="multiprocess", inner="numpy", workers=2, chunk_size=CHUNK)
    pool = executors._pools[("processes", 2)]
    pids = pool.pids()
    assert pids and all(_alive(p) for p in pids)
    executors.shutdown_pools()
    assert not any(_alive(p) for p in pids)


def test_numpy_chunk_memory_stays_bounded() -> None:
    vectorized.chunk_hits(0, 0, 1000)  # imports and first-call allocations out of the way
    tracemalloc.start()
    try:
        mc.estimate_pi(3 * 10**6, strategy="numpy", workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------
# Harness hooks
# ---------------------------------------------------------------------------


def test_make_case_describes_the_estimate() -> None:
    case = mc.make_case(200_000, strategy="threaded", inner="numba", workers=2, seed=4)
    result = case.run()
    row = case.describe(result, 0.002)
    assert row["hits"] == result.hits
    assert row["pi"] == result.pi and row["stderr"] == result.stderr
    assert row["error_in_stderr"] == pytest.approx((result.pi - math.pi) / result.stderr)
    assert row["ns_per_sample"] == pytest.approx(10.0)
    # One chunk: one worker runs it, and the per-core figure counts that one.
    assert case.fields["workers_used"] == 1
    assert row["ns_per_sample_per_core"] == pytest.approx(10.0)
    split = mc.make_case(200_000, strategy="threaded", inner="numba", workers=2, seed=4,
                         chunk_size=1 << 14)
    assert split.fields["workers_used"] == (2 if 200_000 >= 2 * mc.MIN_GRAIN["threaded:numba"]
                                            else 1)
    serial = mc.make_case(1000, strategy="numpy", workers=1)
    assert serial.describe(serial.run(), 1e-6)["ns_per_sample_per_core"] == pytest.approx(1.0)


def test_make_case_refuses_unknown_options_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="preset"):
        mc.make_case(1000, strategy="numba", preset="mha")
    with pytest.raises(ValueError, match="samples"):
        mc.make_case(0, strategy="numba")
    with pytest.raises(ValueError, match="seed"):
        mc.make_case(10, strategy="numba", seed=-3)


def test_registry_lists_every_strategy() -> None:
    # distributed: the Dask executor's strategy (kernels/distributed.py), every kernel's.
    assert mc.STRATEGIES == ("python", "numpy", "numba", "threaded", "multiprocess",
                             "distributed")
    assert all(mc.unavailable_reason(s) is None for s in mc.STRATEGIES)
    available = [s for s in mc.STRATEGIES if registry.unavailable_reason(mc, s) is None]
    assert len(registry.variants("montecarlo")) == 3 + 3 * (len(available) - 3)


@pytest.mark.parametrize(
    ("strategy", "inner", "workers"),
    [
        ("python", None, 1),
        ("numba", None, 2),
        ("threaded", "numpy", 2),
        ("multiprocess", "numba", 2),
    ],
)
def test_verify_passes(strategy, inner, workers) -> None:
    checks = mc.verify(strategy, inner, workers)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_cli_run_shows_estimate_and_error(capsys) -> None:
    from kernels.harness.cli import main

    argv = (
        "run --kernel montecarlo --strategy numpy --strategy numba --size 100003"
        " --workers 1 --repeat 1 --warmup 0 --seed 3 --json"
    )
    code = main(argv.split())
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["strategy"] for r in rows] == ["numpy", "numba"]
    for r in rows:
        assert r["seed"] == 3 and abs(r["error_in_stderr"]) <= 5
        assert r["pi"] == 4 * r["hits"] / 100003


def test_bench_numba_warm(benchmark) -> None:
    mc.estimate_pi(10**5, workers=1)
    result = benchmark(mc.estimate_pi, 10**6, strategy="numba", workers=1)
    assert abs(result.error_in_stderr) <= 5


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "inner"), [("numba", None), ("multiprocess", "numba")])
def test_large_run_within_five_standard_errors(strategy, inner) -> None:
    r = mc.estimate_pi(10**9, strategy=strategy, inner=inner, workers=2, seed=2024)
    assert abs(r.error_in_stderr) <= 5.0, r


@pytest.mark.slow
def test_large_numpy_run_within_five_standard_errors() -> None:
    r = mc.estimate_pi(10**8, strategy="numpy", workers=1, seed=7)
    assert abs(r.error_in_stderr) <= 5.0, r


def test_process_pool_workers_can_compile_numba_from_scratch(tmp_path) -> None:
    """Pool workers with an empty JIT cache must compile (a fresh install, an asv env)."""
    import subprocess
    import sys

    code = (
        "from kernels.montecarlo import estimate_pi\n"
        "print(estimate_pi(100_003, strategy='multiprocess', inner='numba', workers=2,"
        " chunk_size=4096).hits)\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip()) == mc.serial_hits("numba", 100_003, 0, 4096)


# ---------------------------------------------------------------------------
# The minimum grain (issue 15): a second worker only above MIN_GRAIN samples per worker
# ---------------------------------------------------------------------------

GRAIN_LABELS = [("numba", None), ("threaded", "numba"), ("threaded", "numpy"),
                ("multiprocess", "numba")]


@pytest.mark.parametrize(("strategy", "inner"), GRAIN_LABELS)
def test_below_the_grain_two_workers_run_one_with_the_same_hits(monkeypatch, strategy, inner):
    label = registry.label(strategy, inner)
    chunk = 1 << 12
    samples = 40 * chunk + 17  # 41 chunks, a ragged last one
    monkeypatch.setitem(mc.MIN_GRAIN, label, samples)  # one grain: below two workers' worth
    kw = dict(strategy=strategy, inner=inner, chunk_size=chunk)
    assert mc.workers_used(samples, workers=2, **kw) == 1
    case = mc.make_case(samples, strategy=strategy, inner=inner, workers=2, seed=21,
                        chunk_size=chunk)
    assert case.fields["workers_used"] == 1
    want = mc.serial_hits(inner or strategy, samples, 21, chunk)
    assert case.run().hits == want
    assert mc.estimate_pi(samples, workers=1, seed=21, **kw).hits == want
    # Above it (half the samples per worker), both workers run, and the hits stay.
    monkeypatch.setitem(mc.MIN_GRAIN, label, samples // 2)
    assert mc.workers_used(samples, workers=2, **kw) == 2
    assert mc.estimate_pi(samples, workers=2, seed=21, **kw).hits == want


def test_below_the_grain_a_pool_gets_one_task_per_worker_used(monkeypatch) -> None:
    calls = []
    real = executors.run_chunks

    def spy(kind, fn, tasks, workers, **kw):
        calls.append((fn.__name__, len(tasks), workers))
        return real(kind, fn, tasks, workers, **kw)

    monkeypatch.setattr(executors, "run_chunks", spy)
    chunk = 1 << 12
    samples = 64 * chunk
    monkeypatch.setitem(mc.MIN_GRAIN, "threaded:numba", samples)
    hits = mc.estimate_pi(samples, strategy="threaded", workers=2, chunk_size=chunk).hits
    monkeypatch.setitem(mc.MIN_GRAIN, "threaded:numba", 1)
    assert mc.estimate_pi(samples, strategy="threaded", workers=2, chunk_size=chunk).hits == hits
    assert calls == [("run_tasks", 1, 2), ("run_task", 2 * mc.TASKS_PER_WORKER, 2)]


def test_one_chunk_never_takes_two_workers() -> None:
    assert mc.workers_used(10**6, strategy="numba", workers=2) == 1  # < one 2**20 chunk
    assert mc.workers_used(10**6, strategy="python", workers=1) == 1
    assert mc.workers_used(10**9, strategy="threaded", inner="python", workers=2) == 1  # GIL
