"""numba chunk kernels, the one parallel decode driver, the query rotation, and the one merge.

The partial softmax state of a token range, per (sequence, query head), is
``m`` (the largest score), ``l = sum(exp(s - m))`` and ``o = sum(exp(s - m) * v)``.
Two states merge exactly: with ``M = max(m1, m2)``,
``l = l1 e^(m1-M) + l2 e^(m2-M)`` and ``o = o1 e^(m1-M) + o2 e^(m2-M)``; the answer is
``o / l``. :func:`merge_partials` is the only code that does this across chunks; the
``numba``, ``threaded`` and ``multiprocess`` strategies all call it.

:func:`partial_jit` makes one pass over its token range, in blocks of ``BLOCK`` (or
``PBLOCK``) tokens: for each KV head it streams every K row once and scores it against
all the query heads of its group, updates the running (m, l, o) once per block, then streams
every V row once into all the group's accumulators. So each cached byte is read once
per step whatever the group size (GQA/MQA never repeat K/V). The same kernel runs
MLA absorbed: one "KV head" whose keys are ``[c_kv | k_pe]`` and whose values are
``c_kv``.

Reduced-precision caches (:mod:`kernels.attention.precision`) run the same tiles: each
cached element is widened to float32 where it is loaded (:func:`_wide`: bfloat16 bits
shifted into a float32, float16 bits through ``fpext half``, int8 converted), and the
arithmetic is float32; except where the CPU multiplies narrow pairs itself: int8 caches
in integers (:data:`_INT_SCORES`, :data:`_INT_VALUES`; the weights in int16, the query
in int8 with VNNI, else int16) and bfloat16 caches in bfloat16 products (:data:`_BF16`;
the query and weights rounded to bfloat16), their sums int32 or float32. An int8
cache's per-(token, head) scales are applied to whole dot products, not elements: a
key's scale multiplies its score once, and a value's scale multiplies its softmax
weight once before the value pass.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from kernels import native, simd

#: Tokens per online-softmax block of the group GEMM kernels (:mod:`.wide`; scores for a
#: block stay in L1).
BLOCK = 128

#: Tokens per block of :func:`partial_jit` where an int8 cache's keys are scored in
#: integers (GQA-like groups), else ``BLOCK``: twice as many, so that the per-block
#: work (each head's softmax set-up, the integer value tiles' reordering and
#: conversion) spreads over more tokens. int8 GQA steps at 32k: medians of five paired
#: runs 1.01-1.06x faster on one thread and 1.01-1.05x on two (AMD EPYC Zen 4); the
#: other paths did not gain (MHA int8 0.97x on one thread, bf16 and float32
#: 0.98-1.02x). With the query in bytes (:data:`kernels.simd.QUERY_BYTES`) four times
#: as many, the most the integer value sums hold exactly: the chunk kernel 15.2 -> 14.3
#: ns per (token, KV head) on an L2-resident slab, GQA 32k steps 0.940-0.942x the time
#: on one thread, level on two (paired, AMD EPYC Zen 4, 2026-12-03). An int8 block's
#: weights are rounded to int16 against its largest.
PBLOCK = (4 if simd.QUERY_BYTES else 2) * BLOCK

#: How many tokens ahead of the rows being computed their K and V rows are prefetched
#: (into L2, a few lines per register tile, so that the fetches run beside the
#: arithmetic instead of in bursts between blocks).
PREFETCH = 64

# reassoc lets LLVM vectorise the dot-product reductions; no nnan/ninf, because the
# empty-state sentinel and exp underflow must behave.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# The helpers below are plain numba functions with the kernels' FASTMATH, each marked for
# the widest vectors (simd.widest(), or any simd vector operation), compiled once per
# signature and left to LLVM to inline or call;
# numba's own inline="always" copied each into partial_jit's IR before typing, which made
# every cold compile of a cache type 1.4-2x longer (GQA float32 37 -> 24 s, bf16 45 ->
# 21 s; MQA 17-19 -> 12-13 s, AMD EPYC Zen 4) for the same results: bit-identical
# outputs, and the L2-resident step 0.89-1.00x the time (paired).

#: The "minus infinity" of a state with no tokens yet (finite so fastmath is safe).
NEG = -3.0e38


@intrinsic
def _wide(typingctx, x):  # noqa: ARG001 (numba passes the typing context)
    """One cached element as the kernels compute with it: float32 and float64 as they
    are; uint16 as bfloat16 bits (``bits << 16`` is the float32, exactly); int16 as
    float16 bits (``fpext half``: ``vcvtph2ps`` on x86); int8 converted to float32 (the
    caller applies its scale). Plain IR, so LLVM vectorises the loops it sits in."""
    f32 = ir.FloatType()

    def same(context, builder, signature, args):  # noqa: ARG001
        return args[0]

    def bf16(context, builder, signature, args):  # noqa: ARG001
        i32 = ir.IntType(32)
        return builder.bitcast(builder.shl(builder.zext(args[0], i32), i32(16)), f32)

    def fp16(context, builder, signature, args):  # noqa: ARG001
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), f32)

    def i8(context, builder, signature, args):  # noqa: ARG001
        return builder.sitofp(args[0], f32)

    if x in (types.float32, types.float64):
        return x(x), same
    table = {types.uint16: bf16, types.int16: fp16, types.int8: i8}
    if x in table:
        return types.float32(x), table[x]
    return None


@njit(nogil=True, fastmath=FASTMATH)
def _dot(a, b):
    simd.widest()
    acc = a.dtype.type(0)
    for i in range(a.shape[0]):
        acc += a[i] * _wide(b[i])
    return acc


@njit(nogil=True, fastmath=FASTMATH)
def _axpy(p, x, y):
    simd.widest()
    for i in range(x.shape[0]):
        y[i] += p * _wide(x[i])


#: :data:`kernels.simd.EXP2_TAYLOR` as float32, for :func:`_exp_neg`.
_E2 = tuple(np.float32(c) for c in simd.EXP2_TAYLOR)


@njit(nogil=True, fastmath=FASTMATH)
def _exp_neg(x, n, ibuf):
    """x[:n] = exp(x[:n]) for float32 x <= 0, in a loop LLVM vectorises (numba's np.exp
    is a scalar libm call): 2**round(y) built in the exponent bits (y = x / ln 2), times
    the degree-7 Taylor polynomial of 2**z on |z| <= 1/2 (relative error ~1e-8, below
    float32 eps), in Estrin's scheme: :func:`kernels.simd.exp_nonpositive`'s formula.

    Weights below 2**-64 come out as exactly 0 (y = -127 gives zero exponent bits):
    every x here is a score minus a running maximum whose own weight, 1, is in the sum,
    so such a weight is 2**40 below what float32 can add to it; and it keeps the
    products p * v out of the denormal range, where a multiply can take a microcode
    assist (on the benchmarks' random caches the flush changes the time by 0-4%).
    """
    simd.widest()
    fb = ibuf.view(np.float32)
    c0, c1, c2, c3 = _E2[0], _E2[1], _E2[2], _E2[3]
    c4, c5, c6, c7 = _E2[4], _E2[5], _E2[6], _E2[7]
    for t in range(n):
        y = x[t] * np.float32(1.4426950408889634)
        y = y if y >= np.float32(-64.0) else np.float32(-127.0)
        r = np.floor(y + np.float32(0.5))
        z = y - r
        z2 = z * z
        p = (c0 + c1 * z + (c2 + c3 * z) * z2) + (c4 + c5 * z + (c6 + c7 * z) * z2) * (z2 * z2)
        ibuf[t] = (np.int32(r) + np.int32(127)) << np.int32(23)
        x[t] = p * fb[t]


@intrinsic
def _prefetch(typingctx, addr):  # noqa: ARG001 (numba passes the typing context)
    """Hint the CPU to pull the cache line at integer address ``addr`` into L2
    (``llvm.prefetch``, read, locality 1: ``prefetcht2`` on x86). A hint only: it never
    faults, whatever the address. L2 rather than L1: issued inside the register tiles,
    L1 prefetches made a GQA step 8% slower and L2 prefetches 6% faster (an L1
    prefetch holds one of the core's few line-fill buffers until its line arrives,
    and here the two vCPUs share them)."""
    sig = types.void(types.uintp)

    def codegen(context, builder, signature, args):  # noqa: ARG001
        ptr_t = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr_t, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [ptr_t], fnty)
        builder.call(fn, [builder.inttoptr(args[0], ptr_t), i32(0), i32(1), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, fastmath=FASTMATH)
def _prefetch_rows(a, r0, r1, hi):
    """Prefetch rows [r0, min(r1, hi)) of the C-contiguous 2-D array ``a``."""
    r1 = min(r1, hi)
    if r1 > r0:
        base = a.ctypes.data
        row = a.shape[1] * a.itemsize
        for off in range(r0 * row, r1 * row, 64):
            _prefetch(base + off)


@njit(nogil=True, fastmath=FASTMATH)
def _scores(qa, K, tb, n, s, add, hi, sc):  # noqa: PLR0913, PLR0915 (one unrolled tile)
    """s[g, t] (+)= qa[g] . K[tb + t] (times sc[tb + t], if sc is not empty) for the G
    query heads of qa and t < n.

    Four heads by four tokens at a time: each of the 16 dot products keeps its own
    vector accumulator, so every query load and every key load serves four products.
    Each tile prefetches the K rows ``PREFETCH`` tokens ahead (below row ``hi``).
    """
    simd.widest()
    G, d = qa.shape
    zero = s.dtype.type(0)
    scaled = sc.shape[0] > 0
    t = 0
    while t + 4 <= n:
        k0 = K[tb + t]
        k1 = K[tb + t + 1]
        k2 = K[tb + t + 2]
        k3 = K[tb + t + 3]
        _prefetch_rows(K, tb + t + PREFETCH, tb + t + PREFETCH + 4, hi)
        g = 0
        while g + 4 <= G:
            q0 = qa[g]
            q1 = qa[g + 1]
            q2 = qa[g + 2]
            q3 = qa[g + 3]
            a00 = a01 = a02 = a03 = zero
            a10 = a11 = a12 = a13 = zero
            a20 = a21 = a22 = a23 = zero
            a30 = a31 = a32 = a33 = zero
            for i in range(d):
                x0 = _wide(k0[i])
                x1 = _wide(k1[i])
                x2 = _wide(k2[i])
                x3 = _wide(k3[i])
                y = q0[i]
                a00 += y * x0
                a01 += y * x1
                a02 += y * x2
                a03 += y * x3
                y = q1[i]
                a10 += y * x0
                a11 += y * x1
                a12 += y * x2
                a13 += y * x3
                y = q2[i]
                a20 += y * x0
                a21 += y * x1
                a22 += y * x2
                a23 += y * x3
                y = q3[i]
                a30 += y * x0
                a31 += y * x1
                a32 += y * x2
                a33 += y * x3
            tile = ((a00, a01, a02, a03), (a10, a11, a12, a13),
                    (a20, a21, a22, a23), (a30, a31, a32, a33))
            for r in range(4):
                row = tile[r]
                for c in range(4):
                    val = row[c] * sc[tb + t + c] if scaled else row[c]
                    s[g + r, t + c] = val + s[g + r, t + c] if add else val
            g += 4
        while g < G:
            qg = qa[g]
            a0 = a1 = a2 = a3 = zero
            for i in range(d):
                y = qg[i]
                a0 += y * _wide(k0[i])
                a1 += y * _wide(k1[i])
                a2 += y * _wide(k2[i])
                a3 += y * _wide(k3[i])
            row = (a0, a1, a2, a3)
            for c in range(4):
                val = row[c] * sc[tb + t + c] if scaled else row[c]
                s[g, t + c] = val + s[g, t + c] if add else val
            g += 1
        t += 4
    while t < n:
        kr = K[tb + t]
        for g in range(G):
            a = _dot(qa[g], kr)
            a = a * sc[tb + t] if scaled else a
            s[g, t] = a + s[g, t] if add else a
        t += 1


#: Heads per dots tile: 4 x 4 products need 16 accumulators and 8 operands, which
#: AVX-512's 32 registers hold and AVX2's 16 do not (2 x 4 there).
_DOT_HEADS = 4 if simd.REGISTERS >= 32 else 2
_dots = simd.dots(_DOT_HEADS, 4)
_dots11 = simd.dots(1, 1)


@njit(nogil=True, fastmath=FASTMATH)
def _scores_tiled(qa, K, tb, n, s, add, hi, sc):
    """:func:`_scores` with :func:`kernels.simd.dots` tiles (float32 queries, widths of
    whole vectors, groups of a multiple of ``_DOT_HEADS`` heads): that many heads by four
    tokens, the sums folded together instead of reduced one by one; a last token or
    three, one head at a time."""
    G, d = qa.shape
    scaled = sc.shape[0] > 0
    like = K[tb, 0]
    ldk = K.strides[0] // K.itemsize
    ldq = qa.strides[0] // 4
    lds = s.strides[0] // 4
    sca = sc.ctypes.data
    t = 0
    while t < n:
        four = t + 4 <= n
        if four:
            _prefetch_rows(K, tb + t + PREFETCH, tb + t + PREFETCH + 4, hi)
        kb = K.ctypes.data + (tb + t) * K.strides[0]
        sa = sca + (tb + t) * 4 if scaled else sca
        for g in range(0, G, _DOT_HEADS if four else 1):
            qb = qa.ctypes.data + g * qa.strides[0]
            out = s.ctypes.data + g * s.strides[0] + t * 4
            if four:
                _dots(qb, ldq, kb, ldk, like, d, out, lds, add, sa, scaled)
            else:
                _dots11(qb, ldq, kb, ldk, like, d, out, lds, add, sa, scaled)
        t += 4 if four else 1


#: int8 keys scored in integers (:data:`kernels.simd.INT_MADD`, AVX-512 VNNI or
#: ``vpmaddwd``; :func:`kernels.simd.int_dots`): 4 heads (2 with AVX2's 16 registers) by 4
#: tokens a tile, the query rounded per head to int8 with VNNI (``vpdpbusd``), else to
#: int16 (:func:`_quantize_query`).
_INT_SCORES = bool(simd.INT_MADD)
_IDOT_HEADS = simd.LANES // 4
_idots = simd.int_dots(_IDOT_HEADS, 4) if _INT_SCORES else None
#: With the query in bytes, tiles of 8 tokens, two to a key vector (fewer folds per
#: score: the L2-resident scores 1.26x faster, AMD EPYC Zen 4); the tiles of 4 take
#: a block's last 4 to 7 tokens.
_PAIRED = simd.QUERY_BYTES
_idots8 = simd.int_dots(_IDOT_HEADS, 8) if _PAIRED else _idots
#: The integer type of the query and its largest value (:data:`kernels.simd.QUERY_BYTES`).
_QTYPE = np.int8 if simd.QUERY_BYTES else np.int16
_QMAX = np.float32(simd.INT_QUERY_MAX)


@njit(nogil=True, fastmath=FASTMATH)
def _quantize_query(qa, qi, qsc, qoff):
    """qi[g] = round(qa[g] / qsc[g]) with qsc[g] = max|qa[g]| / QMAX: each head's query in
    int8 (QMAX 127, where :data:`kernels.simd.QUERY_BYTES`) or int16 (QMAX 32767), off by
    at most qsc[g] / 2 = max|qa[g]| / (2 QMAX) per element (an all-zero head gets scale
    0); qoff[g] = 128 * sum(qi[g]), what the int8 tiles' unsigned keys add to a score."""
    simd.widest()
    G, d = qa.shape
    for g in range(G):
        mx = np.float32(0)
        for i in range(d):
            mx = max(mx, abs(qa[g, i]))
        qsc[g] = mx / _QMAX
        inv = _QMAX / mx if mx > 0 else np.float32(0)
        total = 0
        for i in range(d):
            x = min(max(np.floor(qa[g, i] * inv + np.float32(0.5)), -_QMAX), _QMAX)
            qi[g, i] = x
            total += np.int32(x)
        qoff[g] = np.int32(128) * total


@njit(nogil=True, fastmath=FASTMATH)
def _scores_int(qi, qsc, qoff, qa, K, tb, n, s, hi, sc):  # noqa: PLR0913
    """s[g, t] = qa[g] . K[tb + t] * sc[tb + t] for int8 rows of K, four heads by eight
    tokens (:data:`_idots8`, with the query in bytes) or four at a time in integers
    (:data:`_idots`, with the integer query ``qi``, its
    scales ``qsc`` and offsets ``qoff``: :func:`_quantize_query`); a last token or three
    in float tiles (:func:`_scores_tiled`). Each tile prefetches the K rows
    ``PREFETCH`` tokens ahead (below row ``hi``)."""
    if not _INT_SCORES:  # no integer tiles: never called (pruned at compile time)
        return
    G, d = qi.shape
    ldq = qi.strides[0] // qi.itemsize
    lds = s.strides[0] // 4
    t = 0
    while t + 4 <= n:
        eight = _PAIRED and t + 8 <= n
        rows = 8 if eight else 4
        _prefetch_rows(K, tb + t + PREFETCH, tb + t + PREFETCH + rows, hi)
        kb = K.ctypes.data + (tb + t) * K.strides[0]
        ks = sc.ctypes.data + (tb + t) * 4
        for g in range(0, G, _IDOT_HEADS):
            q = qi.ctypes.data + g * qi.strides[0]
            out = s.ctypes.data + g * s.strides[0] + t * 4
            if eight:
                _idots8(q, ldq, kb, K.strides[0], d, out, lds, False, ks,
                        qsc.ctypes.data + g * 4, qoff.ctypes.data + g * 4)
            else:
                _idots(q, ldq, kb, K.strides[0], d, out, lds, False, ks,
                       qsc.ctypes.data + g * 4, qoff.ctypes.data + g * 4)
        t += rows
    if t < n:
        _scores_tiled(qa, K, tb + t, n - t, s[:, t:], False, hi, sc)


@njit(nogil=True, fastmath=FASTMATH)
def _accumulate(s, V, tb, n, acc, hi):  # noqa: PLR0915 (one unrolled register tile)
    """acc[g] += sum over t < n of s[g, t] * V[tb + t], four heads by four V rows at a
    time: each V load serves four heads and each accumulator load and store four rows,
    and every accumulator takes its rows as one chain of fused multiply-adds (no
    separate products). Each tile prefetches the V rows ``PREFETCH`` tokens ahead.
    """
    simd.widest()
    G, dv = acc.shape
    t = 0
    while t + 4 <= n:
        v0 = V[tb + t]
        v1 = V[tb + t + 1]
        v2 = V[tb + t + 2]
        v3 = V[tb + t + 3]
        _prefetch_rows(V, tb + t + PREFETCH, tb + t + PREFETCH + 4, hi)
        g = 0
        while g + 4 <= G:
            a0, a1, a2, a3 = acc[g], acc[g + 1], acc[g + 2], acc[g + 3]
            s0, s1, s2, s3 = s[g], s[g + 1], s[g + 2], s[g + 3]
            p00, p01, p02, p03 = s0[t], s0[t + 1], s0[t + 2], s0[t + 3]
            p10, p11, p12, p13 = s1[t], s1[t + 1], s1[t + 2], s1[t + 3]
            p20, p21, p22, p23 = s2[t], s2[t + 1], s2[t + 2], s2[t + 3]
            p30, p31, p32, p33 = s3[t], s3[t + 1], s3[t + 2], s3[t + 3]
            for i in range(dv):
                x0, x1, x2, x3 = _wide(v0[i]), _wide(v1[i]), _wide(v2[i]), _wide(v3[i])
                a0[i] = (((a0[i] + p00 * x0) + p01 * x1) + p02 * x2) + p03 * x3
                a1[i] = (((a1[i] + p10 * x0) + p11 * x1) + p12 * x2) + p13 * x3
                a2[i] = (((a2[i] + p20 * x0) + p21 * x1) + p22 * x2) + p23 * x3
                a3[i] = (((a3[i] + p30 * x0) + p31 * x1) + p32 * x2) + p33 * x3
            g += 4
        while g < G:
            sg = s[g]
            p0, p1, p2, p3 = sg[t], sg[t + 1], sg[t + 2], sg[t + 3]
            ag = acc[g]
            for i in range(dv):
                ag[i] = ((((ag[i] + p0 * _wide(v0[i])) + p1 * _wide(v1[i]))
                          + p2 * _wide(v2[i])) + p3 * _wide(v3[i]))
            g += 1
        t += 4
    while t < n:
        vr = V[tb + t]
        for g in range(G):
            _axpy(s[g, t], vr, acc[g])
        t += 1


#: Value tiles: heads by vectors of the value dimension, held in registers across a
#: block's tokens (4 x 4 in AVX-512's 32 registers, 4 x 2 in AVX2's 16).
_VT = (4, 4) if simd.REGISTERS >= 32 else (4, 2)
_vtile = simd.widening_tile(*_VT)
_vtile_1 = simd.widening_tile(1, _VT[1])
_vtile_v = simd.widening_tile(_VT[0], 1)
_vtile_1v = simd.widening_tile(1, 1)


@njit(nogil=True, fastmath=FASTMATH)
def _values_tiled(s, V, tb, n, acc, pf, lines):
    """acc[g] += sum over t < n of s[g, t] * V[tb + t] with register tiles
    (:func:`kernels.simd.widening_tile`): ``_VT[0]`` heads by ``_VT[1]`` vectors of
    ``acc`` stay in registers across the block's tokens, and each vector load of a
    value row (widened where it is narrow) serves every head of the tile. Meanwhile
    the ``lines`` cache lines from ``pf`` on are prefetched, each call as many as it
    reads."""
    G, dv = acc.shape
    like = V[tb, 0]
    ldv = V.strides[0] // V.itemsize
    lds = s.strides[0] // 4
    ldo = acc.strides[0] // 4
    hr, vr = _VT
    width = vr * simd.LANES
    row0 = V.ctypes.data + tb * V.strides[0]
    wide_lines = n * simd.prefetch_lines(vr, V.itemsize)
    one_lines = n * simd.prefetch_lines(1, V.itemsize)
    for j0 in range(0, dv, width):
        full = j0 + width <= dv  # else the last, narrower columns: a vector at a time
        step = width if full else simd.LANES
        per_call = wide_lines if full else one_lines
        g = 0
        while g < G:
            rows = hr if g + hr <= G else 1
            b = s.ctypes.data + g * s.strides[0]
            for j in range(j0, min(j0 + width, dv), step):
                a = row0 + j * V.itemsize
                out = acc.ctypes.data + g * acc.strides[0] + j * 4
                if full and rows == hr:
                    _vtile(a, like, ldv, b, lds, 1, n, out, ldo, True, pf, lines)
                elif full:
                    _vtile_1(a, like, ldv, b, lds, 1, n, out, ldo, True, pf, lines)
                elif rows == hr:
                    _vtile_v(a, like, ldv, b, lds, 1, n, out, ldo, True, pf, lines)
                else:
                    _vtile_1v(a, like, ldv, b, lds, 1, n, out, ldo, True, pf, lines)
                used = min(lines, per_call)
                pf += used * 64
                lines -= used
            g += rows


#: int8 value rows summed in integers (:data:`kernels.simd.INT_MADD`,
#: :func:`kernels.simd.int_values`): the block's softmax weights rounded to int16 per head,
#: two tokens per instruction; 4 heads by 4 vectors a tile (4 by 2 with AVX2's 16
#: registers), else 4 (or 1) by 2.
_INT_VALUES = bool(simd.INT_MADD) and PBLOCK <= simd.INT_VALUES_MAX_K
_IVT = (4, 4) if simd.REGISTERS >= 32 else (4, 2)
_ivt = simd.int_values(*_IVT) if _INT_VALUES else None
_ivt_1 = simd.int_values(1, _IVT[1]) if _INT_VALUES else None
_ivt_v = simd.int_values(4, 2) if _INT_VALUES else None
_ivt_1v = simd.int_values(1, 2) if _INT_VALUES else None


@njit(nogil=True, fastmath=FASTMATH)
def _quantize_weights(sg, n, sv, wg):
    """sg[t] *= sv[t], then wg[t] = round(sg[t] / scale) for t < n, with scale =
    max(sg[:n]) / 32767 (returned; sg >= 0, an all-zero block gets scale 0): a block's
    weights for one head, times the value rows' scales, in int16, each off by at most
    scale / 2 = max(sg[:n]) / 65534."""
    simd.widest()
    for t in range(n):
        sg[t] *= sv[t]
    mx = _max32(sg, n, np.float32(0))
    inv = np.float32(32767) / mx if mx > 0 else np.float32(0)
    for t in range(n):
        wg[t] = np.int16(min(np.floor(sg[t] * inv + np.float32(0.5)), np.float32(32767)))
    return mx / np.float32(32767)


@njit(nogil=True, fastmath=FASTMATH)
def _values_int(w16, wsc, V, tb, n, acc, pf, lines):
    """acc[g] += wsc[g] * sum over t < n of w16[g, t] * V[tb + t] for int8 rows of V and
    an even ``n``, in integers (:data:`_ivt`): 4 heads by ``_IVT[1]`` vectors of columns
    (or 1 head, or 2 vectors) a tile, prefetching the ``lines`` lines from ``pf`` on as
    it goes."""
    if not _INT_VALUES:  # no integer tiles: never called (pruned at compile time)
        return
    G, dv = acc.shape
    ldv = V.strides[0]
    ldw = w16.strides[0] // 2
    ldo = acc.strides[0] // 4
    row0 = V.ctypes.data + tb * ldv
    width = _IVT[1] * simd.LANES
    for j0 in range(0, dv, width):
        full = j0 + width <= dv  # else the last 2 vectors of columns
        # the lines a step of two tokens reads, as many as the tile prefetches
        per_call = (n // 2) * simd.prefetch_lines(_IVT[1] if full else 2, 2)
        g = 0
        while g < G:
            four = g + 4 <= G
            a = row0 + j0
            wb = w16.ctypes.data + g * w16.strides[0]
            out = acc.ctypes.data + g * acc.strides[0] + j0 * 4
            sc = wsc.ctypes.data + g * 4
            if full and four:
                _ivt(a, ldv, wb, ldw, n, out, ldo, sc, pf, lines)
            elif full:
                _ivt_1(a, ldv, wb, ldw, n, out, ldo, sc, pf, lines)
            elif four:
                _ivt_v(a, ldv, wb, ldw, n, out, ldo, sc, pf, lines)
            else:
                _ivt_1v(a, ldv, wb, ldw, n, out, ldo, sc, pf, lines)
            used = min(lines, per_call)
            pf += used * 64
            lines -= used
            g += 4 if four else 1


#: bfloat16 caches with ``vdpbf16ps`` (:data:`kernels.simd.BF16_DOT`, AVX-512 BF16): the
#: query and each block's softmax weights rounded to bfloat16 like the cache, then the
#: scores and value sums as :func:`kernels.simd.bf16_dots` / :func:`kernels.simd.bf16_values`
#: tiles, 4 heads by 4 tokens and 4 heads (or 1) by 4 vectors (or 2), float32 sums.
_BF16 = simd.BF16_DOT
_bdots = simd.bf16_dots(4, 4) if _BF16 else None
_bvt = simd.bf16_values(4, 4) if _BF16 else None
_bvt_1 = simd.bf16_values(1, 4) if _BF16 else None
_bvt_v = simd.bf16_values(4, 2) if _BF16 else None
_bvt_1v = simd.bf16_values(1, 2) if _BF16 else None


@intrinsic
def _is_bf16(typingctx, a):  # noqa: ARG001 (numba passes the typing context)
    """Whether ``a`` holds bfloat16 bits (uint16), as a constant LLVM folds away."""
    yes = isinstance(a, types.Array) and a.dtype == types.uint16

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return context.get_constant(types.boolean, yes)

    return types.boolean(a), codegen


@njit(nogil=True, fastmath=FASTMATH)
def _to_bf16(x, n, out):
    """out[i] = x[i] rounded to bfloat16 (nearest, ties to even: the cache's rounding,
    :func:`kernels.attention.precision.to_bfloat16`) as uint16 bits, for i < n; ``x`` a
    contiguous float32 row."""
    simd.widest()
    u = x.view(np.uint32)
    for i in range(n):
        b = u[i]
        out[i] = np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))
                           >> np.uint32(16))


