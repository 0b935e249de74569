"""The register-tiled micro-kernels of kernels.simd against NumPy, and the group-GEMM
attention kernels (kernels.attention.wide) against the generic ones, at both vector
widths."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

import kernels.attention as A
from kernels import simd
from kernels.attention import jit, wide
from kernels.attention.config import rotate_query
from kernels.attention.decode import Problem, _read_only
from kernels.attention.precision import numba_view, to_bfloat16, widen

L = simd.LANES


def _fit(shapes, need):
    """The shapes whose tile fits this CPU's registers (``need``: the registers a shape
    takes): AVX2's 16 hold fewer than AVX-512's 32."""
    return [shape for shape in shapes if need(*shape) <= simd.REGISTERS]


TILES = _fit([(1, 1), (4, 2), (8, 1), (3, 3), (4, 4)], simd.tile_registers)
_KERNELS = {shape: simd.tile(*shape) for shape in TILES}


def _make_runner(shape):
    kernel = _KERNELS[shape]

    @njit(nogil=True)
    def run(a, lda, b, ldb_r, ldb_i, k, c, ldc, add, pf, npf):
        kernel(a.ctypes.data, lda, b.ctypes.data, ldb_r, ldb_i, k, c.ctypes.data, ldc, add,
               pf.ctypes.data, npf)

    return run


_RUNNERS = {shape: _make_runner(shape) for shape in TILES}


@pytest.mark.parametrize("shape", TILES)
@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("transposed_b", [False, True])
def test_tile_is_the_product_it_says(shape, add, transposed_b):
    rows, vectors = shape
    rng = np.random.default_rng(rows * 10 + vectors)
    k, cols = 37, vectors * L
    lda, ldc = cols + 5, cols + 3  # rows of a and c need no alignment
    a = rng.standard_normal((k, lda)).astype(np.float32)
    if transposed_b:  # b[r, i] at r + i * ldb_i (the value pass reads weights this way)
        bt = rng.standard_normal((k, rows + 2)).astype(np.float32)
        b, ldb_r, ldb_i, want_b = bt, 1, rows + 2, bt[:, :rows].T
    else:
        b = rng.standard_normal((rows, k + 7)).astype(np.float32)
        ldb_r, ldb_i, want_b = k + 7, 1, b[:, :k]
    c0 = rng.standard_normal((rows, ldc)).astype(np.float32)
    c = c0.copy()
    _RUNNERS[shape](a, lda, b, ldb_r, ldb_i, k, c, ldc, add, a, 3)
    want = want_b.astype(np.float64) @ a[:, :cols].astype(np.float64)
    if add:
        want += c0[:, :cols]
    np.testing.assert_allclose(c[:, :cols], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(c[:, cols:], c0[:, cols:])  # nothing past the tile


WIDENING = _fit([(4, 4), (1, 4), (4, 1), (1, 1), (4, 2)], simd.tile_registers)
_WIDENING_KERNELS = {shape: simd.widening_tile(*shape) for shape in WIDENING}


def _make_widening_runner(shape):
    kernel = _WIDENING_KERNELS[shape]

    @njit(nogil=True)
    def run(a, b, ldb_r, ldb_i, k, c, add, npf):
        kernel(a.ctypes.data, a[0, 0], a.strides[0] // a.itemsize, b.ctypes.data, ldb_r,
               ldb_i, k, c.ctypes.data, c.strides[0] // 4, add, a.ctypes.data, npf)

    return run


_WIDENING_RUNNERS = {shape: _make_widening_runner(shape) for shape in WIDENING}


def _stored(values, name):
    """``values`` in the stored form the kernels read (float16 as its int16 bits)."""
    return {"float32": values,
            "bfloat16": (values.view(np.uint32) >> 16).astype(np.uint16),
            "float16": values.astype(np.float16).view(np.int16),
            "int8": np.clip(np.round(values), -127, 127).astype(np.int8)}[name]


@pytest.mark.parametrize("shape", WIDENING)
@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16", "int8"])
@pytest.mark.parametrize("add", [False, True])
def test_widening_tile_is_the_product_of_the_widened_rows(shape, name, add):
    """The value pass's tile: weights b (transposed, as the scores lie) times narrow
    rows of a widened as loaded, and a prefetch far past the data (a hint) harmless."""
    rows, vectors = shape
    rng = np.random.default_rng(rows * 13 + vectors)
    k, cols = 29, vectors * L
    values = rng.standard_normal((k, cols + 9)).astype(np.float32) * 20
    stored = _stored(values, name)
    spec = A.check_cache_dtype(name)
    a = stored[:, : cols + 5]  # strided rows, a tail the tile must not read into c
    raw = stored[:, :cols].view(np.float16) if name == "float16" else stored[:, :cols]
    widened = widen(np.ascontiguousarray(raw), spec,
                    np.ones(k, np.float32) if spec.scaled else None)
    b = rng.standard_normal((rows, k + 3)).astype(np.float32)
    c0 = rng.standard_normal((rows, cols + 4)).astype(np.float32)
    c = c0.copy()
    _WIDENING_RUNNERS[shape](a, b, k + 3, 1, k, c, add, 10**6)
    want = b[:, :k].astype(np.float64) @ widened.astype(np.float64)
    if add:
        want += c0[:, :cols]
    np.testing.assert_allclose(c[:, :cols], want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(c[:, cols:], c0[:, cols:])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "int8"])
def test_value_tiles_cover_odd_groups_and_widths(dtype):
    """partial_jit's value pass on a narrow cache: 5 heads a group (a tile of four and
    one left over) and a value width of 80 (whole tiles and a last vector or so), against
    the reference on the same stored values."""
    from kernels.attention.reference import reference_decode

    config = A.KVConfig(n_heads=10, n_kv_heads=2, head_dim=80)
    with A.make_cache(config, capacity=300, dtype=dtype) as cache:
        A.fill_random(cache, 300, seed=4)
        q = A.random_query(cache, seed=5)
        want = reference_decode(cache, q)
        got = A.decode(cache, q, strategy="numba", workers=1)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("vectors", [1, 2, 4])
@pytest.mark.parametrize("itemsize", [1, 2, 4])
def test_a_widening_tile_prefetches_as_many_lines_as_each_step_reads(vectors, itemsize):
    step_bytes = vectors * L * itemsize
    lines = simd.prefetch_lines(vectors, itemsize)
    assert (lines - 1) * 64 < step_bytes <= lines * 64


DOTS = _fit([(4, 4), (2, 4), (1, 1), (1, 4), (2, 8)], simd.dot_registers)
_DOT_KERNELS = {shape: simd.dots(*shape) for shape in DOTS}


def _make_dots_runner(shape):
    kernel = _DOT_KERNELS[shape]

    @njit(nogil=True)
    def run(q, k, s, add, sc, scaled):
        kernel(q.ctypes.data, q.strides[0] // 4, k.ctypes.data, k.strides[0] // k.itemsize,
               k[0, 0], q.shape[1], s.ctypes.data, s.strides[0] // 4, add, sc.ctypes.data,
               scaled)

    return run


_DOT_RUNNERS = {shape: _make_dots_runner(shape) for shape in DOTS}


@pytest.mark.parametrize("shape", DOTS)
@pytest.mark.parametrize("name", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("add,scaled", [(False, False), (True, True)])
def test_dots_are_the_products_they_say(shape, name, add, scaled):
    rows, cols = shape
    rng = np.random.default_rng(rows * 7 + cols)
    d = 3 * L
    q = rng.standard_normal((rows, d + 5)).astype(np.float32)[:, :d]  # strided rows
    values = rng.standard_normal((cols, d + 3)).astype(np.float32) * 20
    stored = _stored(values, name)
    spec = A.check_cache_dtype(name)
    k = stored[:, :d]
    widened = widen(np.ascontiguousarray(k), spec,
                    np.ones(cols, np.float32) if spec.scaled else None)
    sc = rng.random(cols).astype(np.float32)
    s0 = rng.standard_normal((rows, cols + 2)).astype(np.float32)
    s = s0.copy()
    _DOT_RUNNERS[shape](q, k, s, add, sc, scaled)
    want = q.astype(np.float64) @ widened.astype(np.float64).T
    want = want * sc if scaled else want
    want = want + s0[:, :cols] if add else want
    np.testing.assert_allclose(s[:, :cols], want, rtol=1e-5, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(s[:, cols:], s0[:, cols:])


def test_a_dot_tile_that_does_not_fold_is_refused():
    with pytest.raises(ValueError, match="fold"):
        simd.dots(3, 5)


def test_a_tile_too_large_for_the_registers_is_refused():
    with pytest.raises(ValueError, match="registers"):
        simd.tile(simd.REGISTERS, 2)


def test_the_avx2_features_turn_off_avx512_and_what_needs_it_alone(monkeypatch):
    host = {"+avx2", "+fma", "+avx512f", "+avx512vnni", "-avx512fp16", "+evex512",
            "+amx-bf16", "+avx10.1-512", "+vaes", ""}
    monkeypatch.setattr(simd, "_host_features", lambda: host)
    assert set(simd.features_without_avx512().split(",")) == {
        "+avx2", "-amx-bf16", "-avx10.1-512", "-avx512f", "-avx512fp16", "-avx512vnni",
        "-evex512", "+fma", "+vaes"}


_needs_int = pytest.mark.skipif(not simd.INT_MADD,
                                reason="no integer multiply-add tiles on this CPU")

#: int_dots' tile here: LANES products, 4 tokens by LANES / 4 heads.
_IROWS = simd.LANES // 4


def _run_int_dots(qi, k, s, add, ksc, qsc, qoff):
    kernel = simd.int_dots(_IROWS, k.shape[0])

    @njit(nogil=True)
    def run(qi, k, s, add, ksc, qsc, qoff):
        kernel(qi.ctypes.data, qi.strides[0] // qi.itemsize, k.ctypes.data, k.strides[0],
               qi.shape[1], s.ctypes.data, s.strides[0] // 4, add, ksc.ctypes.data,
               qsc.ctypes.data, qoff.ctypes.data)

    run(qi, k, s, add, ksc, qsc, qoff)


#: The integer type of int_dots' query here: int8 with VNNI (vpdpbusd), else int16.
_QTYPE = np.int8 if simd.QUERY_BYTES else np.int16


@_needs_int
@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("tokens", [4, 8] if simd.QUERY_BYTES else [4])
def test_int_dots_are_exact_integer_products_scaled(add, tokens):
    """Extreme values too: a query of its type's largest (127 or 32767) against keys of
    -127 and -128 over d = 512, the largest width the kernels give it (int16: -2.13e9,
    just inside int32; int8 with VNNI: the keys offset to unsigned, 128 x sum(q) taken
    off per row; 8 tokens a tile with bytes: two per key vector)."""
    rng = np.random.default_rng(9)
    d = 512
    top = simd.INT_QUERY_MAX
    qi = rng.integers(-top, top + 1, (_IROWS, d + 64)).astype(_QTYPE)[:, :d]
    qi[0] = top
    k = rng.integers(-128, 128, (tokens, d + 8)).astype(np.int8)[:, :d]
    k[0] = -127
    k[1, :7] = -128
    ksc = rng.random(tokens).astype(np.float32)
    qsc = rng.random(_IROWS).astype(np.float32)
    qoff = (128 * qi.astype(np.int64).sum(axis=1)).astype(np.int32)
    s0 = rng.standard_normal((_IROWS, tokens + 3)).astype(np.float32)
    s = s0.copy()
    _run_int_dots(qi, k, s, add, ksc, qsc, qoff)
    exact = qi.astype(np.int64) @ k.astype(np.int64).T  # exact integers
    want = exact.astype(np.float32) * qsc[:, None] * ksc[None, :]
    want = want + s0[:, :tokens] if add else want
    np.testing.assert_allclose(s[:, :tokens], want, rtol=2e-7, atol=0)
    np.testing.assert_array_equal(s[:, tokens:], s0[:, tokens:])


def test_int_dots_need_lanes_products_in_the_registers():
    with pytest.raises(ValueError, match=f"{simd.LANES} products"):
        simd.int_dots(simd.LANES, 2)


@_needs_int
@pytest.mark.parametrize("rows,vectors", [(4, 4), (1, 4), (4, 2), (1, 2), (2, 8)])
@pytest.mark.parametrize("k", [0, 2, 128, 512])
def test_int_values_are_exact_integer_sums_scaled(rows, vectors, k):
    """c[r] += wsc[r] * w[r] @ a, from misaligned rows, columns beyond the tile's left
    alone; at k = 512 with the extreme values (32767 x -127 in every term: -2.13e9,
    just inside int32)."""
    rng = np.random.default_rng(k + rows)
    if simd.tile_registers(rows, vectors) > simd.REGISTERS:
        pytest.skip(f"a {rows} x {vectors} tile needs more than {simd.REGISTERS} registers")
    cols = vectors * simd.LANES
    a = rng.integers(-127, 128, (max(k, 1), cols + 40)).astype(np.int8)[:, 3:]
    w = rng.integers(0, 32768, (rows, k + 6)).astype(np.int16)
    if k == 512:
        a[:, 0] = -127
        w[0] = 32767
    c = rng.standard_normal((rows, cols + 8)).astype(np.float32)
    wsc = rng.random(rows).astype(np.float32)
    want = c.copy()
    exact = w[:, :k].astype(np.int64) @ a[:k, :cols].astype(np.int64)
    want[:, :cols] += wsc[:, None] * exact.astype(np.float32)
    kernel = simd.int_values(rows, vectors)

    @njit(nogil=True)
    def run(a, w, k, c, wsc):
        simd.widest()
        kernel(a.ctypes.data, a.strides[0], w.ctypes.data, w.strides[0] // 2, k,
               c.ctypes.data, c.strides[0] // 4, wsc.ctypes.data, a.ctypes.data, 2)

    run(a, w, k, c, wsc)
    np.testing.assert_allclose(c, want, rtol=3e-7, atol=1e-6)
    np.testing.assert_array_equal(c[:, cols:], want[:, cols:])
    if k == 512:
        assert exact[0, 0] == 512 * 32767 * -127


def test_int_values_need_pairs_of_vectors_in_the_registers():
    with pytest.raises(ValueError, match="even number of vectors"):
        simd.int_values(4, 3)
    with pytest.raises(ValueError, match="even number of vectors"):
        simd.int_values(simd.REGISTERS // 4, 4)  # 32 + 4 + 1 (16 + 4 + 1) registers


_needs_bf16 = pytest.mark.skipif(not simd.BF16_DOT, reason="no vdpbf16ps on this CPU")


def _bf16(x):
    """float32 ``x`` rounded to bfloat16 bits, and those bits widened back (float64)."""
    bits = to_bfloat16(x)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@_needs_bf16
@pytest.mark.parametrize("add", [False, True])
def test_bf16_dots_sum_exact_bfloat16_products(add):
    """From misaligned rows, d = 512: within float32 summation of the exact products."""
    rng = np.random.default_rng(4)
    d = 512
    q, qw = _bf16(rng.standard_normal((4, d + 32)).astype(np.float32)[:, 3:d + 3])
    k, kw = _bf16(rng.standard_normal((4, d + 8)).astype(np.float32)[:, 1:d + 1])
    q, k = np.ascontiguousarray(q), np.ascontiguousarray(k)
    s0 = rng.standard_normal((4, 7)).astype(np.float32)
    s = s0.copy()
    kernel = simd.bf16_dots(4, 4)

    @njit(nogil=True)
    def run(q, k, s, add):
        kernel(q.ctypes.data, q.strides[0] // 2, k.ctypes.data, k.strides[0] // 2,
               q.shape[1], s.ctypes.data, s.strides[0] // 4, add)

    run(q, k, s, add)
    exact = qw @ kw.T + (s0[:, :4] if add else 0)
    tol = 2e-6 * (np.abs(qw) @ np.abs(kw).T) + 1e-6
    assert np.all(np.abs(s[:, :4] - exact) <= tol)
    np.testing.assert_array_equal(s[:, 4:], s0[:, 4:])


@_needs_bf16
@pytest.mark.parametrize("rows,vectors", [(4, 4), (1, 4), (4, 2), (1, 2)])
@pytest.mark.parametrize("k", [0, 2, 128])
def test_bf16_values_sum_exact_bfloat16_products(rows, vectors, k):
    """c[r] += w[r] @ a in column order, from misaligned rows, columns beyond the tile's
    left alone."""
    rng = np.random.default_rng(k + rows)
    cols = vectors * simd.LANES
    a, aw = _bf16(rng.standard_normal((max(k, 1), cols + 40)).astype(np.float32)[:, 3:])
    w, ww = _bf16(rng.random((rows, k + 6)).astype(np.float32))
    c = rng.standard_normal((rows, cols + 8)).astype(np.float32)
    want = c.astype(np.float64)
    want[:, :cols] += ww[:, :k] @ aw[:k, :cols]
    kernel = simd.bf16_values(rows, vectors)

    @njit(nogil=True)
    def run(a, w, k, c):
        simd.widest()
        kernel(a.ctypes.data, a.strides[0] // 2, w.ctypes.data, w.strides[0] // 2, k,
               c.ctypes.data, c.strides[0] // 4, a.ctypes.data, 2)

    run(a, w, k, c)
    tol = 2e-6 * (np.abs(ww[:, :k]) @ np.abs(aw[:k, :cols]) + np.abs(want[:, :cols])) + 1e-6
    assert np.all(np.abs(c[:, :cols] - want[:, :cols]) <= tol)
    np.testing.assert_array_equal(c[:, cols:], want[:, cols:].astype(np.float32))


def test_bf16_tiles_refuse_what_does_not_fit_or_run():
    with pytest.raises(ValueError, match=f"{simd.LANES} products"
                       + ("" if simd.BF16_DOT else ".*no vdpbf16ps")):
        simd.bf16_dots(simd.LANES, 2)
    with pytest.raises(ValueError, match="even number of vectors"):
        simd.bf16_values(4, 3)


@njit(nogil=True)
def _round_bf16(x, n, out):
    jit._to_bf16(x, n, out)


def test_the_kernels_round_to_bfloat16_as_the_cache_does():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(300) * 10.0 ** rng.integers(-30, 30, 300)).astype(np.float32)
    x[:4] = [0, -0.0, 3.0e38, 1.0 + 2.0**-8]  # a tie: to even (1.0)
    out = np.full(300, 7, np.uint16)
    _round_bf16(x, 299, out)
    np.testing.assert_array_equal(out[:299], to_bfloat16(x[:299]))
    assert out[299] == 7 and out[3] == to_bfloat16(np.float32(1.0))


@njit(nogil=True, fastmath=jit.FASTMATH)
def _quantize_w(sg, n, sv, wg):
    return jit._quantize_weights(sg, n, sv, wg)


@pytest.mark.parametrize("n", [128, 7, 1])
def test_the_weights_are_scaled_and_round_to_int16_within_half_a_step(n):
    rng = np.random.default_rng(n)
    p = (rng.random(128) ** 4).astype(np.float32)
    sv = (rng.random(128) + 0.5).astype(np.float32)
    sg = p.copy()
    wg = np.full(128, -1, np.int16)
    scale = _quantize_w(sg, n, sv, wg)
    w = p[:n] * sv[:n]
    np.testing.assert_array_equal(sg[:n], w)
    np.testing.assert_array_equal(sg[n:], p[n:])
    assert scale == np.float32(w.max() / np.float32(32767))
    back = wg[:n].astype(np.float64) * scale
    assert np.all(np.abs(back - w) <= scale * 0.5 * (1 + 1e-5))
    assert wg[:n].max() == 32767 and wg[:n].min() >= 0 and np.all(wg[n:] == -1)
    zeros = np.zeros(8, np.float32)
    assert _quantize_w(zeros, 8, sv, wg) == 0 and not wg[:8].any()


@njit(nogil=True)
def _quantize(qa, qi, qsc, qoff):
    jit._quantize_query(qa, qi, qsc, qoff)


def test_the_query_rounds_to_its_integer_type_within_half_a_step():
    """int8 with VNNI (largest 127), else int16 (32767); qoff is 128 x each head's sum."""
    rng = np.random.default_rng(3)
    qa = rng.standard_normal((5, 64)).astype(np.float32)
    qa[3] = 0  # an all-zero head: scale 0, zeros
    qi = np.empty(qa.shape, _QTYPE)
    qsc = np.empty(5, np.float32)
    qoff = np.empty(5, np.int32)
    _quantize(qa, qi, qsc, qoff)
    top = simd.INT_QUERY_MAX
    np.testing.assert_allclose(qsc, np.abs(qa).max(axis=1) / top, rtol=1e-6)
    back = qi.astype(np.float64) * qsc[:, None]
    assert np.all(np.abs(back - qa) <= qsc[:, None] * 0.5 * (1 + 1e-5) + 1e-12)
    assert np.abs(qi.astype(np.int64)).max() == top and not qi[3].any()
    np.testing.assert_array_equal(qoff, 128 * qi.astype(np.int64).sum(axis=1))


