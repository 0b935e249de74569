"""Attention decode: every strategy against the float64 reference, the cache's contracts,
no K/V repetition for grouped heads, and no shared memory left behind."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import kernels.attention as A
from kernels import executors, registry
from kernels import shared_memory as shared
from kernels.attention.reference import reference_decode

VARIANTS = registry.variants("attention", available_only=False)
TORCH_MISSING = A.unavailable_reason("torch")


def _skip_unavailable(strategy: str) -> None:
    if A.unavailable_reason(strategy):
        pytest.skip(A.unavailable_reason(strategy))


def _filled(config, length, *, batch=1, capacity=None, shared_mem=False, seed=0):
    cache = A.make_cache(config, capacity=capacity or length, batch=batch, shared=shared_mem)
    A.fill_random(cache, length, seed=seed)
    return cache


def _close_enough(got: np.ndarray, want: np.ndarray) -> None:
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * max(1.0, scale) + 2e-4 * scale)


def _label(v):
    return registry.label(*v)


# ---------------------------------------------------------------------------
# correctness
# ---------------------------------------------------------------------------

SMALL = [
    (name, impl)
    for name, c in A.SMALL_CONFIGS.items()
    for impl in (A.MLA_IMPLS if isinstance(c, A.MLAConfig) else (None,))
]


@pytest.mark.parametrize("variant", VARIANTS, ids=_label)
@pytest.mark.parametrize("small", SMALL, ids=lambda s: f"{s[0]}-{s[1] or 'kv'}")
@pytest.mark.parametrize("length,batch,capacity", [(1, 1, 1), (37, 2, 40), (129, 1, 129)])
def test_small_configs_match_reference(variant, small, length, batch, capacity):
    """T=1, odd T that 2 workers split unevenly, B>1, T below and at capacity."""
    strategy, inner = variant
    _skip_unavailable(strategy)
    name, impl = small
    cache = _filled(A.SMALL_CONFIGS[name], length, batch=batch, capacity=capacity,
                    shared_mem=strategy == "multiprocess")
    with cache:
        q = A.random_query(cache)
        want = reference_decode(cache, q)  # MLA: its definition (naive), float64
        for workers in (1, 2):
            got = A.decode(cache, q, strategy=strategy, inner=inner, workers=workers,
                           mla_impl=impl)
            assert got.shape == (batch, cache.config.n_heads, cache.config.out_dim)
            _close_enough(got, want)


@pytest.mark.parametrize("variant", VARIANTS, ids=_label)
@pytest.mark.parametrize("preset", list(A.PRESETS))
def test_real_presets_tiny_context(variant, preset):
    strategy, inner = variant
    _skip_unavailable(strategy)
    config = A.PRESETS[preset]
    impls = A.MLA_IMPLS if isinstance(config, A.MLAConfig) else (None,)
    with _filled(config, 5, capacity=6) as cache:
        q = A.random_query(cache)
        want = reference_decode(cache, q)
        for impl in impls:
            got = A.decode(cache, q, strategy=strategy, inner=inner, workers=2, mla_impl=impl)
            _close_enough(got, want)


def test_mla_absorbed_reference_equals_naive_definition():
    with _filled(A.SMALL_CONFIGS["mla-small"], 20, batch=2) as cache:
        q = A.random_query(cache)
        np.testing.assert_allclose(
            reference_decode(cache, q, "absorbed"), reference_decode(cache, q, "naive"),
            rtol=1e-10, atol=1e-12,
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_weight_products_equal_numpys_matmul(dtype):
    """The numba strategy's W_UK and W_UV products (jit.absorb, jit.project: heads in
    parallel) against NumPy's batched matmul, which the other strategies use."""
    from kernels.attention import jit

    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 5, 16)).astype(dtype)
    w_uk = rng.standard_normal((5, 16, 24)).astype(dtype)
    got = np.empty((2, 5, 24), dtype)
    jit.absorb(q, w_uk, got)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, (q[:, :, None, :] @ w_uk)[:, :, 0, :], rtol=tol, atol=tol)
    o = rng.standard_normal((2, 5, 24)).astype(dtype)
    w_uv = rng.standard_normal((5, 8, 24)).astype(dtype)
    got = np.empty((2, 5, 8), dtype)
    jit.project(o, w_uv, got)
    want = (o[:, :, None, :] @ w_uv.transpose(0, 2, 1))[:, :, 0, :]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_wide_blocks_hold_whole_score_tiles():
    """partial_wide's blocks are whole multiples of its score tile's token rows, so a full
    block never falls back to one-token tiles; and at most BLOCK tokens."""
    from kernels import simd
    from kernels.attention import wide

    for g in (simd.LANES, 2 * simd.LANES, 16 * simd.LANES):
        rows = wide._S2[0] if g % (2 * simd.LANES) == 0 else wide._S1[0]
        n = wide.block_tokens(g)
        assert n % rows == 0 and wide.BLOCK - rows < n <= wide.BLOCK


def test_gqa_head_mapping_is_grouped_not_tiled():
    """Query head h reads KV head h // group: make each KV head's values a constant."""
    c = A.KVConfig(n_heads=8, n_kv_heads=2, head_dim=4)
    cache = A.make_cache(c, capacity=3)
    for _ in range(3):
        k = np.zeros((1, 2, 4), np.float32)
        v = np.stack([np.full(4, 10.0), np.full(4, 20.0)])[None].astype(np.float32)
        cache.append(k, v)
    q = A.random_query(cache)
    for strategy in ("python", "numpy", "numba"):
        out = A.decode(cache, q, strategy=strategy, workers=1)
        np.testing.assert_allclose(out[0, :4], 10.0, rtol=1e-6)
        np.testing.assert_allclose(out[0, 4:], 20.0, rtol=1e-6)