@njit(nogil=True, fastmath=FASTMATH)
def _scores_bf16(qb, qa, K, tb, n, s, hi, sc):
    """s[g, t] = qb[g] . K[tb + t] for bfloat16 rows of K and the bfloat16 query ``qb``,
    four heads by four tokens at a time (:data:`_bdots`); a last token or three in float
    tiles with the float32 query ``qa`` (:func:`_scores_tiled`; ``sc`` the cache's empty
    scales). Each tile prefetches the K rows ``PREFETCH`` tokens ahead (below row
    ``hi``)."""
    if not _BF16:  # no vdpbf16ps: never called (pruned at compile time)
        return
    G, d = qb.shape
    ldq = qb.strides[0] // 2
    ldk = K.strides[0] // 2
    lds = s.strides[0] // 4
    t = 0
    while t + 4 <= n:
        _prefetch_rows(K, tb + t + PREFETCH, tb + t + PREFETCH + 4, hi)
        kb = K.ctypes.data + (tb + t) * K.strides[0]
        for g in range(0, G, 4):
            _bdots(qb.ctypes.data + g * qb.strides[0], ldq, kb, ldk, d,
                   s.ctypes.data + g * s.strides[0] + t * 4, lds, False)
        t += 4
    if t < n:
        _scores_tiled(qa, K, tb + t, n - t, s[:, t:], False, hi, sc)


