"""The partial state of a token range when many query heads share each KV row (MQA, MLA
absorbed, any group of at least :data:`kernels.simd.LANES` heads): the step is then two
small GEMMs per block of tokens, computed with register tiles (:func:`kernels.simd.tile`).

For one KV head, its ``G`` query heads and a block of ``n`` tokens:

- **scores** ``sT [n, G] = K [n, d] @ qT [d, G]``: the heads are the vector lanes. Each
  tile holds ``rows`` tokens by one or two vectors of heads in registers for the whole
  of ``d``; per element, one broadcast of a key serves every head of the tile.
- **softmax** over ``sT``, in vectors across heads: running maxima, the exponentials
  (:func:`kernels.simd.exp_nonpositive`, the polynomial of
  :func:`kernels.attention.jit._exp_neg`), sums.
- **values** ``O [G, dv] += P [G, n] @ V [n, dv]``: the value dimension is the lanes.
  Each tile holds four heads by four vectors of ``O`` in registers across the block's
  tokens; per token, one vector load of a value row serves four heads.

The loads per multiply-add fall from about one (:func:`kernels.attention.jit.partial_jit`
dots each key with each head) to about a half (one, for a group of 16 in the scores),
and no horizontal sums remain.

A float32 cache is read in place. A bf16, fp16 or int8 cache has each block widened
first (and an int8 block multiplied by its scales) into float32 scratch that stays in
the L2 cache, a vector at a time; the GEMMs then run on float32 as above. While a block
computes, the next block's rows are prefetched into L2, a line per step of each tile.
Same arguments and results as :func:`kernels.attention.jit.partial_jit`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels import simd
from kernels.attention.jit import BLOCK, FASTMATH, NEG
from kernels.simd import LANES, REGISTERS, tile

#: Score tiles: (tokens, vectors of heads). Two vectors when the group fills them. With
#: 32 registers the token counts divide BLOCK, so a full block never falls back to
#: one-token tiles (with 12 rows, 8 tokens in 128 did, and a step of MLA took 7% longer).
#: With AVX2's 16, 6 x 2 (15 registers) beat 4 x 2, whose 8 accumulators barely cover
#: two FMA pipes' latency: MLA at 32k 1.03-1.06x, MQA 1.00-1.02x faster (paired, AMD
#: EPYC Zen 3); its blocks are 126 tokens (:func:`block_tokens`).
_S2 = (8, 2) if REGISTERS >= 32 else (6, 2)
_S1 = (8, 1)
#: Value tiles: (heads, vectors of the value dimension). With AVX2's 16 registers 4 x 3
#: (all 16: 12 accumulators, 3 value vectors, a broadcast weight): groups of 16 and 32
#: heads split into whole tiles, where 3 x 3 left one or two heads to 1 x 3 tiles (MLA
#: at 32k 1.06-1.10x and MQA 1.03-1.08x faster, paired, AMD EPYC Zen 3).
_V = (4, 4) if REGISTERS >= 32 else (4, 3)

_score2 = tile(*_S2)
_score2_1 = tile(1, 2)
_score1 = tile(*_S1)
_score1_1 = tile(1, 1)
_value = tile(*_V)
_value_1 = tile(1, _V[1])
_value_v = tile(_V[0], 1)
_value_1v = tile(1, 1)


@njit(nogil=True)
def _score_rows(G):
    """Tokens per score tile for a group of ``G`` heads: two vectors of heads when the
    group fills them (:data:`_S2`), else one (:data:`_S1`)."""
    return _S2[0] if G % (2 * LANES) == 0 else _S1[0]


@njit(nogil=True)
def block_tokens(G):
    """Tokens per online-softmax block for a group of ``G`` heads: the largest multiple of
    the score tile's token rows up to :data:`BLOCK` (126 on AVX2, whose tiles are 6
    tokens deep; 128 with AVX-512's 8), so that no token of a full block falls to a
    one-token tile, which reads a key element per two multiply-adds instead of per
    twelve. With 128 tokens, AVX2 left 2 of every 128 to such tiles: a 32k step took
    1.04x as long as with 120 or 126 for MQA, 1.03x for MLA and mla-v3 (paired, 2
    workers, AMD EPYC Zen 2)."""
    rows = _score_rows(G)
    return BLOCK - BLOCK % rows


def fits(n_heads: int, n_kv_heads: int, widths: tuple[int, ...], compute: np.dtype) -> bool:
    """Whether :func:`partial_wide` computes this shape: float32 compute, a group of
    heads per KV row that fills whole vectors, and key, rotary-key and value widths
    (``widths``) of whole vectors."""
    g = n_heads // n_kv_heads
    return (np.dtype(compute) == np.float32 and g >= LANES and g % LANES == 0
            and all(w % LANES == 0 for w in widths))


@njit(nogil=True)
def _aligned(n):
    """n float32s starting on a 64-byte boundary (see
    :func:`kernels.attention.cache.aligned_zeros`: a vector load across two cache lines
    costs two)."""
    buf = np.empty(n + 16, np.float32)
    start = (64 - buf.ctypes.data % 64) % 64 // 4
    return buf[start : start + n]


@njit(nogil=True)
def _addr(a, row):
    """Byte address of row ``row`` of the 2-D array ``a`` (rows contiguous)."""
    return a.ctypes.data + row * a.strides[0]


@njit(nogil=True)
def _ahead(a, r0, r1):
    """(address, cache lines) of rows [r0, r1) of ``a``, the next block a tile loop
    prefetches beside its arithmetic; no lines where r1 <= r0."""
    return _addr(a, r0), max(0, (r1 - r0) * a.strides[0] // 64)


@njit(nogil=True)
def _share(pf, lines, calls, c):
    """Call ``c`` of ``calls``'s share of the ``lines`` cache lines from ``pf`` on."""
    each = (lines + calls - 1) // calls
    start = min(lines, c * each)
    return pf + start * 64, min(each, lines - start)


