"""Upper bounds (issue 16, items 3 and 6): sizes and worker counts past what the kernels
can honour are refused up front, naming the parameter and the range; thread pools of
worker counts no longer in use are released."""

from __future__ import annotations

import threading

import pytest

from kernels import executors


@pytest.fixture(autouse=True)
def _close_pools():
    yield
    executors.shutdown_pools()


# ---------------------------------------------------------------------------
# workers
# ---------------------------------------------------------------------------


def test_max_workers_is_a_multiple_of_the_cores() -> None:
    assert executors.max_workers() == max(8, 4 * executors.cpu_count())
    top = executors.max_workers()
    assert executors.resolve_workers(top) == top


@pytest.mark.parametrize("extra", [1, 10**6])
def test_workers_above_the_ceiling_name_the_range(extra: int) -> None:
    too_many = executors.max_workers() + extra
    with pytest.raises(ValueError, match=rf"workers must be <= {executors.max_workers()}.*cores"):
        executors.resolve_workers(too_many)


def _kernelrace_threads() -> int:
    return sum(t.name.startswith("kernelrace") for t in threading.enumerate())


def test_thread_pools_of_old_worker_counts_are_released() -> None:
    executors.shutdown_pools()
    before = _kernelrace_threads()
    for workers in range(1, 8):
        # Enough tasks that every worker thread of the pool starts.
        executors.run_chunks("threads", abs, list(range(-64, 0)), workers)
    kept = [key for key in executors._pools if key[0] == "threads"]
    assert kept == [("threads", w) for w in (5, 6, 7)]
    assert _kernelrace_threads() - before <= 5 + 6 + 7
    # A pool in use again moves to the end and survives the next new count.
    executors.run_chunks("threads", abs, [1], 5)
    executors.run_chunks("threads", abs, [1], 2)
    assert [key for key in executors._pools if key[0] == "threads"] == [
        ("threads", 7), ("threads", 5), ("threads", 2)]
    executors.shutdown_pools()
    assert _kernelrace_threads() == before


def test_every_kernel_refuses_too_many_workers_before_any_pool_starts() -> None:
    from kernels import attention, montecarlo, sieve

    executors.shutdown_pools()
    too_many = executors.max_workers() + 1
    with pytest.raises(ValueError, match="workers must be <="):
        sieve.count_primes(1000, strategy="threaded", workers=too_many)
    with pytest.raises(ValueError, match="workers must be <="):
        montecarlo.estimate_pi(1000, strategy="multiprocess", workers=too_many)
    with pytest.raises(ValueError, match="workers must be <="):
        attention.check_case(16, strategy="threaded", workers=too_many)
    assert executors._pools == {}


# ---------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["python", "numpy", "numba", "threaded", "multiprocess"])
@pytest.mark.parametrize("n", [2**62 + 1, 12345678901234567168, 10**20])
def test_sieve_n_past_2_62_is_refused_up_front(strategy: str, n: int) -> None:
    from kernels import sieve

    before = dict(executors._pools)  # pools an earlier test in this process left open
    with pytest.raises(ValueError, match=r"n must be <= 2\*\*62"):
        sieve.count_primes(n, strategy=strategy)
    with pytest.raises(ValueError, match=r"n must be <= 2\*\*62"):
        sieve.check_case(n, strategy=strategy)
    assert executors._pools == before  # refused before any pool started


def test_sieve_pipeline_limit_is_checked_by_the_case_before_it_runs() -> None:
    from kernels import sieve

    with pytest.raises(ValueError, match="'pipeline'"):
        sieve.make_case(sieve.PIPELINE_MAX_N + 1, strategy="pipeline")


@pytest.mark.parametrize("samples", [2**62 + 1, 10**20])
def test_montecarlo_samples_past_2_62_are_refused(samples: int) -> None:
    from kernels import montecarlo

    with pytest.raises(ValueError, match=r"samples must be an int in \[1, "):
        montecarlo.estimate_pi(samples)
    assert montecarlo.check_samples(2**62) == 2**62


@pytest.mark.parametrize("strategy", ["python", "numpy"])
def test_montecarlo_one_core_strategies_refuse_workers_as_the_sieve_does(strategy: str) -> None:
    from kernels import montecarlo, sieve

    for kernel_call in (
        lambda w: sieve.count_primes(100, strategy=strategy, workers=w),
        lambda w: montecarlo.estimate_pi(1000, strategy=strategy, workers=w),
    ):
        with pytest.raises(ValueError, match=f"strategy '{strategy}' runs on one core"):
            kernel_call(2)
        kernel_call(1)
        kernel_call(None)  # None means the one core here
    assert montecarlo.make_case(1000, strategy=strategy, workers=None).run().samples == 1000
    # verify (and so `kernelrace verify`, which asks for 2 workers) runs them on one.
    assert all(c.ok for c in montecarlo.verify(strategy, None, 2))


# ---------------------------------------------------------------------------
# API numbers: no truncation, no bool as a number
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "error"), [(1.7, TypeError), (True, TypeError), (-1, ValueError),
                        (2**64, ValueError), ("3", TypeError)])
def test_attention_seed_is_an_int_in_range(seed, error) -> None:
    from kernels import attention

    with pytest.raises(error, match=r"seed must be an int in \[0, 2\*\*64 - 1\]"):
        attention.make_case(16, strategy="numpy", seed=seed)


@pytest.mark.parametrize("theta", [True, False, "500000"])
def test_rope_theta_is_a_number_not_a_bool_or_text(theta) -> None:
    from kernels.attention import KVConfig

    with pytest.raises(TypeError, match="rope_theta must be a number"):
        KVConfig(n_heads=4, n_kv_heads=1, head_dim=8, rope_theta=theta)
    assert KVConfig(n_heads=4, n_kv_heads=1, head_dim=8, rope_theta=5e5).rope_theta == 5e5


def test_runner_refuses_zero_repeats_before_any_work() -> None:
    from kernels.harness import runner

    points = runner.grid(["numpy"], [1000], [1])
    for kwargs, name in (({"repeat": 0, "warmup": 1}, "repeat"),
                         ({"repeat": 1, "warmup": -3}, "warmup"),
                         ({"repeat": 1.5, "warmup": 0}, "repeat")):
        with pytest.raises(ValueError, match=name):
            list(runner.run_grid("sieve", points, options={}, **kwargs))