@njit(nogil=True, fastmath=FASTMATH)
def _values_bf16(wb, V, tb, n, acc, pf, lines):
    """acc[g] += sum over t < n of wb[g, t] * V[tb + t] for bfloat16 rows of V, bfloat16
    weights ``wb`` and an even ``n`` (:data:`_bvt`): 4 heads by 4 vectors of columns (or
    1 head, or 2 vectors) a tile, prefetching the ``lines`` lines from ``pf`` on as it
    goes."""
    if not _BF16:  # no vdpbf16ps: never called (pruned at compile time)
        return
    G, dv = acc.shape
    ldv = V.strides[0] // 2
    ldw = wb.strides[0] // 2
    ldo = acc.strides[0] // 4
    row0 = V.ctypes.data + tb * V.strides[0]
    width = 4 * simd.LANES
    for j0 in range(0, dv, width):
        full = j0 + width <= dv  # else the last 2 vectors of columns
        per_call = (n // 2) * simd.prefetch_lines(4 if full else 2, 4)
        g = 0
        while g < G:
            four = g + 4 <= G
            a = row0 + j0 * 2
            w = wb.ctypes.data + g * wb.strides[0]
            out = acc.ctypes.data + g * acc.strides[0] + j0 * 4
            if full and four:
                _bvt(a, ldv, w, ldw, n, out, ldo, pf, lines)
            elif full:
                _bvt_1(a, ldv, w, ldw, n, out, ldo, pf, lines)
            elif four:
                _bvt_v(a, ldv, w, ldw, n, out, ldo, pf, lines)
            else:
                _bvt_1v(a, ldv, w, ldw, n, out, ldo, pf, lines)
            used = min(lines, per_call)
            pf += used * 64
            lines -= used
            g += 4 if four else 1


@njit(nogil=True, fastmath=FASTMATH)
def _max32(x, n, init):
    """:func:`_max` of a contiguous float32 row, in vectors (``vmaxps``; LLVM leaves the
    eight scalar chains of :func:`_max` scalar)."""
    L = simd.LANES
    m = simd.splat(init)
    a = x.ctypes.data
    t = 0
    while t + L <= n:
        m = simd.vmax_fast(m, simd.load(a + 4 * t))
        t += L
    mx = simd.hmax(m)
    while t < n:
        mx = max(mx, x[t])
        t += 1
    return mx


@njit(nogil=True, fastmath=FASTMATH)
def _max(x, n, init):
    """max(init, x[:n]) with eight independent running maxima (no latency chain)."""
    simd.widest()
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = init
    t = 0
    while t + 8 <= n:
        m0 = max(m0, x[t])
        m1 = max(m1, x[t + 1])
        m2 = max(m2, x[t + 2])
        m3 = max(m3, x[t + 3])
        m4 = max(m4, x[t + 4])
        m5 = max(m5, x[t + 5])
        m6 = max(m6, x[t + 6])
        m7 = max(m7, x[t + 7])
        t += 8
    while t < n:
        m0 = max(m0, x[t])
        t += 1
    return max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))


