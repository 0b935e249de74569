"""Calls by address (:mod:`kernels.native`): the right function, its exceptions, and a
driver that does not carry its callee's code."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from numba import njit, prange

import kernels.attention as A
from kernels import native
from kernels.attention import jit

decode_module = importlib.import_module("kernels.attention.decode")


@njit(nogil=True)
def _scaled_sum(x, factor, out, i):
    if factor < 0:
        raise ValueError("negative factor")
    out[i] = x.sum() * factor


@njit(nogil=True)
def _driver(fn, x, factor, out):
    for i in range(out.shape[0]):
        native.call(fn, (x, factor + i, out, i))


@njit(parallel=True, nogil=True)
def _parallel_driver(fn, x, factor, out):
    for i in prange(out.shape[0]):
        native.call(fn, (x, factor, out, i))


def test_the_function_at_the_address_runs_on_the_arguments():
    x = np.arange(10.0)
    out = np.zeros(3)
    fn = native.address(_scaled_sum, (x, 2.0, out, 0))
    _driver(fn, x, 2.0, out)
    assert out.tolist() == [90.0, 135.0, 180.0]
    out[:] = 0
    _parallel_driver(fn, x, 2.0, out)
    assert out.tolist() == [90.0, 90.0, 90.0]


def test_one_address_per_argument_type():
    x64, x32 = np.arange(4.0), np.arange(4, dtype=np.float32)
    out = np.zeros(1)
    a = native.address(_scaled_sum, (x64, 1.0, out, 0))
    assert native.address(_scaled_sum, (np.ones(7), 5.0, np.ones(2), 1)) == a
    b = native.address(_scaled_sum, (x32, 1.0, out, 0))
    assert a and b and a != b
    assert len(_scaled_sum.signatures) == 2


def test_an_exception_in_the_callee_is_raised_by_the_caller():
    x, out = np.arange(3.0), np.zeros(1)
    fn = native.address(_scaled_sum, (x, 1.0, out, 0))
    with pytest.raises(ValueError, match="negative factor"):
        _driver(fn, x, -1.0, out)


@njit(nogil=True)
def _by_name(x, factor, out):
    for i in range(out.shape[0]):
        _scaled_sum(x, factor, out, i)


def _fresh_llvm(dispatcher, *args):
    """The LLVM IR of ``dispatcher``'s function compiled afresh for ``args`` (code loaded
    from numba's cache cannot be inspected)."""
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    fresh = njit(**options)(dispatcher.py_func)
    fresh(*args)
    return fresh.inspect_llvm(fresh.signatures[0])


def test_a_driver_holds_a_call_not_its_callees_code():
    """The point of the call by address: the attention step's parallel driver holds a
    call, not the chunk kernel compiled again (8 s more per cache type for GQA)."""
    x, out = np.arange(3.0), np.zeros(2)
    assert "_scaled_sum" in _fresh_llvm(_by_name, x, 1.0, out)  # linked in, by name
    fn = native.address(_scaled_sum, (x, 1.0, out, 0))
    assert "_scaled_sum" not in _fresh_llvm(_driver, fn, x, 1.0, out)
    with A.make_cache(A.SMALL_CONFIGS["gqa-small"], capacity=64) as cache:
        A.fill_random(cache, 64)
        problem = decode_module.Problem(cache, A.random_query(cache), None)
        kernel, head, tail, dv = problem._numba_kernel(cache.arrays())
        assert kernel is jit.partial_jit
        out = np.empty(problem.q1.shape[:2] + (dv,), problem.dtype)
        code = _fresh_llvm(jit.fused, jit.fused_address(kernel, head, tail, out), head, tail,
                           64, 2, out)
    assert "merge_partials" in code and "partial_jit" not in code
