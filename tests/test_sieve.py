"""The sieve: known values, every strategy against the reference, bad input, bench smoke."""

from __future__ import annotations

import importlib.util
import sys

import multiprocess
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import executors, registry, sieve
from kernels.sieve import jit, reference, vectorized

# Written out here (published values of pi(10**k)) rather than read from sieve.KNOWN_PI,
# so a typo there cannot make a wrong count look right.
KNOWN_PI = {
    10**k: v
    for k, v in enumerate([0, 4, 25, 168, 1229, 9592, 78498, 664579, 5761455, 50847534, 455052511])
}

HAVE_PRIMESIEVE = importlib.util.find_spec("primesieve") is not None

# Every (strategy, inner) that runs here, with the worker counts it accepts.
VARIANTS = [
    (strategy, inner, workers)
    for strategy, inner in registry.variants("sieve")
    for workers in ((1,) if strategy in sieve.SERIAL_STRATEGIES else (1, 2))
]


def expected(n: int) -> int:
    """pi(n) by the pure-Python reference."""
    return reference.count_range(0, n + 1, reference.sieving_primes(n + 1))


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    executors.shutdown_pools()


# ---------------------------------------------------------------------------
# Known values
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(1, 9))
def test_known_values_numba(k: int) -> None:
    n = 10**k
    assert sieve.count_primes(n, strategy="numba", workers=1) == KNOWN_PI[n]
    assert sieve.count_primes(n, strategy="numba", workers=2) == KNOWN_PI[n]


@pytest.mark.parametrize("k", range(1, 9))
def test_known_values_numpy(k: int) -> None:
    assert sieve.count_primes(10**k, strategy="numpy") == KNOWN_PI[10**k]


@pytest.mark.parametrize("k", range(1, 7))
def test_known_values_python(k: int) -> None:
    assert sieve.count_primes(10**k, strategy="python") == KNOWN_PI[10**k]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_known_value_1e9_numba(workers: int) -> None:
    assert sieve.count_primes(10**9, strategy="numba", workers=workers) == KNOWN_PI[10**9]


@pytest.mark.slow
def test_known_value_1e10_numba_two_workers() -> None:
    assert sieve.count_primes(10**10, strategy="numba", workers=2) == KNOWN_PI[10**10]


# ---------------------------------------------------------------------------
# Every strategy against independent checks
# ---------------------------------------------------------------------------


def test_the_kernels_table_of_known_values_agrees_with_this_one() -> None:
    assert all(sieve.KNOWN_PI[n] == v for n, v in KNOWN_PI.items())


def test_trial_division_agrees_with_the_table() -> None:
    assert [sieve.pi_by_trial_division(10**k) for k in range(4)] == [0, 4, 25, 168]


@pytest.mark.parametrize(("strategy", "inner", "workers"), VARIANTS)
def test_small_n_every_strategy_matches_trial_division(strategy, inner, workers) -> None:
    want = [sieve.pi_by_trial_division(n) for n in range(101)]
    got = [
        sieve.count_primes(n, strategy=strategy, inner=inner, workers=workers) for n in range(101)
    ]
    assert got == want


AGREEMENT_SIZES = (0, 1, 2, 30, 31, 65537 * 3 + 1, 10**6)


@pytest.mark.parametrize(("strategy", "inner", "workers"), VARIANTS)
def test_every_strategy_inner_and_worker_count_agrees_with_the_reference(
    strategy, inner, workers
) -> None:
    for n in AGREEMENT_SIZES:
        if n > sieve.max_size(strategy, inner):
            continue
        got = sieve.count_primes(n, strategy=strategy, inner=inner, workers=workers)
        assert got == expected(n), (strategy, inner, workers, n)


def test_cold_process_pool_gives_the_same_count() -> None:
    n = 65537 * 3 + 1
    got = sieve.count_primes(n, strategy="multiprocess", inner="numba", workers=2, reuse_pool=False)
    assert got == expected(n)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 2 * 10**6))
def test_random_n_numba_and_numpy_match_the_reference(n: int) -> None:
    want = expected(n)
    assert sieve.count_primes(n, strategy="numba", workers=1) == want
    assert sieve.count_primes(n, strategy="numba", workers=2) == want
    assert sieve.count_primes(n, strategy="numpy") == want