@njit(nogil=True, fastmath=FASTMATH)
def _scratch(G, dv, block, like):
    """The accumulators acc [G, dv] at the start of a page and the scores s [G, block]
    on the next page boundary after them, carved from one buffer of ``like``'s dtype.
    Fixed offsets make the kernel's speed reproducible: with each array wherever
    malloc put it, MQA and MLA steps ran up to 2.5x slower in some placements than in
    others (measured; the cause, presumably the accumulate tile's stores against the
    loads after them, was not pinned down).
    """
    page = 4096 // like.itemsize
    na = (G * dv + page - 1) // page * page
    buf = np.empty(na + G * block + page, like.dtype)
    a0 = (4096 - buf.ctypes.data % 4096) % 4096 // buf.itemsize
    acc = buf[a0 : a0 + G * dv].reshape((G, dv))
    s = buf[a0 + na : a0 + na + G * block].reshape((G, block))
    return acc, s


def _only_for(fn, dtype, default=None):
    """``f(key, *args)``: ``fn(*args)`` where ``key`` is an array of ``dtype``; for any
    other key a call that compiles to nothing but ``default``. :func:`partial_jit` calls
    the int8 and bfloat16 tiles only on such caches, but numba types and compiles every
    call in a function for each of its signatures: a float32 step compiled them all, and
    took 14.9 s to compile where it now takes 11.0 (GQA, fresh cache, AMD EPYC Zen 4)."""
    def stub(key, *args):
        raise NotImplementedError("compiled code only")

    @overload(stub, jit_options={"nogil": True, "fastmath": FASTMATH})
    def _typed(key, *args):
        if isinstance(key, types.Array) and key.dtype == dtype:
            return lambda key, *args: fn(*args)
        return lambda key, *args: default

    return stub