@njit(nogil=True, fastmath=FASTMATH)
def _scores_block(qT, K, t, n, sT, add, pf, lines):  # noqa: PLR0913
    """sT[:n] (+)= K[t : t + n] @ qT for float32 rows of K (row stride from K), while the
    ``lines`` cache lines from ``pf`` on are prefetched."""
    d, G = qT.shape
    ldk = K.strides[0] // 4
    lds = sT.strides[0] // 4
    two = G % (2 * LANES) == 0
    step = 2 * LANES if two else LANES
    rows = _score_rows(G)
    calls = n // rows + n % rows
    c = 0
    u = 0
    while u < n:
        kb = _addr(K, t + u)
        p, np_ = _share(pf, lines, calls, c)
        for g0 in range(0, G, step):
            q = qT.ctypes.data + g0 * 4
            out = _addr(sT, u) + g0 * 4
            if u + rows <= n:
                if two:
                    _score2(q, G, kb, ldk, 1, d, out, lds, add, p, np_)
                else:
                    _score1(q, G, kb, ldk, 1, d, out, lds, add, p, np_)
            elif two:
                _score2_1(q, G, kb, ldk, 1, d, out, lds, add, p, np_)
            else:
                _score1_1(q, G, kb, ldk, 1, d, out, lds, add, p, np_)
            np_ = 0
        u += rows if u + rows <= n else 1
        c += 1


