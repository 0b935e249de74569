"""Reduced-precision attention caches (bfloat16, float16, int8 with per-token-head scales):
rounding on entry, bytes per token, bad dtypes refused, and every strategy against the
float64 reference, both on what the cache holds (float32 accumulation only) and on the
unrounded inputs (within the bound that the rounding of the inputs allows, derived in
docs/attention.md)."""

from __future__ import annotations

import numpy as np
import pytest

import kernels.attention as A
from kernels import executors, registry, simd
from kernels.attention import precision as P
from kernels.attention.config import rotate_query
from kernels.attention.reference import reference_decode

REDUCED = ["bfloat16", "float16", "int8"]
SMALL = [(name, impl) for name, c in A.SMALL_CONFIGS.items()
         for impl in (A.MLA_IMPLS if isinstance(c, A.MLAConfig) else (None,))]
LOCAL = [("python", None), ("numpy", None), ("numba", None), ("threaded", "numba"),
         ("threaded", "numpy"), ("threaded", "python")]


def _pair(config, dtype, length=67, batch=2, *, room=0, seed=5):
    """A float32 cache and a ``dtype`` cache filled with the same float32 inputs (and
    ``room`` tokens of capacity to spare)."""
    exact = A.make_cache(config, capacity=length + room, batch=batch)
    low = A.make_cache(config, capacity=length + room, batch=batch, dtype=dtype)
    A.fill_random(exact, length, seed=seed)
    A.fill_random(low, length, seed=seed)
    return exact, low


def _f32_slack(want: np.ndarray) -> float:
    """What float32 accumulation may add (the float32 caches' tolerance, tests/test_attention)."""
    scale = float(np.max(np.abs(want)))
    return 2e-5 * max(1.0, scale) + 2e-4 * scale