_int8_query = _only_for(_quantize_query, types.int8)
_int8_scores = _only_for(_scores_int, types.int8)
_int8_weights = _only_for(_quantize_weights, types.int8, np.float32(0))
_int8_values = _only_for(_values_int, types.int8)
# The register tiles take float32 states only; a float64 cache's step (o float64) keeps
# _scores and _accumulate, and without these its compile failed on the tiles' types.
_f32_scores = _only_for(_scores_tiled, types.float32)
_f32_values = _only_for(_values_tiled, types.float32)
_bf16_round = _only_for(_to_bf16, types.uint16)
_bf16_scores = _only_for(_scores_bf16, types.uint16)
_bf16_values = _only_for(_values_bf16, types.uint16)


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def partial_jit(q1, k1, q2, k2, v, t0, t1, m, l, o, ks1, ks2, vs):  # noqa: PLR0913
    """Write the partial state over tokens [t0, t1) into m, l [B, H] and o [B, H, dv].

    q1 [B, H, d1], k1 [B, Hkv, cap, d1], q2 [B, H, d2], k2 [B, Hkv, cap, d2],
    v [B, Hkv, cap, dv]; queries pre-scaled; query head h reads KV head h // (H // Hkv).
    K/V elements float32, float64, or stored narrow (see :func:`_wide`); ks1, ks2, vs
    [B, Hkv, cap] are an int8 cache's scales of k1, k2, v rows ([B, Hkv, 0]: none).
    While it scores (and sums values) it prefetches the K (V) rows ``PREFETCH`` tokens
    ahead, a few per register tile: the hardware prefetchers stop at 4 KiB page edges,
    and without the hints a core waits on memory and computes in turn instead of at once.
    """
    simd.widest()
    B, H, d1 = q1.shape
    d2 = q2.shape[2]
    Hkv = k1.shape[1]
    G = H // Hkv
    dv = v.shape[3]
    zero = o.dtype.type(0)
    acc, s = _scratch(G, dv, PBLOCK, o)
    # GQA-like groups (4, 8 heads): dots tiles, 6-11% faster on GQA, paired; MHA (one
    # head) keeps _scores: a 1 x 4 tile is 4 latency-bound chains (3% slower, paired)
    tiled1 = o.itemsize == 4 and d1 % simd.LANES == 0 and G % _DOT_HEADS == 0 and G > 1
    tiled2 = tiled1 and d2 % simd.LANES == 0
    # Narrow value rows: register tiles (bf16 and int8 GQA steps at 32k 1.11-1.24x faster,
    # paired). float32 rows too where vectors are 8 lanes (AVX2): GQA at 1k and 32k
    # 1.25-1.32x faster, MHA 1.08-1.11x (paired, AMD EPYC Zen 3); with AVX-512 they keep
    # _accumulate, 0.83x / 0.92x as fast with the tiles there.
    tiledv = o.itemsize == 4 and (v.itemsize < 4 or simd.LANES == 8) \
        and dv % simd.LANES == 0
    # int8 value rows in integers where the CPU has the tiles (weights rounded to int16)
    intv = _INT_VALUES and tiledv and v.itemsize == 1 and dv % 32 == 0
    # int8 keys in integers where the CPU has the tiles (GQA-like groups, no rotary part)
    intk = _INT_SCORES and tiled1 and k1.itemsize == 1 and G % 4 == 0 \
        and d1 % simd.INT_DOTS_STEP == 0 and d1 <= simd.INT_DOTS_MAX_D and d2 == 0
    # bfloat16 caches with vdpbf16ps where the CPU has it: keys as the int8 ones, values
    # as the narrow rows' tiles
    bk = _BF16 and tiled1 and _is_bf16(k1) and G % 4 == 0 and d1 % 32 == 0 and d2 == 0
    bv = _BF16 and tiledv and _is_bf16(v) and dv % 32 == 0
    qf = np.empty(d1 if bk else 0, np.float32)
    qb16 = np.empty((G if bk else 0, d1), np.uint16)
    wb16 = np.empty((G if bv else 0, PBLOCK), np.uint16)
    blk = PBLOCK if intk else BLOCK
    qi = np.empty((G if intk else 0, d1), _QTYPE)
    qsc = np.empty(G, np.float32)
    qoff = np.empty(G, np.int32)
    w16 = np.empty((G if intv else 0, PBLOCK), np.int16)
    wsc = np.empty(G, np.float32)
    mloc = np.empty(G, o.dtype)
    lloc = np.empty(G, o.dtype)
    ibuf = np.empty(PBLOCK, np.int32)
    for b in range(B):
        for kh in range(Hkv):
            h0 = kh * G
            qa = q1[b, h0 : h0 + G]
            qb = q2[b, h0 : h0 + G]
            K1 = k1[b, kh]
            K2 = k2[b, kh]
            V = v[b, kh]
            S1 = ks1[b, kh]
            S2 = ks2[b, kh]
            SV = vs[b, kh]
            vscaled = SV.shape[0] > 0
            mloc[:] = NEG
            lloc[:] = zero
            acc[:] = zero
            if intk:
                _int8_query(K1, qa, qi, qsc, qoff)
            if bk:
                for g in range(G):
                    qf[:] = qa[g]
                    _bf16_round(K1, qf, d1, qb16[g])
            for tb in range(t0, t1, blk):
                n = min(blk, t1 - tb)
                if bk:
                    _bf16_scores(K1, qb16, qa, K1, tb, n, s, t1, S1)
                elif intk:
                    _int8_scores(K1, qi, qsc, qoff, qa, K1, tb, n, s, t1, S1)
                elif tiled1:
                    _f32_scores(o, qa, K1, tb, n, s, False, t1, S1)
                else:
                    _scores(qa, K1, tb, n, s, False, t1, S1)
                if d2 and tiled2:
                    _f32_scores(o, qb, K2, tb, n, s, True, t1, S2)
                elif d2:
                    _scores(qb, K2, tb, n, s, True, t1, S2)
                for g in range(G):
                    sg = s[g]
                    mx = _max32(sg, n, mloc[g]) if sg.itemsize == 4 else _max(sg, n, mloc[g])
                    corr = np.exp(mloc[g] - mx)
                    total = zero
                    for t in range(n):
                        sg[t] = sg[t] - mx
                    if sg.itemsize == 4:
                        _exp_neg(sg, n, ibuf)
                    else:  # float64 caches keep libm's exp
                        for t in range(n):
                            sg[t] = np.exp(sg[t])
                    for t in range(n):
                        total += sg[t]
                    lloc[g] = lloc[g] * corr + total
                    mloc[g] = mx
                    if intv:  # scaled, then rounded to int16 against their largest
                        wsc[g] = _int8_weights(V, sg, n, SV[tb : tb + n], w16[g])
                    elif bv:  # rounded to bfloat16
                        _bf16_round(V, sg, n, wb16[g])
                    elif vscaled:  # each value row's scale, once per weight
                        for t in range(n):
                            sg[t] *= SV[tb + t]
                    if corr != 1:
                        for i in range(dv):
                            acc[g, i] *= corr
                if tiledv:
                    nxt = min(tb + 2 * blk, t1)
                    lines = max(0, nxt - tb - blk) * V.strides[0] // 64
                    pf = V.ctypes.data + (tb + blk) * V.strides[0]
                    if intv or bv:
                        even = n - n % 2
                        if intv:
                            _int8_values(V, w16, wsc, V, tb, even, acc, pf, lines)
                        else:
                            _bf16_values(V, wb16, V, tb, even, acc, pf, lines)
                        if even < n:  # the last token in float
                            _f32_values(o, s[:, even:], V, tb + even, 1, acc, pf, 0)
                    else:
                        _f32_values(o, s, V, tb, n, acc, pf, lines)
                else:
                    _accumulate(s, V, tb, n, acc, t1)
            for g in range(G):
                m[b, h0 + g] = mloc[g]
                l[b, h0 + g] = lloc[g]
                o[b, h0 + g, :] = acc[g]


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def naive_partial_jit(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, t0, t1, m, l, o,  # noqa: PLR0913
                      cs, ps):
    """MLA naive partial state over [t0, t1): every cached latent is up-projected to this
    head's key (w_uk[h] @ c_kv[t]) and value (w_uv[h] @ c_kv[t]) before it is used.
    Each latent and rotary key row is widened (times its int8 scale from cs, ps [B, cap];
    [B, 0]: none) once per use, O(r) against the O(r (nope + v)) projection.
    """
    B, H, nope = q_nope.shape
    rope = q_pe.shape[2]
    r = c_kv.shape[2]
    dv = w_uv.shape[1]
    zero = o.dtype.type(0)
    one = o.dtype.type(1)
    acc = np.empty(dv, o.dtype)
    lat = np.empty(r, o.dtype)
    pe = np.empty(rope, o.dtype)
    scaled = cs.shape[1] > 0
    for b in range(B):
        for h in range(H):
            mloc = o.dtype.type(NEG)
            lloc = zero
            for i in range(dv):
                acc[i] = zero
            for t in range(t0, t1):
                sc = cs[b, t] if scaled else one
                sp = ps[b, t] if scaled else one
                for i in range(r):
                    lat[i] = _wide(c_kv[b, t, i]) * sc
                for i in range(rope):
                    pe[i] = _wide(k_pe[b, t, i]) * sp
                a = zero
                for j in range(nope):
                    kj = zero
                    for i in range(r):
                        kj += w_uk[h, j, i] * lat[i]
                    a += q_nope[b, h, j] * kj
                for i in range(rope):
                    a += q_pe[b, h, i] * pe[i]
                if a > mloc:
                    corr = np.exp(mloc - a)
                    lloc *= corr
                    for i in range(dv):
                        acc[i] *= corr
                    mloc = a
                p = np.exp(a - mloc)
                lloc += p
                for j in range(dv):
                    vj = zero
                    for i in range(r):
                        vj += w_uv[h, j, i] * lat[i]
                    acc[j] += p * vj
            m[b, h] = mloc
            l[b, h] = lloc
            for i in range(dv):
                o[b, h, i] = acc[i]