def _prefix_counts(limit: int) -> list[int]:
    """pre[m] = number of primes < m, for m in 0..limit (a plain list sieve, no chunks)."""
    flags = [True] * limit
    flags[0] = flags[1] = False
    for p in range(2, int(limit**0.5) + 1):
        if flags[p]:
            flags[p * p :: p] = [False] * len(range(p * p, limit, p))
    pre = [0]
    for f in flags:
        pre.append(pre[-1] + f)
    return pre


_PRE = _prefix_counts(6001)


@settings(max_examples=60, deadline=None)
@given(lo=st.integers(0, 3000), width=st.integers(-5, 3000))
def test_small_windows_every_chunk_kernel(lo: int, width: int) -> None:
    hi = lo + width
    want = _PRE[hi] - _PRE[lo] if hi > lo else 0
    primes = reference.sieving_primes(hi)
    for kernel in (reference.count_range, vectorized.count_range, jit.count_range):
        assert kernel(lo, hi, primes) == want, (kernel.__module__, lo, hi)



@settings(max_examples=40, deadline=None)
@given(
    lo=st.integers(0, 3 * 10**6),
    width=st.integers(0, 100_000),
    segment=st.sampled_from([8, 64, 200, 1024, 4096]),
)
def test_numba_kernel_with_small_segments_matches_the_reference(lo, width, segment) -> None:
    # With the default 32 KiB segment only n above ~1.7e7 has primes past segment/8, the
    # branchless classes (8, 4 and 2 steps); small segments put every class, and primes
    # longer than a whole segment, into windows the reference counts quickly.
    hi = lo + width
    primes = reference.sieving_primes(hi)
    want = reference.count_range(lo, hi, primes)
    assert jit.count_range(lo, hi, primes, segment=segment) == want


@pytest.mark.parametrize(("k", "segment"), [(6, 64), (7, 256), (7, 1024), (8, 4096)])
def test_numba_kernel_with_small_segments_known_values(k: int, segment: int) -> None:
    # Every class well filled, over thousands of segments: a prime that crosses one
    # time too few or too many in any segment changes the count.
    n = 10**k
    primes = reference.sieving_primes(n + 1)
    assert jit.count_range(0, n + 1, primes, segment=segment) == KNOWN_PI[n]


def _assert_chunk_kernels_match_the_reference(lo: int, hi: int, *, offsets) -> None:
    """numba and NumPy chunk kernels on [lo, hi) against the reference; ``offsets``: the
    dtype the numba kernel must pick for its crossing offsets there."""
    primes = reference.sieving_primes(hi)
    assert jit.offset_dtype(lo, hi, primes) == offsets
    want = reference.count_range(lo, hi, primes)
    assert jit.count_range(lo, hi, primes) == want
    assert vectorized.count_range(lo, hi, primes) == want


@settings(max_examples=15, deadline=None)
@given(offset=st.integers(0, 10**7), width=st.integers(0, 200_000))
def test_windows_near_1e11_match_the_reference(offset: int, width: int) -> None:
    # The chunk kernels take any [lo, hi), not only wheel-aligned bounds.
    lo = 10**11 + offset
    _assert_chunk_kernels_match_the_reference(lo, lo + width, offsets=np.uint32)


def test_offset_dtype_is_32_bit_up_to_1e11_and_64_bit_beyond() -> None:
    for n, want in [(10**6, np.uint32), (10**11, np.uint32), (2 * 10**11, np.int64),
                    (10**13, np.int64)]:
        primes = reference.sieving_primes(n + 1)
        assert jit.offset_dtype(0, n + 1, primes) == want
        # A narrow window high up still has offsets out to the largest prime's square.
        assert jit.offset_dtype(n - 1000, n + 1, primes) == want


@settings(max_examples=5, deadline=None)
@given(offset=st.integers(0, 10**6), width=st.integers(0, 20_000))
def test_windows_near_1e13_match_the_reference(offset: int, width: int) -> None:
    # Beyond ~1.2e11 the crossing offsets need 64 bits: the kernel's other dtype.
    lo = 10**13 + offset
    _assert_chunk_kernels_match_the_reference(lo, lo + width, offsets=np.int64)


def test_window_near_1e11_known_count() -> None:
    # Trial division is independent of every sieve and still quick for 100 numbers.
    lo, hi = 10**11, 10**11 + 100
    want = sum(1 for m in range(lo, hi) if all(m % d for d in range(2, int(m**0.5) + 1)))
    primes = reference.sieving_primes(hi)
    assert jit.count_range(lo, hi, primes) == want
    assert vectorized.count_range(lo, hi, primes) == want
    assert reference.count_range(lo, hi, primes) == want