def _perturbation(low, exact, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(stored values widened, per-element bound on |stored - exact input|) of ``name``."""
    spec = low.kv_dtype
    x = exact.dequantized(name).astype(np.float64)
    if spec.scaled:
        half_step = getattr(low, f"{name}_scale").astype(np.float64)[..., None] / 2
        return low.dequantized(name), np.broadcast_to(half_step, x.shape)
    return low.dequantized(name), spec.u * np.abs(x) + spec.eta


def _softmax(scores: np.ndarray) -> np.ndarray:
    p = np.exp(scores - scores.max())
    return p / p.sum()


def _weight_rounding(p, v_lo, scale) -> np.ndarray:
    """What rounding the softmax weights w_t = p_t scale_t of an int8 cache to int16 per
    block can add to an output element (numba's integer value pass, docs/attention.md):
    at most max_t w_t / 65534 per weight (the largest weight of any block), times
    sum_t |v_int_t| = |v~_t| / scale_t."""
    if scale is None:
        return np.zeros(v_lo.shape[-1])
    s = scale.astype(np.float64)
    return (p * s).max() / 65534 * (np.abs(v_lo) / np.where(s > 0, s, 1)[:, None]).sum(axis=0)


def _bf16_products(low, strategy: str, inner: str | None = None) -> bool:
    """Whether the strategy's numba kernels take a bfloat16 cache's products in bfloat16
    here (``vdpbf16ps``): the query and the softmax weights rounded to bfloat16 too."""
    return strategy != "torch" and P.rounds_query(low.kv_dtype, strategy, inner)


def _int_query(low, strategy: str) -> bool:
    """Whether the strategy's numba kernels may round the query to int8 on an int8 cache
    here (VNNI's byte tiles, GQA-like groups of key width a multiple of
    simd.INT_DOTS_STEP; kernels.attention.jit._quantize_query)."""
    return low.kv_dtype.scaled and simd.QUERY_BYTES and "numba" in strategy


def _bound(low, exact, query, *, products: bool = False, cache: bool = True,
           int_query: bool = False) -> np.ndarray:
    """The bound of docs/attention.md on |decode(low) - reference(exact)| per output
    element. Rounding moves each score by at most eps = max_t sum_i |q_i| dk_ti, so each
    softmax weight by a factor within e^(+-2 eps); with p the exact weights,
    |o~ - o| <= (e^(2 eps) - 1) sum_t p_t |v~_t| + sum_t p_t dv_t, plus for int8 what
    rounding the weights to int16 adds (:func:`_weight_rounding`, the factor e^(2 eps)
    for the weights' own error); MLA: in the latent space, then through |W_UV|.
    ``products``: the query and the weights rounded to bfloat16 as well (unit roundoff
    u): eps gains u sum_i |q_i| |k~_ti|, the output e^(2 eps) u sum_t p_t |v~_t|.
    ``int_query``: the query rounded to int8 per head (:func:`_int_query`): eps gains
    max_i |q_i| / 254 sum_i |k~_ti|.
    ``cache=False``: the cache's own rounding left out (against the reference on the
    stored values)."""
    c = exact.config
    L = exact.length
    q = rotate_query(c, query, L - 1) * c.scale
    u = low.kv_dtype.u if products else 0.0
    keep = 1.0 if cache else 0.0
    if isinstance(exact, A.KVCache):
        (k_lo, dk), (v_lo, dv) = _perturbation(low, exact, "k"), _perturbation(low, exact, "v")
        keys = exact.dequantized("k").astype(np.float64)
        vs = low.v_scale if low.kv_dtype.scaled else None
        out = np.empty(q.shape)
        for b in range(q.shape[0]):
            for h in range(q.shape[1]):
                kh = h // c.group
                p = _softmax(keys[b, kh, :L] @ q[b, h])
                eps = np.max((keep * dk[b, kh, :L] + u * np.abs(k_lo[b, kh, :L]))
                             @ np.abs(q[b, h]))
                if int_query:
                    eps += np.abs(q[b, h]).max() / (2 * simd.INT_QUERY_MAX) * np.max(
                        np.abs(k_lo[b, kh, :L]).sum(axis=-1))
                pv = p @ np.abs(v_lo[b, kh, :L])
                out[b, h] = np.expm1(2 * eps) * pv + keep * (p @ dv[b, kh, :L]) \
                    + np.exp(2 * eps) * (u * pv + _weight_rounding(
                        p, v_lo[b, kh, :L], None if vs is None else vs[b, kh, :L]))
        return out
    (c_lo, dc), (p_lo, dp) = _perturbation(low, exact, "c_kv"), _perturbation(low, exact, "k_pe")
    latent = exact.dequantized("c_kv").astype(np.float64)
    cs = low.c_kv_scale if low.kv_dtype.scaled else None
    rope = exact.dequantized("k_pe").astype(np.float64)
    nope = c.qk_nope_head_dim
    q_lat = np.einsum("bhd,hdr->bhr", q[..., :nope], exact.w_uk.astype(np.float64))
    out = np.empty(q.shape[:2] + (c.v_head_dim,))
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            p = _softmax(latent[b, :L] @ q_lat[b, h] + rope[b, :L] @ q[b, h, nope:])
            eps = np.max((keep * dc[b, :L] + u * np.abs(c_lo[b, :L])) @ np.abs(q_lat[b, h])
                         + (keep * dp[b, :L] + u * np.abs(p_lo[b, :L])) @ np.abs(q[b, h, nope:]))
            pc = p @ np.abs(c_lo[b, :L])
            x = np.expm1(2 * eps) * pc + keep * (p @ dc[b, :L]) \
                + np.exp(2 * eps) * (u * pc + _weight_rounding(
                    p, c_lo[b, :L], None if cs is None else cs[b, :L]))
            out[b, h] = np.abs(exact.w_uv[h].astype(np.float64)) @ x
    return out


def _near_stored(got, on_stored, low, query, products: bool) -> None:
    """``got`` is the reference on ``low``'s stored values up to float32 accumulation,
    and with ``products`` up to the bfloat16 rounding of the query and weights as well
    (:func:`_bound` with the stored values as the exact ones)."""
    slack = _f32_slack(on_stored)
    if not products:
        np.testing.assert_allclose(got, on_stored, rtol=0, atol=slack)
        return
    tol = _bound(low, low, query, products=True, cache=False) + slack
    assert np.all(np.abs(got - on_stored) <= tol), float(np.max(np.abs(got - on_stored) - tol))


# ---------------------------------------------------------------------------
# element types: parsing, rounding, bytes
# ---------------------------------------------------------------------------


def test_dtype_names_and_aliases():
    assert A.kv_dtype("bf16") is A.kv_dtype("bfloat16") is P.BFLOAT16
    assert A.kv_dtype(np.float16) is A.kv_dtype("fp16") is P.FLOAT16
    assert A.kv_dtype(np.int8).scaled and A.kv_dtype("float32") is P.FLOAT32
    assert set(A.KV_DTYPES) == {"float32", "float64", "bfloat16", "float16", "int8"}
    option = {o.name: o for o in A.SPEC.options}["dtype"]
    assert set(option.choices) == set(A.KV_DTYPES)


@pytest.mark.parametrize("bad,exc", [(np.int32, ValueError), (np.uint16, ValueError),
                                     ("bf8", ValueError), ("fp8", ValueError),
                                     (object(), TypeError), (None, TypeError)])
def test_bad_dtypes_are_refused_naming_the_accepted_ones(bad, exc):
    match = "dtype must be one of float32, float64, bfloat16, float16, int8"
    with pytest.raises(exc, match=match):
        A.make_cache(A.PRESETS["gqa"], capacity=2, dtype=bad)
    with pytest.raises(exc, match=match):
        A.kv_bytes_per_token(A.PRESETS["gqa"], bad)
    if bad is not None:  # dtype=None means the default in make_case
        with pytest.raises(exc, match=match):
            A.check_case(8, strategy="numba", preset="gqa", dtype=bad)


def test_cli_refuses_a_bad_dtype(capsys):
    from kernels.harness import cli

    with pytest.raises(SystemExit):
        cli.main(["run", "--kernel", "attention", "--dtype", "fp8", "--size", "8"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", REDUCED)
def test_cli_runs_each_dtype(capsys, dtype):
    import json

    from kernels.harness import cli

    rc = cli.main(["run", "--kernel", "attention", "--preset", "gqa", "--size", "256",
                   "--strategy", "numba", "--dtype", dtype, "--repeat", "1", "--json"])
    assert rc == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["dtype"] == dtype
    assert row["cache_bytes"] == 256 * A.kv_bytes_per_token(A.PRESETS["gqa"], dtype)


def test_bfloat16_rounds_to_nearest_even_and_widens_exactly():
    one_ulp = np.float32(2.0**-7)  # bf16 spacing at 1.0
    x = np.array([1.0, 1 + one_ulp / 2, 1 + 1.5 * one_ulp, 1 + one_ulp / 2 + 2**-20,
                  -3.0e38, 1e-40, 0.0], np.float32)
    back = P.from_bfloat16(P.to_bfloat16(x))
    want = np.array([1.0, 1.0, 1 + 2 * one_ulp, 1 + one_ulp, np.nan, np.nan, 0.0])
    np.testing.assert_array_equal(back[:4], want[:4].astype(np.float32))  # ties to even
    assert abs(back[4] / x[4] - 1) <= 2.0**-8 and back[6] == 0
    rng = np.random.default_rng(0)
    y = rng.standard_normal(100_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 100_000)
    rel = np.abs(P.from_bfloat16(P.to_bfloat16(y)).astype(np.float64) / y - 1)
    assert rel.max() <= 2.0**-8
    exact = P.to_bfloat16(P.from_bfloat16(P.to_bfloat16(y)))  # representable: unchanged
    np.testing.assert_array_equal(exact, P.to_bfloat16(y))


def test_a_dtype_pickled_to_a_worker_is_the_same_object():
    import pickle

    for spec in A.KV_DTYPES.values():
        assert pickle.loads(pickle.dumps(spec)) is spec


def test_int8_quantisation_error_is_half_a_step():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 7, 64)) * rng.uniform(0.01, 100, (5, 7, 1))
    x[0, 0] = 0  # an all-zero row
    q, scale = P.quantize_int8(x)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (5, 7)
    assert np.abs(q).max() == 127 and scale[0, 0] == 0 and not q[0, 0].any()
    err = np.abs(q * scale.astype(np.float64)[..., None] - x)
    assert np.all(err <= scale[..., None] / 2 * (1 + 1e-6))


@pytest.mark.parametrize("preset", list(A.PRESETS))
@pytest.mark.parametrize("dtype", REDUCED)
def test_kv_bytes_per_token_is_real_cache_growth(preset, dtype):
    config = A.PRESETS[preset]
    cache = A.make_cache(config, capacity=4, dtype=dtype)
    per_token = A.kv_bytes_per_token(config, dtype)
    before = cache.used_nbytes
    A.fill_random(cache, 3)
    assert cache.used_nbytes - before == 3 * per_token
    assert cache.nbytes == 4 * per_token
    assert A.cache_nbytes(config, 4, 1, dtype) == sum(a.nbytes for a in cache.arrays().values())
    f32 = A.kv_bytes_per_token(config, np.float32)
    if dtype == "int8":  # one byte per element plus a float32 scale per token and head
        heads = 2 * config.n_kv_heads if isinstance(config, A.KVConfig) else 2
        assert per_token == f32 // 4 + 4 * heads
    else:
        assert per_token == f32 // 2
    cost = A.step_cost(config, 100, dtype=dtype)
    assert cost.cache_bytes == 100 * per_token
    assert cost.weight_bytes == A.step_cost(config, 100).weight_bytes  # weights stay f32


def test_deepseek_93_percent_figure():
    """DeepSeek-V2 (60 layers of MLA, 576 cached values per token at ~6 bits) against
    DeepSeek 67B (95 layers of GQA, 8 KV heads x 128, bf16): 93.3% smaller."""
    v2 = 60 * A.PRESETS["mla"].elements_per_token() * 6 / 8
    dense = 95 * A.kv_bytes_per_token(A.KVConfig(64, 8, 128), "bfloat16")
    assert round(100 * (1 - v2 / dense), 1) == 93.3


def test_reduced_cache_takes_float32_and_refuses_overflow_unchanged():
    c = A.SMALL_CONFIGS["gqa-small"]
    cache = A.make_cache(c, capacity=4, dtype="float16")
    assert cache.dtype == np.float32 and cache.kv_dtype is P.FLOAT16
    k = np.ones((1, 2, 16), np.float32)
    with pytest.raises(TypeError, match="k must have dtype float32"):
        cache.append(k.astype(np.float16), k)
    with pytest.raises(ValueError, match="v has values beyond the float16 range"):
        cache.append(k, k * 1e5)
    assert cache.length == 0 and cache.generation == 0 and not cache.v.any()
    cache.append(k, k)
    assert cache.length == 1 and cache.v.dtype == np.float16


def test_int8_cache_ships_its_scales_with_the_tokens():
    for name in ("gqa-small", "mla-small"):
        cache = A.make_cache(A.SMALL_CONFIGS[name], capacity=5, dtype="int8")
        values = ("k", "v") if name == "gqa-small" else ("c_kv", "k_pe")
        for v in values:
            scale = f"{v}_scale"
            assert scale in cache.arrays() and cache.token_axes[scale] == cache.token_axes[v]
            assert not getattr(cache, scale).flags.writeable
        A.fill_random(cache, 5)
        copy = cache.copy(shared=True)
        with copy:
            for n, a in cache.arrays().items():
                np.testing.assert_array_equal(copy.arrays()[n], a)
    assert "k_scale" not in A.make_cache(A.SMALL_CONFIGS["gqa-small"], capacity=1).arrays()


# ---------------------------------------------------------------------------
# correctness: every preset's small config, every local strategy, the pools
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("small", SMALL, ids=lambda s: f"{s[0]}-{s[1] or 'kv'}")
def test_local_strategies_match_the_float64_reference(dtype, small):
    """On the stored values: float32-accumulation close. On the unrounded inputs: within
    the rounding bound (docs/attention.md)."""
    name, impl = small
    exact, low = _pair(A.SMALL_CONFIGS[name], dtype)
    q = A.random_query(exact, seed=9)
    on_stored = reference_decode(low, q, "naive")
    truth = reference_decode(exact, q, "naive")
    bound = _bound(low, exact, q)
    for strategy, inner in LOCAL:
        got = A.decode(low, q, strategy=strategy, inner=inner, workers=2, mla_impl=impl)
        assert got.dtype == (np.float64 if strategy == "python" else np.float32)
        products = _bf16_products(low, strategy, inner)
        _near_stored(got, on_stored, low, q, products)
        within = _bound(low, exact, q, products=True) if products else bound
        assert np.all(np.abs(got - truth) <= within + _f32_slack(truth)), (strategy, inner)
    # The bound is not vacuous: the rounding error is there, and inside it.
    err = np.abs(on_stored - truth)
    assert 0 < err.max() and np.all(err <= bound)


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("preset", list(A.PRESETS))
def test_real_presets_tiny_context(dtype, preset):
    exact, low = _pair(A.PRESETS[preset], dtype, length=5, batch=1)
    q = A.random_query(exact)
    truth = reference_decode(exact, q, "naive")
    got = A.decode(low, q, strategy="numba", workers=2)
    bound = _bound(low, exact, q, products=_bf16_products(low, "numba"),
                   int_query=_int_query(low, "numba"))
    assert np.all(np.abs(got - truth) <= bound + _f32_slack(truth))
    if _int_query(low, "numba") and preset == "gqa":  # the byte tiles ran: not f32's error
        on_stored = reference_decode(low, q, "naive")
        tol = _bound(low, low, q, cache=False, int_query=True) + _f32_slack(on_stored)
        assert np.all(np.abs(got - on_stored) <= tol)
        # about 1e-4 of the output's scale at 5 tokens; float32 tiles' error is ~1e-7
        assert np.abs(got - on_stored).max() > 1e-5 * np.abs(on_stored).max()


POOLS = [("multiprocess", "numba"), ("multiprocess", "numpy"), ("distributed", "numba")]


@pytest.fixture(scope="module")
def pools():
    """The Dask executor these tests warm, closed when the module's tests end."""
    yield
    if "distributed" in _available():
        executors.get_executor("dask", 2).close()


def _available() -> set[str]:
    return {s for s, _ in registry.variants("attention")}


# Each (type, config) of a numba inner compiles its chunk kernel afresh in every pool
# worker (~9 s on 2 cores with an empty numba cache): the default run keeps one type per
# pool and config, every pair runs with `make test-slow`.
_POOL_DEFAULT = {("gqa-small", "bfloat16"), ("mla-small", "int8")}
POOL_CASES = [
    pytest.param(name, dtype, variant, id=f"{name}-{dtype}-{registry.label(*variant)}",
                 marks=() if (name, dtype) in _POOL_DEFAULT or variant[1] != "numba"
                 else pytest.mark.slow)
    for name in ("gqa-small", "mla-small") for dtype in REDUCED for variant in POOLS
]


@pytest.mark.parametrize(("name", "dtype", "variant"), POOL_CASES)
def test_pool_strategies_ship_reduced_caches(pools, variant, dtype, name):
    strategy, inner = variant
    if strategy not in _available():
        pytest.skip(registry.unavailable_reason(A, strategy) or f"{strategy} unavailable")
    exact, low = _pair(A.SMALL_CONFIGS[name], dtype, length=41, batch=1, room=1)
    q = A.random_query(exact)
    want = reference_decode(low, q, "naive")
    got = A.decode(low, q, strategy=strategy, inner=inner, workers=2)
    products = _bf16_products(low, strategy, inner)
    _near_stored(got, want, low, q, products)
    # A token appended after the first step reaches the workers too (shards resent).
    rng = np.random.default_rng(3)
    c = low.config
    if isinstance(low, A.KVCache):
        shape = (1, c.n_kv_heads, c.head_dim)
        low.append(rng.standard_normal(shape).astype(np.float32),
                   rng.standard_normal(shape).astype(np.float32) * 50)
    else:
        low.append(rng.standard_normal((1, c.kv_lora_rank)).astype(np.float32) * 50,
                   rng.standard_normal((1, c.qk_rope_head_dim)).astype(np.float32))
    want = reference_decode(low, q, "naive")
    got = A.decode(low, q, strategy=strategy, inner=inner, workers=2)
    _near_stored(got, want, low, q, products)


def test_make_case_and_fields_follow_the_dtype():
    case = A.make_case(64, strategy="numba", preset="gqa", dtype="bf16")
    try:
        assert case.fields["dtype"] == "bfloat16"
        assert case.fields["cache_bytes"] == 64 * A.kv_bytes_per_token(A.PRESETS["gqa"], "bf16")
        assert case.run().dtype == np.float32
    finally:
        case.close()
    source = A.make_cache(A.PRESETS["gqa"], capacity=16, dtype="int8")
    A.fill_random(source, 16)
    with pytest.raises(ValueError, match="kv_dtype"):
        A.make_case(16, strategy="numba", preset="gqa", dtype="bf16", source=source)
    case = A.make_case(16, strategy="numba", preset="gqa", dtype="int8", source=source)
    assert case.fields["dtype"] == "int8"


def test_torch_refuses_int8_before_any_work():
    P.check_torch_dtype("numba", "int8")
    P.check_torch_dtype("torch", "bf16")
    with pytest.raises(ValueError, match="strategy torch .* takes dtype"):
        P.check_torch_dtype("torch", "int8")
    if not A.unavailable_reason("torch"):
        with pytest.raises(ValueError, match="strategy torch .* takes dtype"):
            A.check_case(8, strategy="torch", preset="gqa", dtype="int8")


@pytest.mark.anchors
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("small", SMALL[:1] + SMALL[-1:], ids=lambda s: s[0])
def test_torch_anchor_in_reduced_precision(dtype, small):
    """torch computes with a query rounded to the cache's type, so it is held to the bound
    with the query's rounding added (twice the element bound, loosely)."""
    if A.unavailable_reason("torch"):
        pytest.skip(A.unavailable_reason("torch"))
    name, _ = small
    exact, low = _pair(A.SMALL_CONFIGS[name], dtype, batch=1)
    q = A.random_query(exact)
    truth = reference_decode(exact, q, "naive")
    got = A.decode(low, q, strategy="torch", workers=1)
    assert got.dtype == np.float32
    assert np.all(np.abs(got - truth) <= 3 * _bound(low, exact, q) + _f32_slack(truth))