@njit(nogil=True, cache=True)
def rotate_one(q, start, position, inv_freq, interleaved, out):
    """out [B, H, D] (float64) = the query q [B, H, D] with columns ``start:`` rotated at
    ``position`` by RoPE (``start``, ``interleaved``, ``inv_freq``: from
    :func:`kernels.attention.config.query_rope`): adjacent pairs where ``interleaved``,
    else the halves (rotate-half); columns before ``start`` copied. Returns whether
    every element of q is finite (the decode step's query check, in the same pass:
    NumPy's ``isfinite`` and ``all`` took 33 us of a 32k step after the layer before).
    :func:`kernels.attention.config.rotate_query` in one compiled pass: its dozen NumPy
    calls took 22-33 us of a decode step (a 1k MQA step is 0.2 ms)."""
    return rotate_scaled(q, start, position, inv_freq, interleaved, 1.0, out)


@njit(nogil=True, cache=True)
def rotate_scaled(q, start, position, inv_freq, interleaved, scale, out):
    """:func:`rotate_one` times ``scale``, computed in float64 and stored in ``out``'s
    dtype: for a K/V cache's ``numba`` step, the query the kernels take (rotated,
    scaled, in the compute dtype) in one pass, bit for bit what rotating, multiplying
    by ``scale`` and casting with NumPy give. Returns whether q is finite."""
    B, H, D = q.shape
    half = (D - start) // 2
    cos = np.empty(half)
    sin = np.empty(half)
    for i in range(half):
        angle = position * inv_freq[i]
        cos[i] = np.cos(angle)
        sin[i] = np.sin(angle)
    finite = True
    for b in range(B):
        for h in range(H):
            for j in range(start):
                x = np.float64(q[b, h, j])
                finite = finite and np.isfinite(x)
                out[b, h, j] = x * scale
            for i in range(half):
                if interleaved:
                    ja, jb = start + 2 * i, start + 2 * i + 1
                else:
                    ja, jb = start + i, start + half + i
                x = np.float64(q[b, h, ja])
                y = np.float64(q[b, h, jb])
                finite = finite and np.isfinite(x) and np.isfinite(y)
                out[b, h, ja] = (x * cos[i] - y * sin[i]) * scale
                out[b, h, jb] = (y * cos[i] + x * sin[i]) * scale
    return finite


