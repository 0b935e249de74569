"""The memory budget (issue 16, item 2): a case too big for the machine is refused before
anything is allocated or any pool starts, with the bytes it needs and the bytes there are.

The tests use ``KERNELRACE_MEMORY_BUDGET`` or patch what :mod:`kernels.memory` reads, so
nothing large is ever allocated.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels import attention as A
from kernels import executors, memory, sieve
from kernels import shared_memory as shared
from kernels.attention import cache as cache_mod

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
GQA_BYTES_PER_TOKEN = 2 * 8 * 128 * 4  # K and V, 8 KV heads of 128, float32


@pytest.fixture(scope="module", autouse=True)
def _close_pools():
    yield
    executors.shutdown_pools()


@pytest.fixture
def no_allocation(monkeypatch):
    """Fail the test if any cache array or shared segment is allocated."""
    def refuse(*args, **kwargs):
        raise AssertionError("allocated despite the memory budget")

    monkeypatch.setattr(cache_mod._CacheBase, "_alloc", refuse)
    monkeypatch.setattr(shared.SharedArray, "__init__", refuse)


def _fake_machine(monkeypatch, *, ram: int, shm: int) -> None:
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    monkeypatch.setattr(memory, "mem_available", lambda: ram)
    monkeypatch.setattr(memory, "shm_available", lambda path=memory.SHM_PATH: shm)


@pytest.mark.parametrize(("strategy", "inner"), [("multiprocess", "numba"), ("numba", None)])
def test_oversized_cache_refused_before_allocation(monkeypatch, no_allocation, strategy, inner):
    monkeypatch.setenv(memory.ENV_VAR, str(MiB))
    before = set(shared.leftover_segments(os.getpid()))
    children = set(multiprocessing.active_children())
    size = 10**6
    needed = f"{size * GQA_BYTES_PER_TOKEN:,} bytes"
    for call in (A.check_case, A.make_case):
        with pytest.raises(memory.MemoryBudgetError) as info:
            call(size, strategy=strategy, inner=inner, workers=2, preset="gqa")
        text = str(info.value)
        assert needed in text and f"{MiB:,} bytes" in text, text
        assert f"size={size}" in text and memory.ENV_VAR in text
        assert ("/dev/shm" in text) == (strategy == "multiprocess")
    assert isinstance(info.value, MemoryError) and isinstance(info.value, ValueError)
    assert set(shared.leftover_segments(os.getpid())) - before == set()
    assert set(multiprocessing.active_children()) - children == set()


def test_cache_constructor_refuses_before_allocation(monkeypatch, no_allocation):
    monkeypatch.setenv(memory.ENV_VAR, str(MiB))
    for kwargs in ({"shared": True}, {"shared": False}):
        with pytest.raises(memory.MemoryBudgetError, match=r"capacity=4096 tokens x batch=2"):
            A.make_cache(A.PRESETS["gqa"], capacity=4096, batch=2, **kwargs)


def test_headroom_is_80_percent_of_mem_available(monkeypatch, no_allocation):
    _fake_machine(monkeypatch, ram=100 * MiB, shm=10**15)
    limit = int(100 * MiB * memory.HEADROOM)
    over = limit // GQA_BYTES_PER_TOKEN + 1
    under = limit // GQA_BYTES_PER_TOKEN - 64
    A.check_case(under, strategy="numba", workers=1, preset="gqa")
    with pytest.raises(memory.MemoryBudgetError) as info:
        A.check_case(over, strategy="numba", workers=1, preset="gqa")
    text = str(info.value)
    assert f"{over * GQA_BYTES_PER_TOKEN:,} bytes" in text
    assert f"{100 * MiB:,} bytes" in text and f"{limit:,} bytes" in text
    assert "MemAvailable" in text and "80%" in text


def test_shared_segments_checked_against_dev_shm(monkeypatch, no_allocation):
    _fake_machine(monkeypatch, ram=10**15, shm=100 * MiB)
    size = 100 * MiB // GQA_BYTES_PER_TOKEN  # fits in RAM, not in 80% of /dev/shm
    A.check_case(size, strategy="numba", workers=1, preset="gqa")
    with pytest.raises(memory.MemoryBudgetError, match=r"free space of /dev/shm") as info:
        A.check_case(size, strategy="multiprocess", inner="numba", workers=2, preset="gqa")
    assert f"{100 * MiB:,} bytes" in str(info.value)


def test_numpy_step_scores_counted(monkeypatch):
    """The NumPy kernel's scores [batch, heads, T] are part of the case (MLA: twice)."""
    c = A.PRESETS["mla-v3"]
    temp = A.step_temp_nbytes(c, 1000, 2, np.float32, "threaded", "numpy", "absorbed")
    assert temp == 2 * 2 * c.n_heads * 1000 * 4
    assert A.step_temp_nbytes(c, 1000, 2, np.float32, "numba", None, "absorbed") == 0
    assert A.step_temp_nbytes(c, 1000, 2, np.float32, "numpy", None, "naive") == 0