def test_rope_rotates_keys_on_entry():
    c = A.KVConfig(n_heads=1, n_kv_heads=1, head_dim=4)
    cache = A.make_cache(c, capacity=2)
    k = np.array([[[1.0, 0.0, 0.0, 0.0]]], np.float32)
    cache.append(k, k)
    cache.append(k, k)
    np.testing.assert_allclose(cache.k[0, 0, 0], [1, 0, 0, 0], atol=1e-7)  # position 0
    np.testing.assert_allclose(cache.k[0, 0, 1], [np.cos(1), 0, np.sin(1), 0], atol=1e-6)
    np.testing.assert_array_equal(cache.v[0, 0, 1], k[0, 0])  # values are not rotated


@pytest.mark.parametrize("name", ["gqa", "mla"])
def test_the_decode_rotation_refuses_a_query_that_is_not_finite(name):
    """decode checks the query for NaN and infinity in its rotation pass (not NumPy's
    isfinite), in the copied columns (MLA's first ones) and the rotated ones alike."""
    from kernels.attention.decode import rotated_query

    c = A.PRESETS[name]
    for column in (0, c.query_dim // 2, c.query_dim - 1):
        for bad in (np.nan, np.inf, -np.inf):
            q = np.ones((1, c.n_heads, c.query_dim), np.float32)
            q[0, c.n_heads - 1, column] = bad
            with pytest.raises(ValueError, match="NaN or infinity"):
                rotated_query(c, q, 5)
    assert np.isfinite(rotated_query(c, np.ones((1, c.n_heads, c.query_dim)), 5)).all()


@pytest.mark.parametrize("name", ["gqa", "mla", "mla-v3"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_the_decode_rotation_is_the_reference_rotation(name, dtype):
    """decode rotates the query in one compiled pass; the reference by apply_rope. MLA
    rotates its tail in adjacent pairs and copies the rest; the others rotate halves."""
    from kernels.attention.config import query_rope, rotate_query
    from kernels.attention.decode import rotated_query

    c = A.PRESETS[name]
    start, interleaved, _ = query_rope(c)
    assert (start, interleaved) == ((0, False) if name == "gqa" else (c.qk_nope_head_dim, True))
    q = np.random.default_rng(3).standard_normal((2, c.n_heads, c.query_dim)).astype(dtype)
    for position in (0, 1, 777, 32767, 10**6):
        want = rotate_query(c, q, position)
        got = rotated_query(c, q, position)
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * float(np.abs(want).max()))
        np.testing.assert_array_equal(got[..., :start], q[..., :start])
        if position:  # rotated: no longer the query
            assert not np.allclose(got[..., start:], q[..., start:])


@pytest.mark.parametrize("name", list(A.SMALL_CONFIGS))
def test_float64_caches_decode_with_every_local_strategy(name):
    """A float64 cache computes in float64 (its states and output too): numba's chunk
    kernel keeps its scalar tiles there, and compiles for it (it once did not: the
    float32 register tiles in the same function failed to type)."""
    impls = A.MLA_IMPLS if name.startswith("mla") else (None,)
    cache = A.make_cache(A.SMALL_CONFIGS[name], capacity=70, batch=2, dtype="float64")
    A.fill_random(cache, 70, seed=2)
    q = A.random_query(cache, seed=3)
    want = reference_decode(cache, q)
    for impl in impls:
        for strategy, inner in (("numpy", None), ("numba", None), ("threaded", "numba")):
            got = A.decode(cache, q, strategy=strategy, inner=inner, workers=2, mla_impl=impl)
            assert got.dtype == np.float64, (strategy, impl)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


_PLAN_CASES = [(n, None) for n in ("mha-small", "gqa-small", "mqa-small", "mqa-wide", "gqa",
                                    "mqa")] + \
    [(n, impl) for n in ("mla-small", "mla-wide", "mla") for impl in (None, "naive")]


def _append_random(cache, rng):
    c, B = cache.config, cache.batch
    if isinstance(cache, A.KVCache):
        shapes = [(B, c.n_kv_heads, c.head_dim)] * 2
    else:
        shapes = [(B, c.kv_lora_rank), (B, c.qk_rope_head_dim)]
    cache.append(*(rng.standard_normal(s).astype(cache.dtype) for s in shapes))


@pytest.mark.parametrize(("name", "impl"), _PLAN_CASES,
                         ids=[f"{n}{'-' + i if i else ''}" for n, i in _PLAN_CASES])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16", "int8"])
def test_the_numba_plan_is_the_general_path_bit_for_bit(name, impl, dtype):
    """A numba step runs from a plan kept per cache, workers and MLA path
    (decode._Plan: the query rotated, scaled and cast in one pass, the kernel's address
    found once): the same output, bit for bit, as the general path (rotated_query,
    Problem, Problem.fused), at 1, 2 and all workers, over a cache that grows between
    steps, with a float16 query too; MLA absorbed (the default) and naive."""
    D = sys.modules["kernels.attention.decode"]
    config = A.SMALL_CONFIGS.get(name) or A.PRESETS[name]
    cache = A.make_cache(config, capacity=150, batch=2, dtype=dtype)
    A.fill_random(cache, 130, seed=4)
    rng = np.random.default_rng(5)
    path = D.check_mla_impl(cache, impl)
    for qdtype in (np.float32, np.float16):
        q = A.random_query(cache, seed=6).astype(qdtype)
        for workers in (1, 2, None):
            for _ in range(2):
                got = A.decode(cache, q, strategy="numba", workers=workers, mla_impl=impl)
                w = executors.resolve_workers(workers)
                used = D.workers_used(config, cache.length, cache.batch, cache.kv_dtype,
                                      "numba", None, w, path)
                q_rot = D.rotated_query(config, q, cache.length - 1)
                with executors.limit_threads(used, pools=False):
                    want = D.Problem(cache, q_rot, path, parallel=True).fused(
                        used, cache.arrays())
                assert got.dtype == want.dtype == cache.dtype
                np.testing.assert_array_equal(got, want)
                _append_random(cache, rng)
    assert set(D._PLANS[cache]) == {(int, 1, type(impl), impl), (int, 2, type(impl), impl),
                                    (type(None), None, type(impl), impl)}


def test_the_plan_workers_match_workers_used_and_bad_arguments_still_fail():
    """The plan's worker count is decode.workers_used's for the numba strategy at every
    length (it splits as asked: no minimum grain); a plan made for workers=1 does not let
    workers=True through, and the argument errors are the general path's."""
    D = sys.modules["kernels.attention.decode"]
    with _filled(A.SMALL_CONFIGS["gqa-small"], 3, capacity=8) as cache:
        q = A.random_query(cache)
        A.decode(cache, q, strategy="numba", workers=1)
        with pytest.raises(TypeError, match="bool"):
            A.decode(cache, q, strategy="numba", workers=True)
        for bad in (0, executors.max_workers() + 1):
            with pytest.raises(ValueError, match="workers must be"):
                A.decode(cache, q, strategy="numba", workers=bad)
        with pytest.raises(ValueError, match="shape"):
            A.decode(cache, q[:, :1], strategy="numba", workers=1)
        with pytest.raises(TypeError, match="floating"):
            A.decode(cache, q.astype(np.int32), strategy="numba", workers=1)
        nan = q.copy()
        nan[0, 0, 0] = np.nan
        with pytest.raises(ValueError, match="NaN or infinity"):
            A.decode(cache, nan, strategy="numba", workers=1)
        with pytest.raises(ValueError, match="mla_impl applies only to MLA"):
            A.decode(cache, q, strategy="numba", workers=1, mla_impl="naive")
        with pytest.raises(TypeError, match="workers must be"):
            A.decode(cache, q, strategy="numba", workers=[1])
        for workers in (1, 2, 3, 8):
            plan = D._Plan.get(cache, workers, None)
            for length in (1, 2, 3, 7, 8):
                cache.length = length
                want = D.workers_used(cache.config, length, 1, cache.kv_dtype, "numba",
                                      None, workers)
                assert max(1, min(plan.workers, length)) == want
        cache.length = 0
        with pytest.raises(ValueError, match="empty"):
            A.decode(cache, q, strategy="numba", workers=1)


def test_the_plan_follows_the_cache_arrays():
    """A plan holds the cache's arrays; if the cache holds other ones (a user rebinding
    them), the next step makes a new plan rather than read the old arrays. The new
    array is writable, but the kernel gets it read-only, as it gets the cache's own:
    nothing new is compiled."""
    from kernels.attention import jit, wide

    D = sys.modules["kernels.attention.decode"]
    with _filled(A.SMALL_CONFIGS["gqa-small"], 20) as cache:
        q = A.random_query(cache)
        before = A.decode(cache, q, strategy="numba", workers=1)
        key = (int, 1, type(None), None)
        plan = D._PLANS[cache][key]
        compiled = [len(k.signatures) for k in (jit.partial_jit, wide.partial_wide, jit.fused)]
        cache.v = (cache.v * 2).astype(cache.v.dtype)
        assert cache.v.flags.writeable
        after = A.decode(cache, q, strategy="numba", workers=1)
        assert D._PLANS[cache][key] is not plan
        _close_enough(after, 2 * before)
        assert [len(k.signatures) for k in (jit.partial_jit, wide.partial_wide, jit.fused)] \
            == compiled


def test_decode_is_deterministic_across_workers():
    with _filled(A.PRESETS["gqa"], 300) as cache:
        q = A.random_query(cache)
        a = A.decode(cache, q, strategy="numba", workers=1)
        b = A.decode(cache, q, strategy="numba", workers=1)
        np.testing.assert_array_equal(a, b)
        _close_enough(A.decode(cache, q, strategy="numba", workers=2), a)


def test_exp_neg_flushes_only_negligible_weights():
    """The vectorised exp is float32-accurate down to 2**-64 and exactly 0 below."""
    from kernels.attention import jit

    x = np.array([0.0, -0.3, -1.0, -10.0, -44.0, -44.4, -60.0, -1e30, -3.0e38], np.float32)
    got = x.copy()
    jit._exp_neg(got, got.size, np.empty(got.size, np.int32))
    want = np.exp(x.astype(np.float64))
    kept = want >= 2.0**-64
    # float32 argument reduction: the relative error grows like |x| * eps(float32)
    tol = 2e-7 + np.abs(x[kept]) * 6e-8
    assert np.all(np.abs(got[kept] - want[kept]) <= tol * want[kept])
    assert kept[:5].all() and not kept[5:].any()
    assert np.all(got[~kept] == 0)


@pytest.mark.parametrize("G,dv,dtype", [(4, 128, np.float32), (32, 128, np.float32),
                                         (16, 512, np.float32), (3, 100, np.float64)])
def test_scratch_is_page_aligned_and_disjoint(G, dv, dtype):
    from numba import njit

    from kernels.attention import jit

    @njit
    def carve(like):
        acc, s = jit._scratch(G, dv, jit.BLOCK, like)
        acc[:] = 1
        s[:] = 2
        return acc.ctypes.data, s.ctypes.data, acc.shape, s.shape, acc.sum(), s.sum()

    a, b, acc_shape, s_shape, acc_sum, s_sum = carve(np.empty(1, dtype))
    assert a % 4096 == 0 and b % 4096 == 0
    assert acc_shape == (G, dv) and s_shape == (G, jit.BLOCK)
    assert b >= a + G * dv * np.dtype(dtype).itemsize  # s starts after acc ends
    assert acc_sum == G * dv and s_sum == 2 * G * jit.BLOCK


@pytest.mark.parametrize("variant", [("numba", None), ("threaded", "numba")], ids=_label)
@pytest.mark.parametrize("preset", ["gqa", "mqa", "mla"])
def test_peaked_softmax_matches_reference(variant, preset):
    """A query 40x too large: almost every weight underflows (the kernel flushes those
    to 0), the block maxima jump, and the answer must still be the reference's."""
    with _filled(A.PRESETS[preset], 301) as cache:
        q = 40 * A.random_query(cache)
        want = reference_decode(cache, q)
        for workers in (1, 2):
            got = A.decode(cache, q, strategy=variant[0], inner=variant[1], workers=workers)
            _close_enough(got, want)


# ---------------------------------------------------------------------------
# configs, bytes per token, appends
# ---------------------------------------------------------------------------


def test_presets():
    assert set(A.PRESETS) == {"mha", "gqa", "mqa", "mla", "mla-v3"}
    assert (A.PRESETS["gqa"].n_heads, A.PRESETS["gqa"].n_kv_heads) == (32, 8)
    assert A.PRESETS["mqa"].kind == "mqa" and A.PRESETS["mha"].kind == "mha"
    assert A.PRESETS["mla"].n_heads == 16 and A.PRESETS["mla-v3"].n_heads == 128
    assert A.PRESETS["mla"].scale == pytest.approx((128 + 64) ** -0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_heads": 32, "n_kv_heads": 5, "head_dim": 128}, "multiple of n_kv_heads"),
        ({"n_heads": 4, "n_kv_heads": 8, "head_dim": 128}, "multiple of n_kv_heads"),
        ({"n_heads": 0, "n_kv_heads": 1, "head_dim": 128}, "n_heads must be >= 1"),
        ({"n_heads": 4, "n_kv_heads": 1, "head_dim": -2}, "head_dim must be >= 1"),
        ({"n_heads": 4, "n_kv_heads": 1, "head_dim": 7}, "head_dim must be even"),
        ({"n_heads": 4, "n_kv_heads": 1, "head_dim": 8, "rope_theta": 0}, "rope_theta"),
    ],
)
def test_invalid_kv_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        A.KVConfig(**kwargs)


def test_invalid_mla_configs():
    with pytest.raises(ValueError, match="kv_lora_rank must be >= 1"):
        A.MLAConfig(n_heads=4, kv_lora_rank=0)
    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        A.MLAConfig(n_heads=4, qk_rope_head_dim=3)
    with pytest.raises(TypeError, match="n_heads"):
        A.MLAConfig(n_heads=2.5)


def test_kv_bytes_per_token_analytic():
    assert A.kv_bytes_per_token(A.PRESETS["mha"], np.float32) == 2 * 32 * 128 * 4
    assert A.kv_bytes_per_token(A.PRESETS["gqa"], np.float32) == 2 * 8 * 128 * 4
    assert A.kv_bytes_per_token(A.PRESETS["mqa"], "bfloat16") == 2 * 1 * 128 * 2
    assert A.kv_bytes_per_token(A.PRESETS["mla"], np.float16) == (512 + 64) * 2
    assert A.kv_bytes_per_token(A.PRESETS["mla-v3"], np.float32) == (512 + 64) * 4


@pytest.mark.parametrize("preset", list(A.PRESETS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kv_bytes_per_token_is_real_cache_growth(preset, dtype):
    config = A.PRESETS[preset]
    cache = A.make_cache(config, capacity=4, batch=1, dtype=dtype)
    per_token = A.kv_bytes_per_token(config, dtype)
    assert cache.nbytes == 4 * per_token  # preallocated capacity
    before = cache.used_nbytes
    A.fill_random(cache, 3)
    assert cache.used_nbytes - before == 3 * per_token


def _snapshot(cache):
    return {name: a.copy() for name, a in cache.arrays().items()}, cache.length


def _assert_unchanged(cache, snap):
    arrays, length = snap
    assert cache.length == length
    for name, a in cache.arrays().items():
        np.testing.assert_array_equal(a, arrays[name])


def test_bad_kv_appends_leave_cache_unchanged():
    c = A.SMALL_CONFIGS["gqa-small"]
    cache = _filled(c, 3, batch=2, capacity=4)
    snap = _snapshot(cache)
    good = np.ones((2, 2, 16), np.float32)
    bad = [
        ((np.ones((2, 2, 15), np.float32), good), ValueError, "k must have shape"),
        ((good, np.ones((1, 2, 16), np.float32)), ValueError, "v must have shape"),
        ((good.astype(np.float64), good), TypeError, "dtype float32"),
        ((good, good.tolist()), TypeError, "numpy array"),
        ((good, np.full((2, 2, 16), np.nan, np.float32)), ValueError, "NaN"),
    ]
    for args, exc, match in bad:
        with pytest.raises(exc, match=match):
            cache.append(*args)
        _assert_unchanged(cache, snap)
    cache.append(good, good)  # fills to capacity
    snap = _snapshot(cache)
    with pytest.raises(ValueError, match="exceeds capacity 4"):
        cache.append(good, good)
    _assert_unchanged(cache, snap)


def test_bad_mla_appends_leave_cache_unchanged():
    c = A.SMALL_CONFIGS["mla-small"]
    cache = _filled(c, 2, capacity=2)
    snap = _snapshot(cache)
    with pytest.raises(ValueError, match="cache is full"):
        cache.append(np.ones((1, 32), np.float32), np.ones((1, 8), np.float32))
    _assert_unchanged(cache, snap)
    cache = _filled(c, 1, capacity=2)
    snap = _snapshot(cache)
    with pytest.raises(ValueError, match="k_pe must have shape"):
        cache.append(np.ones((1, 32), np.float32), np.ones((1, 9), np.float32))
    with pytest.raises(TypeError, match="c_kv must have dtype"):
        cache.append(np.ones((1, 32), np.float64), np.ones((1, 8), np.float32))
    _assert_unchanged(cache, snap)


def test_bad_cache_and_decode_arguments():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        A.make_cache(A.PRESETS["gqa"], capacity=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        A.make_cache(A.PRESETS["gqa"], capacity=2, dtype=np.int32)
    with pytest.raises(ValueError, match="cache is empty"):
        A.decode(A.make_cache(A.SMALL_CONFIGS["gqa-small"], capacity=2),
                 np.zeros((1, 8, 16), np.float32))
    with _filled(A.SMALL_CONFIGS["gqa-small"], 3) as cache:
        q = A.random_query(cache)
        with pytest.raises(ValueError, match="query must have shape"):
            A.decode(cache, q[:, :4])
        with pytest.raises(ValueError, match="strategy must be one of"):
            A.decode(cache, q, strategy="cuda")
        with pytest.raises(ValueError, match="inner must be one of"):
            A.decode(cache, q, strategy="threaded", inner="fortran")
        with pytest.raises(ValueError, match="workers must be >= 1"):
            A.decode(cache, q, strategy="multiprocess", workers=0)
        with pytest.raises(ValueError, match="mla_impl applies only to MLA"):
            A.decode(cache, q, mla_impl="naive")
    with _filled(A.SMALL_CONFIGS["mla-small"], 3) as cache:
        with pytest.raises(ValueError, match="mla_impl must be one of"):
            A.decode(cache, A.random_query(cache), mla_impl="fast")


# ---------------------------------------------------------------------------
# GQA/MQA never repeat K/V
# ---------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@pytest.mark.parametrize("strategy", ["numpy", "numba", "threaded", "torch"])
def test_mqa_decode_never_repeats_kv(strategy):
    """Repeating K/V per query head would need 32x the cache (MQA, 32 heads). The peak
    resident memory of a step (Linux VmHWM, reset through /proc/self/clear_refs, so it sees
    numba's and torch's allocators too) must grow by well under one copy of the cache.
    (The float64 reference copies one head at a time, by design, so it is not checked.)"""
    _skip_unavailable(strategy)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs Linux /proc/self/clear_refs to reset peak RSS")
    with _filled(A.PRESETS["mqa"], 32768) as cache:
        q = A.random_query(cache)
        A.decode(cache, q, strategy=strategy, workers=2)  # compile / warm up
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
        A.decode(cache, q, strategy=strategy, workers=2)
        grew = (_status_kib("VmHWM") - base) * 1024
        assert grew < cache.used_nbytes // 2, (grew, cache.used_nbytes)


# ---------------------------------------------------------------------------
# shared memory
# ---------------------------------------------------------------------------


def test_multiprocess_leaves_no_shared_memory():
    before = set(shared.leftover_segments(os.getpid()))
    with _filled(A.SMALL_CONFIGS["gqa-small"], 50, shared_mem=True) as cache:
        assert len(set(shared.leftover_segments(os.getpid())) - before) == 2
        A.decode(cache, A.random_query(cache), strategy="multiprocess", workers=2)
    # A private cache is copied to temporary segments for the step and they go too.
    with _filled(A.SMALL_CONFIGS["mla-small"], 50) as cache:
        A.decode(cache, A.random_query(cache), strategy="multiprocess", workers=2)
    assert set(shared.leftover_segments(os.getpid())) - before == set()
    assert not shared.live_segments()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_multiprocess_error_or_ctrl_c_leaves_no_shared_memory(monkeypatch, exc):
    from kernels import executors

    before = set(shared.leftover_segments(os.getpid()))

    def explode(*args, **kwargs):
        assert len(set(shared.leftover_segments(os.getpid())) - before) == 2  # temporaries exist
        raise exc

    # Where the tasks would run, once the executor has shared the cache.
    monkeypatch.setattr(executors.ProcessExecutor, "map", explode)
    with _filled(A.SMALL_CONFIGS["gqa-small"], 10) as cache:
        with pytest.raises(type(exc)):
            A.decode(cache, A.random_query(cache), strategy="multiprocess", workers=2)
    assert set(shared.leftover_segments(os.getpid())) - before == set()


_CTRL_C_SCRIPT = """
import signal
import sys
from kernels import attention
# Ctrl-C at a terminal reaches a foreground process; a shell that started this test run
# in the background may have passed SIGINT down as ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
case = attention.make_case(4096, strategy="multiprocess", inner="numba", workers=2, preset="gqa")
case.run()
print("ready", flush=True)
try:
    while True:
        case.run()
finally:
    case.close()
"""


def test_ctrl_c_during_multiprocess_steps_leaves_no_shared_memory():
    """A real SIGINT while pool workers are attached: the interpreter unwinds, the case is
    closed, and no segment named after that process is left in /dev/shm."""
    import signal
    import subprocess
    import sys

    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm")
    proc = subprocess.Popen([sys.executable, "-c", _CTRL_C_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        assert shared.leftover_segments(proc.pid)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert shared.leftover_segments(proc.pid) == []


def test_make_case_close_unlinks_and_gc_unlinks():
    before = set(shared.leftover_segments(os.getpid()))
    case = A.make_case(64, strategy="multiprocess", inner="numpy", workers=2, preset="mla")
    assert len(set(shared.leftover_segments(os.getpid())) - before) == 4
    case.run()
    case.close()
    cache = _filled(A.SMALL_CONFIGS["mqa-small"], 4, shared_mem=True)
    del cache  # never closed: the finalizer unlinks
    import gc

    gc.collect()
    assert set(shared.leftover_segments(os.getpid())) - before == set()


# ---------------------------------------------------------------------------
# registry contract
# ---------------------------------------------------------------------------


def test_strategies_and_availability():
    assert A.STRATEGIES == ("python", "numpy", "numba", "threaded", "multiprocess",
                            "distributed", "torch")
    for s in A.STRATEGIES[:-1]:
        assert A.unavailable_reason(s) is None


def test_make_case_fields_and_gbps():
    case = A.make_case(100, strategy="numba", workers=1, preset="gqa", batch=2)
    try:
        assert case.fields["preset"] == "gqa" and case.fields["batch"] == 2
        assert case.fields["cache_bytes"] == 2 * 100 * A.kv_bytes_per_token(A.PRESETS["gqa"])
        assert "mla_impl" not in case.fields
        out = case.run()
        assert out.shape == (2, 32, 128)
        assert case.describe(out, 0.5)["gbps"] == pytest.approx(
            case.fields["cache_bytes"] / 0.5 / 1e9
        )
    finally:
        case.close()
    case = A.make_case(10, strategy="numpy", preset="mla", mla_impl="naive")
    assert case.fields["mla_impl"] == "naive"
    case.close()


@pytest.mark.parametrize("preset", ["gqa", "mla"])
def test_make_case_from_source_matches_a_fresh_case_and_leaves_source_open(preset):
    """``source=``: the same step as a case that fills its own cache (same seed); closing
    the case unlinks its shared copy but never touches the source."""
    source = A.make_cache(A.PRESETS[preset], capacity=40, batch=2)
    A.fill_random(source, 40, seed=0)
    before = set(shared.leftover_segments(os.getpid()))
    for strategy, inner in [("numba", None), ("multiprocess", "numpy")]:
        fresh = A.make_case(40, strategy=strategy, inner=inner, workers=2, preset=preset,
                            batch=2)
        reused = A.make_case(40, strategy=strategy, inner=inner, workers=2, preset=preset,
                             batch=2, source=source)
        try:
            np.testing.assert_allclose(reused.run(), fresh.run(), rtol=1e-5, atol=1e-6)
            assert reused.fields["cache_bytes"] == fresh.fields["cache_bytes"]
        finally:
            fresh.close()
            reused.close()
        assert set(shared.leftover_segments(os.getpid())) - before == set()
    assert not source.shared and source.length == 40
    for name in source._names:
        assert np.all(np.isfinite(getattr(source, name)))  # still readable


def test_make_case_refuses_a_source_that_does_not_match():
    source = A.make_cache(A.PRESETS["gqa"], capacity=16)
    A.fill_random(source, 16)
    with pytest.raises(ValueError, match="length"):
        A.make_case(8, strategy="numba", preset="gqa", source=source)
    with pytest.raises(ValueError, match="config"):
        A.make_case(16, strategy="numba", preset="mqa", source=source)
    with pytest.raises(ValueError, match="batch"):
        A.make_case(16, strategy="numba", preset="gqa", batch=2, source=source)
    with pytest.raises(ValueError, match="dtype"):
        A.make_case(16, strategy="numba", preset="gqa", dtype=np.float64, source=source)
    with pytest.raises(TypeError, match="source must be"):
        A.make_case(16, strategy="numba", preset="gqa", source=np.zeros(3))


def test_cache_copy_is_independent_and_can_move_to_shared_memory():
    cache = _filled(A.SMALL_CONFIGS["mqa-small"], 5)
    before = set(shared.leftover_segments(os.getpid()))
    twin = cache.copy(shared=True)
    assert twin.shared and twin.length == cache.length == 5
    np.testing.assert_array_equal(twin.k, cache.k)
    twin.length = cache.length = 4  # room for one more token, written to the twin only
    c = cache.config
    token = np.ones((cache.batch, c.n_kv_heads, c.head_dim), np.float32)
    twin.append(token, token)
    assert twin.length == 5 and cache.length == 4
    assert twin.v[0, 0, 4, 0] == 1.0 != cache.v[0, 0, 4, 0]
    twin.close()
    assert set(shared.leftover_segments(os.getpid())) - before == set()


def test_cache_arrays_are_read_only_and_writes_are_logged():
    cache = _filled(A.SMALL_CONFIGS["gqa-small"], 5, capacity=8)
    for name, array in cache.arrays().items():
        with pytest.raises(ValueError, match="read-only"):
            array[...] = 0
        assert getattr(cache, name) is not None and not getattr(cache, name).flags.writeable
    gen = cache.generation
    assert cache.first_write_since(gen) is None
    A.fill_random(cache, 2, seed=1)  # one extend, from token 5
    assert cache.generation == gen + 1 and cache.first_write_since(gen) == 5
    cache.length = 3  # shows a prefix: no write
    assert cache.generation == gen + 1
    A.fill_random(cache, 1, seed=2)  # rewrites token 3
    assert cache.first_write_since(gen) == 3 and cache.first_write_since(gen + 1) == 3
    with pytest.raises(ValueError, match="length must be in"):
        cache.length = cache.capacity + 1
    other = A.make_cache(cache.config, capacity=cache.capacity)
    assert other.share_id != cache.share_id
    other.load(cache.arrays(), 4)
    assert other.length == 4 and other.first_write_since(0) == 0
    np.testing.assert_array_equal(other.k, cache.k)
    with pytest.raises(ValueError, match="missing"):
        other.load({"k": cache.k}, 4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("shared_target", [False, True])
def test_cache_loads_saved_npy_files_in_place(tmp_path, dtype, shared_target):
    """A saved cache is read straight into the cache's own memory (private or shared),
    byte for byte; a file of another shape or type is refused by name."""
    cache = A.make_cache(A.SMALL_CONFIGS["gqa-small"], capacity=8, dtype=dtype)
    A.fill_random(cache, 8, seed=3)
    for name, array in cache.arrays().items():
        np.save(tmp_path / f"{name}.npy", array)
    other = A.make_cache(cache.config, capacity=8, dtype=dtype, shared=shared_target)
    try:
        other.load({name: tmp_path / f"{name}.npy" for name in cache.arrays()}, 8)
        assert other.length == 8 and other.first_write_since(0) == 0
        for name, array in cache.arrays().items():
            np.testing.assert_array_equal(getattr(other, name).view(np.uint8),
                                          array.view(np.uint8))
        np.save(tmp_path / "k.npy", np.zeros((1, 2, 3), np.float64))
        with pytest.raises(ValueError, match="k.npy: holds float64"):
            other.load({name: tmp_path / f"{name}.npy" for name in cache.arrays()}, 8)
    finally:
        other.close()


def test_make_case_rejects_bad_options():
    with pytest.raises(ValueError, match="unknown attention option"):
        A.make_case(10, strategy="numba", colour="red")
    with pytest.raises(ValueError, match="preset must be one of"):
        A.make_case(10, strategy="numba", preset="gpt")
    with pytest.raises(ValueError, match="mla_impl applies only"):
        A.make_case(10, strategy="numba", preset="gqa", mla_impl="naive")
    with pytest.raises(ValueError, match="size"):
        A.make_case(0, strategy="numba")


def test_list_extra_table():
    text = A.list_extra()
    for name in A.PRESETS:
        assert name in text
    assert "0.2500" in text  # gqa vs mha
    assert "0.0703" in text  # mla: 576 / 8192


def test_verify_passes_for_numba():
    checks = A.verify("numba", None, 2)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_cli_run_json(capsys):
    import json

    from kernels.harness import cli

    rc = cli.main(["run", "--kernel", "attention", "--preset", "gqa", "--size", "512",
                   "--strategy", "numba", "--workers", "2", "--repeat", "1", "--json"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["preset"] == "gqa" and rows[0]["gbps"] > 0
    assert rows[0]["cache_bytes"] == 512 * 8192


@pytest.mark.skipif(TORCH_MISSING is not None, reason=str(TORCH_MISSING))
def test_torch_matches_on_gqa():
    with _filled(A.PRESETS["gqa"], 257, batch=2) as cache:
        q = A.random_query(cache)
        _close_enough(A.decode(cache, q, strategy="torch", workers=1),
                      reference_decode(cache, q))


@pytest.mark.slow
@pytest.mark.parametrize("variant", [("numba", None), ("numpy", None), ("threaded", "numba"),
                                     ("multiprocess", "numba")], ids=_label)
def test_long_context_gqa(variant):
    with _filled(A.PRESETS["gqa"], 32768, shared_mem=variant[0] == "multiprocess") as cache:
        q = A.random_query(cache)
        want = reference_decode(cache, q)
        got = A.decode(cache, q, strategy=variant[0], inner=variant[1], workers=2)
        _close_enough(got, want)


# ---------------------------------------------------------------------------
# Analytic cost of a step (FLOPs, bytes) against the kernel's own arrays
# ---------------------------------------------------------------------------


def _count_from_shapes(cache, impl):
    """FLOPs, bytes and the FLOPs made once (absorbed MLA's weight products) of one
    step, read off the arrays the step really uses: the rotated, absorbed query of
    :class:`decode.Problem` and the cache's arrays."""
    from kernels.attention.decode import Problem

    q = A.random_query(cache)
    problem = Problem(cache, q, impl)
    arrays = cache.arrays()
    T, B = cache.length, cache.batch
    H = problem.q1.shape[1]
    if problem.kind == "kv":
        d, dv = arrays["k"].shape[-1], arrays["v"].shape[-1]
        return 2 * B * H * T * (d + dv), cache.used_nbytes, 0, 0
    w_uk, w_uv = arrays["w_uk"], arrays["w_uv"]
    nope, r = w_uk.shape[1:]
    v, rope = w_uv.shape[1], arrays["k_pe"].shape[-1]
    assert problem.q2.shape[-1] == rope
    if problem.kind == "absorbed":
        assert problem.q1.shape[-1] == r  # the query lives in the latent space
        once = 2 * B * H * (nope * r + r * v)  # q @ W_UK, o @ W_UV
        flops = once + 2 * B * H * (T * (r + rope) + T * r)
    else:
        once = 0
        flops = 2 * B * H * T * (r * (nope + v) + nope + rope + v)
    return flops, cache.used_nbytes, w_uk.nbytes + w_uv.nbytes, once


@pytest.mark.parametrize("name", sorted(A.SMALL_CONFIGS))
@pytest.mark.parametrize("batch", [1, 3])
def test_step_cost_matches_the_kernels_shapes(name, batch):
    config = A.SMALL_CONFIGS[name]
    impls = ["absorbed", "naive"] if config.kind == "mla" else [None]
    cache = _filled(config, 37, batch=batch, capacity=50)
    try:
        for impl in impls:
            cost = A.step_cost(config, 37, batch, dtype=cache.dtype, mla_impl=impl)
            assert tuple(cost) == _count_from_shapes(cache, impl)
    finally:
        cache.close()


def test_step_cost_of_the_presets_matches_the_published_figures():
    """Issue 15's table: MQA 0.54 GFLOP and MLA 1.14-1.15 GFLOP (1.145) per step at 32k, MLA's
    weights 8 MiB (mla) and 64 MiB (mla-v3) in float32."""
    mqa = A.step_cost(A.PRESETS["mqa"], 32768)
    mla = A.step_cost(A.PRESETS["mla"], 32768)
    assert round(mqa.flops / 1e9, 2) == 0.54 and mqa.weight_bytes == 0
    assert round(mla.flops / 1e9, 2) == 1.15
    assert mla.weight_bytes == 8 << 20
    assert A.step_cost(A.PRESETS["mla-v3"], 1).weight_bytes == 64 << 20
    gqa = A.step_cost(A.PRESETS["gqa"], 32768)
    assert gqa.cache_bytes == 256 << 20 and gqa.intensity == 2.0
    with pytest.raises(ValueError, match="mla_impl"):
        A.step_cost(A.PRESETS["mla"], 8, mla_impl="fused")


def test_a_case_reports_its_flops_and_gflops():
    case = A.make_case(64, strategy="numpy", workers=1, preset="mla")
    try:
        assert case.fields["flops"] == A.step_cost(A.PRESETS["mla"], 64).flops
        assert case.fields["weight_bytes"] == 8 << 20
        row = case.describe(None, 0.5)
        assert row["gflops"] == pytest.approx(case.fields["flops"] / 0.5 / 1e9)
    finally:
        case.close()


def _in_fresh_interpreter(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by a new Python (numba's threads and torch not yet loaded there)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.skipif(TORCH_MISSING is not None, reason=str(TORCH_MISSING))
@pytest.mark.parametrize("torch_first", [False, True])
def test_torch_loaded_after_numba_openmp_is_warned_about(torch_first):
    """torch loaded after numba's OpenMP threads started runs on numba's libgomp, up to
    20x slower: asking for the torch strategy then warns; asking first does not."""
    code = (
        "import warnings, numpy as np, kernels.attention as A\n"
        "warnings.simplefilter('error', RuntimeWarning)\n"
        + ("A.unavailable_reason('torch')\n" if torch_first else "")
        + "c = A.make_cache(A.PRESETS['gqa'], capacity=64); A.fill_random(c, 64)\n"
        "A.decode(c, A.random_query(c), strategy='numba', workers=2)\n"
        "import numba\n"
        "if numba.threading_layer() != 'omp': print('not omp'); raise SystemExit(0)\n"
        "A.unavailable_reason('torch')\n"
        "print('quiet')\n"
    )
    done = _in_fresh_interpreter(code)
    if "not omp" in done.stdout:
        pytest.skip("numba's threading layer here is not OpenMP")
    if torch_first:
        assert done.returncode == 0 and "quiet" in done.stdout, done.stderr[-1500:]
    else:
        assert done.returncode != 0 and "numba's libgomp" in done.stderr


def test_a_numpy_step_leaves_numba_threads_unstarted():
    """The numpy strategy caps BLAS but not numba: setting numba's thread count starts
    its OpenMP threads, after which torch would load onto numba's libgomp (the test
    above). So a process may time numpy steps and then torch steps. Checked in a fresh
    interpreter: this one has started numba's pool long ago."""
    code = (
        "import numba, kernels.attention as A\n"
        "for preset in ('gqa', 'mla'):\n"
        "    c = A.make_cache(A.PRESETS[preset], capacity=64); A.fill_random(c, 64)\n"
        "    for workers in (1, 2):\n"
        "        A.decode(c, A.random_query(c), strategy='numpy', workers=workers)\n"
        "try:\n"
        "    print('started', numba.threading_layer())\n"
        "except ValueError:\n"
        "    print('not started')\n"
    )
    done = _in_fresh_interpreter(code)
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.strip() == "not started"


def test_pool_steps_below_the_minimum_grain_run_on_fewer_workers():
    """A 1k-token MQA step is below multiprocess's grain (one worker's round trip costs
    more than half the step); 32k tokens are not; numba (prange) splits as asked."""
    from kernels.attention.decode import workers_used

    mqa = A.PRESETS["mqa"]
    assert workers_used(mqa, 1024, 1, np.float32, "multiprocess", "numba", 2) == 1
    assert workers_used(mqa, 32768, 1, np.float32, "multiprocess", "numba", 2) == 2
    assert workers_used(mqa, 1024, 1, np.float32, "numba", None, 2) == 2
    assert workers_used(mqa, 1, 1, np.float32, "numba", None, 2) == 1  # one token
    assert workers_used(mqa, 1024, 1, np.float32, "python", None, 2) == 1
    # threaded:python: GIL-bound below its grain per head call (GQA, MHA 1k; MQA 2k), two
    # threads above it (MLA 1k, MQA 4k, whatever the batch: it adds calls, not elements)
    gqa, mla = A.PRESETS["gqa"], A.PRESETS["mla"]
    assert workers_used(gqa, 1024, 1, np.float32, "threaded", "python", 2) == 1
    assert workers_used(A.PRESETS["mha"], 1024, 1, np.float32, "threaded", "python", 2) == 1
    assert workers_used(mqa, 2048, 1, np.float32, "threaded", "python", 2) == 1
    assert workers_used(mqa, 4096, 1, np.float32, "threaded", "python", 2) == 2
    assert workers_used(mqa, 4096, 4, np.float32, "threaded", "python", 2) == 2
    assert workers_used(mla, 1024, 1, np.float32, "threaded", "python", 2, "absorbed") == 2
    assert workers_used(A.PRESETS["mha"], 32768, 1, "bfloat16", "distributed", "numba", 2) == 2
    # absorbed MLA: the parent makes the weight products; the threads split the cache part,
    # 948 units at 1k (1,870 with the weights), under two grains of threaded:numba
    assert workers_used(mla, 1024, 1, np.float32, "threaded", "numba", 2) == 1
    assert workers_used(mla, 8192, 1, np.float32, "threaded", "numba", 2) == 2
    assert workers_used(gqa, 1024, 1, np.float32, "threaded", "numba", 2) == 2
    from kernels import executors

    case = A.make_case(1024, strategy="multiprocess", inner="numba", workers=2, preset="mqa")
    before = set(executors._pools)
    try:
        assert case.fields["workers_used"] == 1
        case.run()
    finally:
        case.close()
    # one task on the warm pool of 2, not a second pool of 1 started for it
    assert set(executors._pools) - before <= {("processes", 2)}
    assert A.SPEC.workers_used(1024, "multiprocess", "numba", 2, preset="mqa") == 1
    assert A.SPEC.workers_used(32768, "multiprocess", "numba", 2, preset="mqa") == 2


def test_the_late_torch_warning_needs_torch_installed(monkeypatch):
    """No warning about loading torch late where torch is not installed (nothing will
    load); the warning where it is and numba's OpenMP threads run."""
    import importlib
    import sys
    import warnings

    import numba

    decode = importlib.import_module("kernels.attention.decode")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(numba, "threading_layer", lambda: "omp")
    for installed in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, installed=installed: object() if installed else None)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            decode._late_torch()
        assert [w.category for w in seen] == ([RuntimeWarning] if installed else [])