# ---------------------------------------------------------------------------
# plan_ranges
# ---------------------------------------------------------------------------


def _check_plan(n: int, workers: int, max_span: int | None = None) -> None:
    ranges = sieve.plan_ranges(n, workers, max_span)
    assert ranges[0][0] == 0 and ranges[-1][1] == n + 1
    for (_, hi), (next_lo, _) in zip(ranges, ranges[1:], strict=False):
        assert hi == next_lo  # no gap, no overlap
    assert all(lo < hi for lo, hi in ranges)
    assert all(lo % 30 == 0 for lo, _ in ranges)  # no chunk splits a wheel row
    if max_span is None:
        assert len(ranges) <= max(1, workers * sieve.CHUNKS_PER_WORKER)
    else:  # bounded (Ctrl-C is honoured between ranges), to within the wheel's rounding
        assert max(hi - lo for lo, hi in ranges) < max_span + 30


@pytest.mark.parametrize("n", [0, 1, 2, 29, 30, 31, 65535, 65536, 10**6, 10**7 + 1, 10**12])
@pytest.mark.parametrize("workers", [1, 2, 3, 7, 16, 64])
def test_plan_ranges_covers_zero_to_n_exactly(n: int, workers: int) -> None:
    _check_plan(n, workers)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 10**13), workers=st.integers(1, 256))
def test_plan_ranges_random(n: int, workers: int) -> None:
    _check_plan(n, workers)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 10**10), workers=st.integers(1, 256), max_span=st.integers(2**20, 2**30))
def test_plan_ranges_bounded_span_random(n: int, workers: int, max_span: int) -> None:
    _check_plan(n, workers, max_span)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("strategy", ["numba", "threaded"])
def test_counts_in_many_bounded_ranges_are_exact(monkeypatch, strategy: str, workers: int) -> None:
    """The batches that let Ctrl-C through (small here, so that 10**6 makes dozens of
    them, and more than one prange call) give the same count."""
    monkeypatch.setitem(sieve.MAX_CHUNK_SPAN, "numba", 30 * 997)
    assert sieve.count_primes(10**6, strategy=strategy, workers=workers) == 78498
    assert sieve.count_primes(65_537, strategy=strategy, workers=workers) == 6543


# ---------------------------------------------------------------------------
# primesieve anchor
# ---------------------------------------------------------------------------


@pytest.mark.anchors
@pytest.mark.parametrize("workers", [1, 2])
def test_primesieve_matches_known_values(workers: int) -> None:
    pytest.importorskip("primesieve")
    for n in (0, 1, 2, 30, 31, 10**6, 10**8):
        want = KNOWN_PI[n] if n in KNOWN_PI else sieve.pi_by_trial_division(n)
        assert sieve.count_primes(n, strategy="primesieve", workers=workers) == want


@pytest.mark.skipif(HAVE_PRIMESIEVE, reason="primesieve is installed")
def test_primesieve_missing_gives_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match=r"primesieve.*not installed.*anchors"):
        sieve.count_primes(100, strategy="primesieve")


def test_primesieve_absent_is_reported_and_refused(monkeypatch) -> None:
    # None in sys.modules makes the import fail, as on a machine without the extra.
    monkeypatch.setitem(sys.modules, "primesieve", None)
    info = {i.name: i for i in registry.strategies("sieve")}["primesieve"]
    assert not info.available and "primesieve" in info.reason
    assert ("primesieve", None) not in registry.variants("sieve")
    with pytest.raises(RuntimeError, match=r"'primesieve' is unavailable.*pip install"):
        sieve.count_primes(100, strategy="primesieve")
    with pytest.raises(RuntimeError, match="primesieve"):
        sieve.make_case(100, strategy="primesieve")


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