@njit(nogil=True, cache=True)
def merge_partials(m, l, o, out):
    """Merge S partial states m, l [S, B, H], o [S, B, H, dv] into out = o / l [B, H, dv].

    States with l == 0 (empty token ranges) are skipped. Arithmetic in float64.
    """
    S, B, H = m.shape
    dv = o.shape[3]
    acc = np.empty(dv, np.float64)
    for b in range(B):
        for h in range(H):
            mx = -np.inf
            for s in range(S):
                if l[s, b, h] > 0 and m[s, b, h] > mx:
                    mx = np.float64(m[s, b, h])
            total = 0.0
            for i in range(dv):
                acc[i] = 0.0
            for s in range(S):
                if l[s, b, h] > 0:
                    w = np.exp(np.float64(m[s, b, h]) - mx)
                    total += w * l[s, b, h]
                    for i in range(dv):
                        acc[i] += w * o[s, b, h, i]
            for i in range(dv):
                out[b, h, i] = acc[i] / total


@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True)
def absorb(q, w, out):
    """MLA's W_UK folded into the query: out[b, h] = q[b, h] @ w[h] ([B, H, n] x
    [H, n, r] -> [B, H, r]), heads in parallel on numba's pool. The step's first read
    of the weights (4 MiB for ``mla`` in float32, 32 MiB for ``mla-v3``), which NumPy's
    batched matmul made on one thread: at 32k, after the layer before, it took 0.30 ms
    of an ``mla`` step (AMD EPYC Zen 2, 2 workers)."""
    B, H, n = q.shape
    r = w.shape[2]
    for h in prange(H):
        for b in range(B):
            acc = out[b, h]
            for j in range(r):
                acc[j] = 0
            for i in range(n):
                x = q[b, h, i]
                wi = w[h, i]
                for j in range(r):
                    acc[j] += x * wi[j]


