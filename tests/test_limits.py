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