@njit(nogil=True, fastmath=FASTMATH)
def _values_block(sT, n, V, t, O, pf, lines):  # noqa: PLR0913
    """O += sT[:n].T @ V[t : t + n] (float32 rows of V), while the ``lines`` cache lines
    from ``pf`` on are prefetched."""
    G, dv = O.shape
    ldv = V.strides[0] // 4
    lds = sT.strides[0] // 4
    ldo = O.strides[0] // 4
    hr, vr = _V
    width = vr * LANES
    calls = ((dv + width - 1) // width) * (G // hr + G % hr)
    c = 0
    for j0 in range(0, dv, width):
        full = j0 + width <= dv
        a = _addr(V, t) + j0 * 4
        g = 0
        while g < G:
            p, np_ = _share(pf, lines, calls, c)
            b = sT.ctypes.data + g * 4
            out = _addr(O, g) + j0 * 4
            rows = hr if g + hr <= G else 1
            if full and rows == hr:
                _value(a, ldv, b, 1, lds, n, out, ldo, True, p, np_)
            elif full:
                _value_1(a, ldv, b, 1, lds, n, out, ldo, True, p, np_)
            else:  # the last, narrower columns: one vector at a time
                for j in range(0, dv - j0, LANES):
                    if rows == hr:
                        _value_v(a + j * 4, ldv, b, 1, lds, n, out + j * 4, ldo, True, p, np_)
                    else:
                        _value_1v(a + j * 4, ldv, b, 1, lds, n, out + j * 4, ldo, True, p,
                                  np_)
                    np_ = 0
            g += rows
            c += 1


@njit(nogil=True, fastmath=FASTMATH)
def _widen_rows(src, t, n, scales, dst, col):
    """dst[:n, col : col + d] = src[t : t + n] widened to float32, times scales[t + u]
    where ``scales`` is not empty (int8); ``LANES`` elements at a time
    (:func:`kernels.simd.load_as_float`; :func:`fits` makes every width a multiple)."""
    d = src.shape[1]
    scaled = scales.shape[0] > 0
    step = src.itemsize * LANES
    for u in range(n):
        row = src[t + u]
        sc = simd.splat(scales[t + u] if scaled else np.float32(1))
        a = row.ctypes.data
        o = dst.ctypes.data + u * dst.strides[0] + col * 4
        like = row[0]
        for j in range(d // LANES):
            simd.store(o + j * LANES * 4, simd.mul(simd.load_as_float(a + j * step, like), sc))


@njit(nogil=True, fastmath=FASTMATH)
def _softmax_block(sT, n, mloc, lloc, corr):
    """Turn the scores sT[:n] into weights exp(s - m) for the new running maxima, and
    update m and l; ``corr`` gets each head's rescale factor for its accumulator.
    Vectors across heads, ``LANES`` at a time; four running maxima break the chain
    (scores are not NaN: the query is checked, and the cache holds what was appended)."""
    G = sT.shape[1]
    rs = sT.strides[0]
    base = sT.ctypes.data
    for g0 in range(0, G, LANES):
        off = g0 * 4
        m0 = m1 = m2 = m3 = simd.load(mloc.ctypes.data + off)
        u = 0
        while u + 4 <= n:
            a = base + u * rs + off
            m0 = simd.vmax_fast(m0, simd.load(a))
            m1 = simd.vmax_fast(m1, simd.load(a + rs))
            m2 = simd.vmax_fast(m2, simd.load(a + 2 * rs))
            m3 = simd.vmax_fast(m3, simd.load(a + 3 * rs))
            u += 4
        while u < n:
            m0 = simd.vmax_fast(m0, simd.load(base + u * rs + off))
            u += 1
        m = simd.vmax_fast(simd.vmax_fast(m0, m1), simd.vmax_fast(m2, m3))
        s0 = s1 = simd.zero()
        u = 0
        while u + 2 <= n:
            a = base + u * rs + off
            e0 = simd.exp_nonpositive(simd.sub(simd.load(a), m))
            e1 = simd.exp_nonpositive(simd.sub(simd.load(a + rs), m))
            simd.store(a, e0)
            simd.store(a + rs, e1)
            s0 = simd.add(s0, e0)
            s1 = simd.add(s1, e1)
            u += 2
        if u < n:
            a = base + u * rs + off
            e0 = simd.exp_nonpositive(simd.sub(simd.load(a), m))
            simd.store(a, e0)
            s0 = simd.add(s0, e0)
        mold = simd.load(mloc.ctypes.data + off)
        c = simd.exp_nonpositive(simd.sub(mold, m))
        simd.store(corr.ctypes.data + off, c)
        lold = simd.load(lloc.ctypes.data + off)
        simd.store(lloc.ctypes.data + off, simd.add(simd.mul(lold, c), simd.add(s0, s1)))
        simd.store(mloc.ctypes.data + off, m)


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def partial_wide(q1, k1, q2, k2, v, t0, t1, m, l, o, ks1, ks2, vs):  # noqa: PLR0913, PLR0915
    """:func:`kernels.attention.jit.partial_jit` for shapes where :func:`fits` holds."""
    B, H, d1 = q1.shape
    d2 = q2.shape[2]
    Hkv = k1.shape[1]
    G = H // Hkv
    dv = v.shape[3]
    narrow = k1.itemsize != 4  # bf16, fp16, int8 (float64 never comes here)
    d = d1 + d2
    qT = _aligned(d * G).reshape((d, G))
    blk = block_tokens(G)
    sT = _aligned(blk * G).reshape((blk, G))
    O = _aligned(G * dv).reshape((G, dv))
    kw = _aligned(blk * d if narrow else 0).reshape((blk if narrow else 0, d))
    vw = _aligned(blk * dv if narrow else 0).reshape((blk if narrow else 0, dv))
    mloc = _aligned(G)
    lloc = _aligned(G)
    corr = _aligned(G)
    for b in range(B):
        for kh in range(Hkv):
            h0 = kh * G
            for g in range(G):
                for i in range(d1):
                    qT[i, g] = q1[b, h0 + g, i]
                for i in range(d2):
                    qT[d1 + i, g] = q2[b, h0 + g, i]
            K1 = k1[b, kh]
            K2 = k2[b, kh]
            V = v[b, kh]
            same_v = V.ctypes.data == K1.ctypes.data and dv <= d1
            mloc[:] = NEG
            lloc[:] = 0
            O[:] = 0
            for tb in range(t0, t1, blk):
                n = min(blk, t1 - tb)
                nxt = min(tb + 2 * blk, t1)
                # The next block's rows stream in while this one computes: its keys
                # during the scores, its values during the value pass (MLA, whose values
                # are the keys' latents: half the latent rows during each pass).
                mid = (tb + blk + nxt) // 2 if same_v else nxt
                pk, lk = _ahead(K1, tb + blk, mid)
                if narrow:
                    _widen_rows(K1, tb, n, ks1[b, kh], kw, 0)
                    if d2:
                        _widen_rows(K2, tb, n, ks2[b, kh], kw, d1)
                    _scores_block(qT, kw, 0, n, sT, False, pk, lk)
                else:
                    _scores_block(qT[:d1], K1, tb, n, sT, False, pk, lk)
                    if d2:
                        pk, lk = _ahead(K2, tb + blk, nxt)
                        _scores_block(qT[d1:], K2, tb, n, sT, True, pk, lk)
                _softmax_block(sT, n, mloc, lloc, corr)
                for g in range(G):
                    if corr[g] != 1:
                        for i in range(dv):
                            O[g, i] *= corr[g]
                pv, lv = _ahead(V, mid if same_v else tb + blk, nxt)
                if narrow and same_v:
                    _values_block(sT, n, kw, 0, O, pv, lv)
                elif narrow:
                    _widen_rows(V, tb, n, vs[b, kh], vw, 0)
                    _values_block(sT, n, vw, 0, O, pv, lv)
                else:
                    _values_block(sT, n, V, tb, O, pv, lv)
            for g in range(G):
                m[b, h0 + g] = mloc[g]
                l[b, h0 + g] = lloc[g]
                o[b, h0 + g, :] = O[g]