def test_private_cache_copy_for_multiprocess_refused(monkeypatch):
    before = set(shared.leftover_segments(os.getpid()))
    with A.make_cache(A.PRESETS["gqa"], capacity=64) as cache:
        A.fill_random(cache, 64, seed=3)
        q = A.random_query(cache)
        monkeypatch.setenv(memory.ENV_VAR, str(64 * 1024))
        with pytest.raises(memory.MemoryBudgetError, match=r"shared-memory copy"):
            A.decode(cache, q, strategy="multiprocess", inner="numba", workers=2)
        A.decode(cache, q, strategy="numba", workers=1)  # no copy, nothing to refuse
    assert set(shared.leftover_segments(os.getpid())) - before == set()
    assert not shared.live_segments()


def _run_cli(size: str, env: dict[str, str]) -> tuple[int, str, list[str]]:
    """``kernelrace run`` of an attention case at ``size`` on multiprocess:numba: its exit
    status, its stderr and the segments it left (named after its pid: another test
    process's segments are not its leftovers)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernels", "run", "--kernel", "attention",
         "--strategy", "multiprocess:numba", "--size", size],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, shared.leftover_segments(proc.pid)


def test_cli_refuses_with_exit_2_and_leaves_no_segment():
    code, err, left = _run_cli("1e5", dict(os.environ, **{memory.ENV_VAR: "1000000"}))
    assert code == 2, err
    assert f"{10**5 * GQA_BYTES_PER_TOKEN:,} bytes" in err
    assert "1,000,000 bytes" in err and "Traceback" not in err
    assert left == []


def test_cli_issue_case_refused_by_the_real_budget():
    """The issue's command: 1e9 tokens is 7.45 TiB of gqa cache, beyond any machine here."""
    code, err, left = _run_cli("1e9", {k: v for k, v in os.environ.items()
                                       if k != memory.ENV_VAR})
    assert code == 2, err
    assert "8,192,000,000,000 bytes" in err and "/dev/shm" in err
    assert left == []


def test_normal_sizes_pass(monkeypatch):
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    before = set(shared.leftover_segments(os.getpid()))
    for strategy, inner in [("multiprocess", "numba"), ("numba", None)]:
        A.check_case(8192, strategy=strategy, inner=inner, workers=2, preset="gqa")
        case = A.make_case(1024, strategy=strategy, inner=inner, workers=2, preset="gqa")
        try:
            assert np.isfinite(case.run()).all()
        finally:
            case.close()
    assert set(shared.leftover_segments(os.getpid())) - before == set()


def test_sieve_budget(monkeypatch):
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    assert sieve.count_primes(10**6, strategy="numba", workers=1) == 78498
    # The estimate covers the base primes it really builds.
    primes = sieve.reference.sieving_primes(10**10 + 1)
    assert sieve.memory_nbytes(10**10, "numba", None, 1) > primes.nbytes + 10**5
    monkeypatch.setenv(memory.ENV_VAR, str(MiB))
    with pytest.raises(memory.MemoryBudgetError, match=r"n=1000000000000000") as info:
        sieve.count_primes(10**15, strategy="multiprocess", inner="numba", workers=2)
    assert f"{MiB:,} bytes" in str(info.value)
    with pytest.raises(ValueError, match="lower n"):
        sieve.check_case(10**15, strategy="numba", workers=1)


def test_budget_variable_must_be_a_byte_count(monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "lots")
    with pytest.raises(ValueError, match=memory.ENV_VAR):
        memory.check("x", 10)