@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True)
def project(o, w, out):
    """MLA's W_UV after attention in the latent space: out[b, h, j] = o[b, h] . w[h, j]
    ([B, H, r] x [H, v, r] -> [B, H, v]), heads in parallel: :func:`absorb`'s twin for
    the step's other weights."""
    B, H, r = o.shape
    v = w.shape[1]
    for h in prange(H):
        for b in range(B):
            x = o[b, h]
            for j in range(v):
                wj = w[h, j]
                acc = out.dtype.type(0)
                for k in range(r):
                    acc += x[k] * wj[k]
                out[b, h, j] = acc


@njit(parallel=True, nogil=True, cache=True)
def fused(partial, head, tail, length, splits, out):
    """One decode step: ``splits`` token ranges in parallel (prange), then the merge into
    ``out`` [B, H, dv]. ``partial`` is the address (:func:`kernels.native.address`) of a
    chunk kernel called as ``kernel(*head, t0, t1, m, l, o, *tail)``: :func:`partial_jit`
    or :func:`kernels.attention.wide.partial_wide` (``head`` = q1, k1, q2, k2, v;
    ``tail`` = the scales) or :func:`naive_partial_jit`. Called by address, the kernel is
    not compiled again into this driver (:mod:`kernels.native`)."""
    B, H, dv = out.shape
    m = np.empty((splits, B, H), out.dtype)
    l = np.empty((splits, B, H), out.dtype)
    o = np.empty((splits, B, H, dv), out.dtype)
    for s in prange(splits):
        native.call(partial, head + (s * length // splits, (s + 1) * length // splits,
                                     m[s], l[s], o[s]) + tail)
    merge_partials(m, l, o, out)


def fused_address(kernel, head, tail, out):
    """The address of ``kernel`` for the arguments :func:`fused` passes it: its m[s],
    l[s] and o[s] are C-contiguous arrays of ``out``'s dtype, as ``out[0]`` and ``out``."""
    return native.address(kernel, (*head, 0, 0, out[0], out[0], out, *tail))