BAD_INPUTS = [
    ({"n": -1}, ValueError, "n must be >= 0"),
    ({"n": 10.0}, TypeError, "n must be an int"),
    ({"n": 1e6}, TypeError, "n must be an int"),
    ({"n": True}, TypeError, "n must be an int"),
    ({"n": "100"}, TypeError, "n must be an int"),
    ({"n": None}, TypeError, "n must be an int"),
    ({"n": np.float64(100)}, TypeError, "n must be an int"),
    ({"strategy": "cuda"}, ValueError, "strategy must be one of"),
    ({"strategy": None}, ValueError, "strategy must be one of"),
    ({"inner": "rust"}, ValueError, "inner must be one of python, numpy, numba"),
    ({"workers": 0}, ValueError, "workers"),
    ({"workers": -1}, ValueError, "workers"),
    ({"workers": 1.5}, TypeError, "workers"),
    ({"workers": "2"}, TypeError, "workers"),
    ({"workers": True}, TypeError, "workers"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_INPUTS)
@pytest.mark.parametrize("strategy", ["multiprocess", "threaded"])
def test_bad_input_is_refused_before_any_pool_starts(
    kwargs, error, match, strategy, monkeypatch
) -> None:
    executors.shutdown_pools()

    def no_pool(*args, **kw):
        raise AssertionError("a pool was started before the arguments were checked")

    monkeypatch.setattr(executors, "get_executor", no_pool)
    monkeypatch.setattr(executors, "run_chunks", no_pool)
    call = {"n": 1000, "strategy": strategy, "inner": "numpy", "workers": 2, **kwargs}
    with pytest.raises(error, match=match):
        sieve.count_primes(call.pop("n"), **call)
    assert executors._pools == {}
    assert multiprocess.active_children() == []


def test_bad_input_starts_no_real_pool() -> None:
    # The same, without monkeypatching: nothing lands in the pool cache.
    executors.shutdown_pools()
    for kwargs in ({"workers": 0}, {"workers": 1.5}, {"inner": "rust"}):
        with pytest.raises((ValueError, TypeError)):
            sieve.count_primes(10**6, strategy="multiprocess", **kwargs)
    with pytest.raises(ValueError):
        sieve.count_primes(-5, strategy="multiprocess", workers=2)
    assert executors._pools == {}
    assert multiprocess.active_children() == []


def test_unknown_strategy_message_lists_every_strategy() -> None:
    with pytest.raises(ValueError) as info:
        sieve.count_primes(10, strategy="cuda")
    for name in sieve.STRATEGIES:
        assert name in str(info.value)
    assert "'cuda'" in str(info.value)


@pytest.mark.parametrize("strategy", ["multiprocess", "threaded"])
def test_unknown_inner_message_lists_every_inner(strategy: str) -> None:
    with pytest.raises(ValueError) as info:
        sieve.count_primes(10, strategy=strategy, inner="cython")
    for name in registry.INNERS:
        assert name in str(info.value)


@pytest.mark.parametrize("strategy", ["python", "numpy", "numba", "pipeline"])
def test_inner_is_refused_where_it_does_not_apply(strategy: str) -> None:
    with pytest.raises(ValueError, match="inner applies only"):
        sieve.count_primes(10, strategy=strategy, inner="numpy")


@pytest.mark.parametrize("strategy", sieve.SERIAL_STRATEGIES)
def test_serial_strategies_refuse_more_workers(strategy: str) -> None:
    with pytest.raises(ValueError, match="workers must be 1 or None"):
        sieve.count_primes(100, strategy=strategy, workers=2)
    # One worker, or None, is fine.
    assert sieve.count_primes(100, strategy=strategy, workers=1) == 25
    assert sieve.count_primes(100, strategy=strategy) == 25


def test_pipeline_refuses_large_n_with_a_clear_message() -> None:
    limit = sieve.PIPELINE_MAX_N
    assert sieve.count_primes(limit, strategy="pipeline") == expected(limit)
    with pytest.raises(ValueError, match=rf"n must be <= {limit} for strategy 'pipeline'"):
        sieve.count_primes(limit + 1, strategy="pipeline")


def test_numpy_integers_are_accepted() -> None:
    for n in (np.int64(1000), np.uint32(1000), np.int16(1000)):
        assert sieve.count_primes(n) == 168
        assert sieve.count_primes(n, strategy="numpy") == 168
    assert sieve.count_primes(np.uint64(10**6), strategy="numba", workers=np.int64(2)) == 78498
    assert sieve.count_primes(1000, strategy="threaded", workers=np.int32(2)) == 168


def test_count_range_of_an_empty_window_is_zero() -> None:
    primes = reference.sieving_primes(1000)
    for kernel in (reference.count_range, vectorized.count_range, jit.count_range):
        assert kernel(500, 500, primes) == 0
        assert kernel(600, 500, primes) == 0


# ---------------------------------------------------------------------------
# Harness hooks
# ---------------------------------------------------------------------------


def test_make_case_reports_correctness() -> None:
    case = sieve.make_case(10**6, strategy="numba", workers=2)
    count = case.run()
    assert case.describe(count, 0.01) == {"count": 78498, "correct": True}
    assert sieve.make_case(12345, strategy="numpy").describe(1, 0.1)["correct"] is None
    with pytest.raises(ValueError, match="options"):
        sieve.make_case(100, strategy="numba", preset="mha")


# ---------------------------------------------------------------------------
# Benchmarks (run once as plain tests under --benchmark-disable)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_bench_numba_1e7(benchmark, workers: int) -> None:
    sieve.count_primes(10**5, strategy="numba", workers=workers)  # JIT load out of the timing
    result = benchmark(sieve.count_primes, 10**7, strategy="numba", workers=workers)
    assert result == KNOWN_PI[10**7]


def test_bench_numpy_1e7(benchmark) -> None:
    result = benchmark(sieve.count_primes, 10**7, strategy="numpy")
    assert result == KNOWN_PI[10**7]


def test_bench_multiprocess_numba_warm_1e7(benchmark) -> None:
    sieve.count_primes(10**5, strategy="multiprocess", workers=2)  # pool start out of the timing
    result = benchmark(sieve.count_primes, 10**7, strategy="multiprocess", workers=2)
    assert result == KNOWN_PI[10**7]


# ---------------------------------------------------------------------------
# The minimum grain (issue 15): a second worker only above MIN_GRAIN numbers per worker
# ---------------------------------------------------------------------------

GRAIN_LABELS = [("numba", None), ("threaded", "numba"), ("threaded", "numpy"),
                ("multiprocess", "numba")]


@pytest.mark.parametrize(("strategy", "inner"), GRAIN_LABELS)
def test_below_the_grain_two_workers_run_one_with_the_same_count(monkeypatch, strategy, inner):
    label = registry.label(strategy, inner)
    n = 10**6
    monkeypatch.setitem(sieve.MIN_GRAIN, label, n + 1)  # one grain: below two workers' worth
    assert sieve.workers_used(n, strategy, inner, 2) == 1
    case = sieve.make_case(n, strategy=strategy, inner=inner, workers=2)
    assert case.fields["workers_used"] == 1
    assert case.run() == sieve.KNOWN_PI[n]
    # Above it (half of [0, n] per worker), both workers run, and the count stays.
    monkeypatch.setitem(sieve.MIN_GRAIN, label, (n + 1) // 2)
    assert sieve.workers_used(n, strategy, inner, 2) == 2
    assert sieve.make_case(n, strategy=strategy, inner=inner, workers=2).fields[
        "workers_used"] == 2
    assert sieve.count_primes(n, strategy=strategy, inner=inner, workers=2) == sieve.KNOWN_PI[n]


def test_below_the_grain_a_pool_gets_one_task_per_worker_used(monkeypatch) -> None:
    calls = []
    real = executors.run_chunks

    def spy(kind, fn, tasks, workers, **kw):
        calls.append((fn.__name__, len(tasks), workers))
        return real(kind, fn, tasks, workers, **kw)

    monkeypatch.setattr(executors, "run_chunks", spy)
    n = 10**6
    monkeypatch.setitem(sieve.MIN_GRAIN, "threaded:numba", n + 1)
    assert sieve.count_primes(n, strategy="threaded", workers=2) == sieve.KNOWN_PI[n]
    monkeypatch.setitem(sieve.MIN_GRAIN, "threaded:numba", 1)
    assert sieve.count_primes(n, strategy="threaded", workers=2) == sieve.KNOWN_PI[n]
    assert calls == [("_count_chunks", 1, 2), ("_count_chunk", 2 * sieve.CHUNKS_PER_WORKER, 2)]


def test_the_grid_sizes_use_the_workers_the_grains_allow() -> None:
    # Small inputs stay on one worker; the largest of the grid use two (issue 15).
    assert sieve.workers_used(10**6, "numba", None, 2) == 1
    assert sieve.workers_used(10**9, "numba", None, 2) == 2
    assert sieve.workers_used(10**9, "multiprocess", "numba", 2) == 2
    assert sieve.workers_used(10**9, "threaded", "python", 2) == 1  # the GIL: never
    assert sieve.workers_used(10**9, "numpy", None, 1) == 1
    assert sieve.workers_used(10**5, "numba", None, 3) == 1