def int_score_bound(q, k_widened):
    """Largest change to a score that rounding each head's query to its integer type can
    make (kernels.attention.jit._quantize_query): half a step, max|q_g| / 254 in int8
    (VNNI) or / 65534 in int16, per element, times the key's L1 norm; and the relative
    change it can make to a softmax weight (e^(2E) - 1: the score and the running
    maximum can each move by E)."""
    step = np.abs(q).max(axis=-1) / (2 * simd.INT_QUERY_MAX)  # per head
    e = float(step.max() * np.abs(k_widened).sum(axis=-1).max())
    return e, float(np.expm1(2 * e))


def head_scores(q1, k1w, q2=None, k2w=None):
    """[B, H, T] float64 scores of every query head against its KV head's widened keys."""
    B, H, _ = q1.shape
    G = H // k1w.shape[1]
    out = np.empty((B, H, k1w.shape[2]))
    for b in range(B):
        for h in range(H):
            out[b, h] = k1w[b, h // G] @ q1[b, h].astype(np.float64)
            if q2 is not None and q2.shape[2]:
                out[b, h] += k2w[b, h // G] @ q2[b, h].astype(np.float64)
    return out


def int_value_bound(scores, m, v_int, v_scale, t0, t1, block=jit.PBLOCK):
    """Largest change to the unnormalised value state o[b, h] (weights e^(s - m)) that
    rounding each block's weights to int16 can make (kernels.attention.jit._quantize_weights,
    the integer value pass): per block of ``block`` tokens from t0 and head, half a step,
    max_t(e^(s_t - m) * scale_t) / 65534, per weight, times the sum of |v_int| over the
    block's tokens, added over the blocks. [B, H, dv]."""
    B, H, _ = scores.shape
    G = H // v_int.shape[1]
    out = np.zeros((B, H, v_int.shape[3]))
    for b in range(B):
        for h in range(H):
            w = np.exp(scores[b, h, t0:t1] - m[b, h]) * v_scale[b, h // G, t0:t1]
            for tb in range(t0, t1, block):
                te = min(tb + block, t1)
                out[b, h] += w[tb - t0 : te - t0].max() / 65534 * np.abs(
                    v_int[b, h // G, tb:te].astype(np.float64)).sum(axis=0)
    return out


def bf16_score_bound(q, k_widened):
    """Largest change to a score that rounding each head's query to bfloat16 can make
    (the vdpbf16ps path, :data:`kernels.simd.BF16_DOT`): u = 2^-8 of each |q_i|, times
    |k_i|; and the relative change to a softmax weight (e^(2E) - 1)."""
    B, H, _ = q.shape
    G = H // k_widened.shape[1]
    e = max(float((np.abs(k_widened[b, h // G]) @ np.abs(q[b, h].astype(np.float64))).max())
            for b in range(B) for h in range(H)) * 2.0**-8
    return e, float(np.expm1(2 * e))


def bf16_value_bound(scores, m, v_widened, t0, t1):
    """Largest change to the unnormalised value state o[b, h] (weights e^(s - m)) that
    rounding each weight to bfloat16 can make: u = 2^-8 of the weight times |v|, summed
    over the tokens. [B, H, dv]."""
    B, H, _ = scores.shape
    G = H // v_widened.shape[1]
    out = np.zeros((B, H, v_widened.shape[3]))
    for b in range(B):
        for h in range(H):
            w = np.exp(scores[b, h, t0:t1] - m[b, h])
            out[b, h] = 2.0**-8 * (w @ np.abs(v_widened[b, h // G, t0:t1].astype(np.float64)))
    return out


@njit(nogil=True)
def _widen_and_exp(x, bits, out_w, out_e):
    simd.widest()
    for j in range(0, bits.shape[0], L):
        simd.store(out_w.ctypes.data + 4 * j,
                   simd.load_as_float(bits.ctypes.data + bits.itemsize * j, bits[0]))
    for j in range(0, x.shape[0], L):
        simd.store(out_e.ctypes.data + 4 * j,
                   simd.exp_nonpositive(simd.load(x.ctypes.data + 4 * j)))


@njit(nogil=True)
def _maxima(x, y, out):
    simd.widest()
    simd.store(out.ctypes.data, simd.vmax_fast(simd.load(x.ctypes.data),
                                               simd.load(y.ctypes.data)))
    return simd.hmax(simd.load(x.ctypes.data))


@pytest.mark.parametrize("seed", range(4))
def test_vector_maxima_lane_wise_and_across(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, L)).astype(np.float32)
    x[seed % L] = 7.5  # the largest lane anywhere
    out = np.empty(L, np.float32)
    assert _maxima(x, y, out) == 7.5
    np.testing.assert_array_equal(out, np.maximum(x, y))


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16", "int8"])
def test_vector_loads_widen_like_the_scalar_kernels(name):
    spec = A.check_cache_dtype(name)
    values = np.random.default_rng(2).standard_normal(4 * L).astype(np.float32) * 50
    stored = {"float32": values,
              "bfloat16": (values.view(np.uint32) >> 16).astype(np.uint16),
              "float16": values.astype(np.float16),
              "int8": np.clip(np.round(values), -127, 127).astype(np.int8)}[name]
    got = np.empty(4 * L, np.float32)
    x = -np.linspace(0, 100, 4 * L).astype(np.float32)
    e = np.empty_like(x)
    _widen_and_exp(x, numba_view(stored), got, e)
    scale = np.ones((), np.float32) if spec.scaled else None
    np.testing.assert_array_equal(got, widen(stored, spec, scale))
    exact = np.exp(x.astype(np.float64))
    kept = x > -64 * np.log(2)
    # x * log2(e) rounds to float32 first: about |x| * 6e-8 of relative error on top of
    # the polynomial's 1e-8 (the scalar kernel's exp has the same)
    assert np.all(np.abs(e[kept] / exact[kept] - 1) <= 3e-7 + 1e-7 * np.abs(x[kept]))
    assert np.all(e[~kept] == 0)


def _operands(name, length, dtype, batch=2):
    config = A.SMALL_CONFIGS.get(name) or A.PRESETS[name]
    cache = A.make_cache(config, capacity=length, batch=batch, dtype=dtype)
    A.fill_random(cache, length, seed=4)
    q = A.random_query(cache, seed=5)
    impl = "absorbed" if isinstance(cache.config, A.MLAConfig) else None
    problem = Problem(cache, rotate_query(cache.config, q, length - 1), impl)
    k1, k2, v, ks1, ks2, vs = problem.operands(cache.arrays())
    return cache, problem, (numba_view(k1), numba_view(k2), numba_view(v), ks1, ks2, vs)


def _partial_against_reference(dtype, t0, t1):
    """partial_jit over tokens [t0, t1) of a GQA-shaped cache of ``dtype`` (4 heads a
    group, width 64, 203 tokens, 2 sequences), and the float64 reference on the same
    stored values: (scaled query, widened keys, widened values, stored values, their
    scales, (m, l, o), (m, l, o) of the reference)."""
    from kernels.attention.reference import partial_python

    config = A.KVConfig(n_heads=8, n_kv_heads=2, head_dim=64)
    cache = A.make_cache(config, capacity=203, batch=2, dtype=dtype)
    with cache:
        A.fill_random(cache, 203, seed=6)
        q = A.random_query(cache, seed=7)
        problem = Problem(cache, rotate_query(config, q, 202), None)
        # copies, read-only as the cache's own: the variant the decode steps compile
        k1, k2, v, ks1, ks2, vs = (_read_only(np.array(a))
                                   for a in problem.operands(cache.arrays()))
    spec = A.check_cache_dtype(dtype)
    scales = (ks1, vs) if spec.scaled else (None, None)
    kw, vw = widen(k1, spec, scales[0]), widen(v, spec, scales[1])
    m, l, o = problem._empty_state(v.shape[3])
    jit.partial_jit(problem.q1, numba_view(k1), problem.q2, numba_view(k2), numba_view(v),
                    t0, t1, m, l, o, ks1, ks2, vs)
    ref = partial_python(problem.q1, kw, problem.q2, np.zeros(k2.shape), vw, t0, t1)
    return problem.q1, kw, vw, v, vs, (m, l, o), ref


@pytest.mark.parametrize("t0,t1", [(0, 203), (5, 130), (1, 4), (128, 203)])
def test_int8_scores_stay_within_the_query_rounding_bound(t0, t1):
    """GQA-shaped groups (4 heads, width 64) over an int8 cache: with the integer tiles
    (VNNI or vpmaddwd), partial_jit scores in integers with the query rounded to int8
    (VNNI) or int16; its state stays within :func:`int_score_bound` of the float64
    reference on the same stored values (blocks with a last token or three, scored in
    float tiles, included)."""
    q1, kw, vw, v, vs, (m, l, o), (rm, rl, ro) = _partial_against_reference("int8", t0, t1)
    e, w = int_score_bound(q1, kw[:, :, t0:t1]) if simd.INT_MADD else (0.0, 0.0)
    np.testing.assert_allclose(m, rm, rtol=1e-6, atol=1e-6 + e)
    np.testing.assert_allclose(l, rl, rtol=1e-5 + w)
    # the values are summed in integers too, the weights rounded to int16
    vb = int_value_bound(head_scores(q1, kw), rm, v, vs, t0, t1) * (1 + w) \
        if simd.INT_MADD else 0.0
    err = np.abs(o / l[..., None] - ro / rl[..., None])
    assert np.all(err <= (1e-5 + 2 * w) * float(np.abs(vw).max()) + vb / rl[..., None])


@pytest.mark.parametrize("t0,t1", [(0, 203), (5, 130), (1, 4), (128, 203)])
def test_bf16_products_stay_within_the_rounding_bound(t0, t1):
    """GQA-shaped groups (4 heads, width 64) over a bfloat16 cache: with vdpbf16ps,
    partial_jit rounds the query and each weight to bfloat16; its state stays within
    :func:`bf16_score_bound` and :func:`bf16_value_bound` of the float64 reference on the
    same stored values (odd blocks' last token, and the last tokens or three of the
    scores, in float tiles, included). Without vdpbf16ps: float32 accumulation only."""
    q1, kw, vw, _, _, (m, l, o), (rm, rl, ro) = _partial_against_reference("bfloat16", t0, t1)
    e, w = bf16_score_bound(q1, kw[:, :, t0:t1]) if simd.BF16_DOT else (0.0, 0.0)
    np.testing.assert_allclose(m, rm, rtol=1e-6, atol=1e-6 + e)
    np.testing.assert_allclose(l, rl, rtol=1e-5 + w)
    vb = bf16_value_bound(head_scores(q1, kw), rm, vw, t0, t1) * (1 + w) \
        if simd.BF16_DOT else 0.0
    err = np.abs(o / l[..., None] - ro / rl[..., None])
    assert np.all(err <= (1e-5 + 2 * w) * float(np.abs(vw).max()) + vb / rl[..., None])
    if simd.BF16_DOT and t1 - t0 > 4:  # the rounding is there: not float32's error
        assert err.max() > 1e-4 * float(np.abs(vw).max())


@pytest.mark.parametrize("name", ["mqa-wide", "mla-wide", "mqa"])  # mqa: 32 heads a group
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("t0,t1", [(0, 1), (5, 300), (128, 256), (3, 11)])
def test_group_gemm_kernel_equals_the_generic_one(name, dtype, t0, t1):
    cache, problem, (k1, k2, v, ks1, ks2, vs) = _operands(name, 300, dtype)
    with cache:
        assert wide.fits(problem.q1.shape[1], k1.shape[1],
                         (k1.shape[3], k2.shape[3], v.shape[3]), problem.dtype)
        states = []
        for kernel in (wide.partial_wide, jit.partial_jit):
            m, l, o = problem._empty_state(v.shape[3])
            kernel(problem.q1, k1, problem.q2, k2, v, t0, t1, m, l, o, ks1, ks2, vs)
            states.append((m, l, o))
        (m1, l1, o1), (m2, l2, o2) = states
        e = w = 0.0
        if dtype == "int8" and simd.INT_MADD and name == "mqa":  # partial_jit scores in integers
            e, w = int_score_bound(problem.q1, widen(k1[..., t0:t1, :], A.check_cache_dtype(
                "int8"), ks1[..., t0:t1]))
        vb = 0.0
        if dtype == "int8" and simd.INT_MADD:  # partial_jit sums int8 values in integers
            spec = A.check_cache_dtype("int8")
            scores = head_scores(problem.q1, widen(k1, spec, ks1), problem.q2,
                                 widen(k2, spec, ks2))
            vb = int_value_bound(scores, m2, v, vs, t0, t1) * (1 + w)
        if dtype == "bfloat16" and simd.BF16_DOT:  # partial_jit's products in bfloat16
            spec = A.check_cache_dtype("bfloat16")
            kw, vw = widen(k1, spec), widen(v, spec)
            e, w = bf16_score_bound(problem.q1, kw[..., t0:t1, :])
            scores = head_scores(problem.q1, kw, problem.q2, widen(k2, spec))
            vb = bf16_value_bound(scores, m2, vw, t0, t1) * (1 + w)
        np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-5 + e)
        np.testing.assert_allclose(l1, l2, rtol=1e-5 + w)
        tol = 2e-5 * np.abs(o2) + (2e-5 + w) * float(np.abs(o2).max()) + vb
        assert np.all(np.abs(o1 - o2) <= tol), float(np.max(np.abs(o1 - o2) - tol))


def test_which_shapes_take_the_group_gemm_kernel():
    assert wide.fits(32, 1, (128, 0, 128), np.float32)  # MQA
    assert wide.fits(16, 1, (512, 64, 512), np.float32)  # MLA absorbed
    assert not wide.fits(32, 8, (128, 0, 128), np.float32)  # GQA: 4 heads a group
    assert not wide.fits(32, 1, (128, 0, 128), np.float64)  # float64: the generic kernel
    assert not wide.fits(32, 1, (128, 0, L + 1), np.float32)  # part of a vector
    assert not wide.fits(16, 1, (512, L // 2, 512), np.float32)  # half a vector of rotary key


#: A numba step of a small GQA cache of ``dtype`` (4 heads a group, width 64) against the
#: reference on its stored values, as code for :func:`_run_alone`.
_GQA_STEP = (
    "c = A.make_cache(A.KVConfig(8, 2, 64), capacity=150, dtype={dtype!r})\n"
    "A.fill_random(c, 150, seed=1)\n"
    "q = A.random_query(c)\n"
    "want = reference_decode(c, q)\n"
    "got = A.decode(c, q, strategy='numba', workers=1)\n"
)


def _run_alone(code, env, tmp_path):
    """Run ``code`` in a process of its own, with ``env`` added to the environment and
    numba's cache in ``tmp_path`` (so nothing compiled for another configuration is
    loaded); it must end without error."""
    env = {**os.environ, **env, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code + "print('ok')\n"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


#: Code for :func:`_run_alone` that fails where numba's code for this process may use
#: AVX-512: its registers (``zmm``, ``ymm16``-``ymm31``) in a function using the widest
#: vectors.
_NO_AVX512 = (
    "import re\n"
    "from numba import njit\n"
    "@njit(fastmath=True)\n"
    "def dot(a, b):\n"
    "    simd.widest()\n"
    "    s = np.float32(0)\n"
    "    for i in range(a.size):\n"
    "        s += a[i] * b[i]\n"
    "    return s\n"
    "x = np.ones(1024, np.float32)\n"
    "assert dot(x, x) == 1024\n"
    "asm = ''.join(dot.inspect_asm().values())\n"
    "assert 'ymm' in asm and not re.search(r'zmm|ymm(1[6-9]|2[0-9]|3[01])\\b', asm)\n"
)


@pytest.mark.slow  # 25-45 s of compiling; on a CPU without AVX-512 every test runs 8 lanes
def test_lanes_can_be_chosen_and_a_bad_choice_is_refused(tmp_path):
    """The 8-lane kernels (an AVX2 CPU's: group GEMMs, 2 x 4 dot tiles) give the
    reference's answers here too, in a process of their own (numba's cache in a fresh
    folder, so nothing compiled for another width is loaded). On an AVX-512 CPU they
    are compiled as for AVX2 (:func:`kernels.simd.features_without_avx512`): 16
    registers, no AVX-512 instruction, as an AVX2 CPU compiles them."""
    code = (
        "import numpy as np, kernels.attention as A\n"
        "from kernels import simd\n"
        "from kernels.attention.reference import reference_decode\n"
        "assert simd.LANES == 8, simd.LANES\n"
        + _NO_AVX512 +
        "for name in ('mqa-wide', 'mla-wide', 'gqa-small'):\n"
        "    c = A.make_cache(A.SMALL_CONFIGS[name], capacity=150, batch=1, dtype='bfloat16')\n"
        "    A.fill_random(c, 150, seed=1)\n"
        "    q = A.random_query(c)\n"
        "    want = reference_decode(c, q)\n"
        "    got = A.decode(c, q, strategy='threaded', inner='numba', workers=2)\n"
        "    err = np.abs(got - want).max() / np.abs(want).max()\n"
        "    assert err < 1e-5, (name, err)\n"
        "assert not simd.VNNI and simd.INT_MADD in ('pmaddwd', '')  # AVX2's integer tiles\n"
        + _GQA_STEP.format(dtype="int8") +
        "# the query and weights in int16 (test_int8_scores_stay_within_...: the bound)\n"
        "tol = 2e-3 if simd.INT_MADD else 1e-5\n"
        "assert np.abs(got - want).max() / np.abs(want).max() < tol\n"
    )
    _run_alone(code, {"KERNELRACE_SIMD_LANES": "8",
                      "NUMBA_CPU_FEATURES": simd.features_without_avx512()}, tmp_path)
    env = {**os.environ, "KERNELRACE_SIMD_LANES": "12"}
    done = subprocess.run([sys.executable, "-c", "import kernels.simd"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "must be 8 or 16" in done.stderr


@pytest.mark.slow  # 20-40 s of compiling
@_needs_bf16
def test_bf16_float_tiles_can_be_chosen_on_a_cpu_with_vdpbf16ps(tmp_path):
    """``KERNELRACE_BF16_DOT=0`` keeps the float tiles (the query and weights unrounded):
    a GQA step on a bfloat16 cache then matches the reference on the stored values to
    float32 accumulation, in a process of its own."""
    code = (
        "import numpy as np, kernels.attention as A\n"
        "from kernels import simd\n"
        "from kernels.attention.reference import reference_decode\n"
        "assert not simd.BF16_DOT and '-bf16-' not in simd.cache_tag()\n"
        + _GQA_STEP.format(dtype="bfloat16") +
        "assert np.abs(got - want).max() / np.abs(want).max() < 1e-5\n"
    )
    _run_alone(code, {"KERNELRACE_BF16_DOT": "0"}, tmp_path)


def test_the_attention_kernels_cache_is_kept_apart_per_vector_configuration_and_code(
        tmp_path, monkeypatch):
    """numba stamps a cached function with its own file only: the attention kernels'
    entries sit in a folder named by the vector configuration and a hash of the tiles'
    and chunk kernels' source, so a changed tile or KERNELRACE_INT_TILES=0 never loads code
    compiled for something else. Other kernels keep numba's own place."""
    from kernels.sieve import jit as sieve_jit

    tag = simd.cache_tag()
    assert tag.startswith(f"simd{L}") and (f"-{simd.INT_MADD}-" in tag) == bool(simd.INT_MADD)
    assert ("-bf16-" in tag) == simd.BF16_DOT
    assert ("-q16-" in tag) == (simd.INT_MADD == "vnni" and not simd.QUERY_BYTES)
    for f in (jit.partial_jit, jit.fused):
        assert os.path.basename(f._cache._cache_path) == tag
    assert os.path.basename(sieve_jit._count_ones._cache._cache_path) != tag
    # Every place numba may put it (NUMBA_CACHE_DIR, __pycache__, the user-wide cache of
    # a read-only install) is wrapped, ahead of numba's own.
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    names = [c.__name__ for c in impl._locator_classes]
    for base in simd._WRAPPED_LOCATORS:
        assert names.index(f"Kernelrace{base}") < names.index(base)
    wide_locator = next(c for c in impl._locator_classes
                        if c.__name__ == "KernelraceUserWideCacheLocator")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    found = wide_locator.from_function(jit.partial_jit.py_func, jit.__file__)
    assert os.path.basename(found.get_cache_path()) == tag
    env = {**os.environ, "KERNELRACE_INT_TILES": "0", "KERNELRACE_SIMD_LANES": "8"}
    other = subprocess.run([sys.executable, "-c", "from kernels import simd; "
                            "print(simd.cache_tag())"], env=env, capture_output=True,
                           text=True, timeout=120, check=True).stdout.strip()
    assert other.startswith("simd8-") and other.split("-")[-1] == tag.split("-")[-1]
    if simd.INT_MADD == "vnni":  # the query's integer type is compiled in too
        env = {**os.environ, "KERNELRACE_INT8_QUERY": "0"}
        q16 = subprocess.run([sys.executable, "-c", "from kernels import simd; "
                              "print(simd.QUERY_BYTES, simd.cache_tag())"], env=env,
                             capture_output=True, text=True, timeout=120,
                             check=True).stdout.split()
        assert q16[0] == "False" and "-vnni-q16-" in q16[1]
    copy = tmp_path / "simd.py"
    copy.write_bytes(open(simd.__file__, "rb").read() + b"\n# changed\n")
    monkeypatch.setattr(simd, "_CACHE_DEPENDS", (str(copy), *simd._CACHE_DEPENDS[1:]))
    simd.cache_tag.cache_clear()
    try:
        assert simd.cache_tag().split("-")[-1] != tag.split("-")[-1]
    finally:
        simd.cache_tag.cache_clear()


def test_cache_folders_of_earlier_code_are_removed_and_the_rest_kept(tmp_path, monkeypatch):
    """The locators prune their folder once per process: an earlier version's folders
    go (any configuration), this version's in other configurations and anything not
    named like a tag stay."""
    current = simd.cache_tag().rsplit("-", 1)[1]
    old = "0123456789abcdef"
    keep = sorted({simd.cache_tag(), f"simd8-{current}", f"simd16-vnni-{current}",
                   f"simd16-vnni-bf16-{current}", f"simd16-vnni-q16-bf16-{current}",
                   "simd16-vnni-xyz",
                   "jit.partial_jit-1.py311.nbi", "other"})
    gone = [f"simd16-vnni-{old}", f"simd8-{old}", f"simd16-{old}", f"simd16-vnni-bf16-{old}",
            f"simd16-vnni-q16-{old}"]
    for name in keep + gone:
        (tmp_path / name).mkdir()
        (tmp_path / name / "entry.nbc").write_bytes(b"x")
    simd._prune_stale(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    # through a locator: numba's user-wide place, under a fresh XDG_CACHE_HOME
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    wide_locator = next(c for c in impl._locator_classes
                        if c.__name__ == "KernelraceUserWideCacheLocator")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    found = wide_locator.from_function(jit.partial_jit.py_func, jit.__file__)
    parent = os.path.dirname(found.get_cache_path())
    os.makedirs(os.path.join(parent, f"simd16-{old}"))
    simd._prune_stale.cache_clear()
    found.get_cache_path()
    assert not os.path.exists(os.path.join(parent, f"simd16-{old}"))
