"""numba chunk kernels, the fused decode drivers, and the one merge of partial states.

The partial softmax state of a token range, per (sequence, query head), is
``m`` (the largest score), ``l = sum(exp(s - m))`` and ``o = sum(exp(s - m) * v)``.
Two states merge exactly: with ``M = max(m1, m2)``,
``l = l1 e^(m1-M) + l2 e^(m2-M)`` and ``o = o1 e^(m1-M) + o2 e^(m2-M)``; the answer is
``o / l``. :func:`merge_partials` is the only code that does this across chunks; the
``numba``, ``threaded`` and ``multiprocess`` strategies all call it.

:func:`partial_jit` makes one pass over its token range, in blocks of ``BLOCK``
tokens: for each KV head it streams every K row once and scores it against all the
query heads of its group, updates the running (m, l, o) once per block, then streams
every V row once into all the group's accumulators. So each cached byte is read once
per step whatever the group size (GQA/MQA never repeat K/V). The same kernel runs
MLA absorbed: one "KV head" whose keys are ``[c_kv | k_pe]`` and whose values are
``c_kv``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Tokens per online-softmax block (scores for a block stay in L1).
BLOCK = 128

# reassoc lets LLVM vectorise the dot-product reductions; no nnan/ninf, because the
# empty-state sentinel and exp underflow must behave.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

#: The "minus infinity" of a state with no tokens yet (finite so fastmath is safe).
NEG = -3.0e38


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _dot(a, b):
    acc = a.dtype.type(0)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _axpy(p, x, y):
    for i in range(x.shape[0]):
        y[i] += p * x[i]


@njit(nogil=True, fastmath=FASTMATH, inline="always")
def _exp_neg(x, n, ibuf):
    """x[:n] = exp(x[:n]) for float32 x <= 0, in a loop LLVM vectorises (numba's np.exp
    is a scalar libm call): 2**round(y) built in the exponent bits, times a degree-7
    Taylor polynomial of e**z on |z| <= ln2/2 (relative error ~1e-8, below float32 eps).
    """
    fb = ibuf.view(np.float32)
    for t in range(n):
        y = max(x[t] * np.float32(1.4426950408889634), np.float32(-126.0))
        r = np.floor(y + np.float32(0.5))
        z = (y - r) * np.float32(0.6931471805599453)
        p = np.float32(1.0 / 5040)
        p = p * z + np.float32(1.0 / 720)
        p = p * z + np.float32(1.0 / 120)
        p = p * z + np.float32(1.0 / 24)
        p = p * z + np.float32(1.0 / 6)
        p = p * z + np.float32(0.5)
        p = p * z + np.float32(1.0)
        p = p * z + np.float32(1.0)
        ibuf[t] = (np.int32(r) + np.int32(127)) << np.int32(23)
        x[t] = p * fb[t]


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def partial_jit(q1, k1, q2, k2, v, t0, t1, m, l, o):  # noqa: PLR0913
    """Write the partial state over tokens [t0, t1) into m, l [B, H] and o [B, H, dv].

    q1 [B, H, d1], k1 [B, Hkv, cap, d1], q2 [B, H, d2], k2 [B, Hkv, cap, d2],
    v [B, Hkv, cap, dv]; queries pre-scaled; query head h reads KV head h // (H // Hkv).
    Tokens are taken four at a time so each query load serves four K rows and each
    accumulator load/store serves four V rows.
    """
    B, H, d1 = q1.shape
    d2 = q2.shape[2]
    Hkv = k1.shape[1]
    G = H // Hkv
    dv = v.shape[3]
    zero = o.dtype.type(0)
    s = np.empty((G, BLOCK), o.dtype)
    acc = np.empty((G, dv), o.dtype)
    mloc = np.empty(G, o.dtype)
    lloc = np.empty(G, o.dtype)
    ibuf = np.empty(BLOCK, np.int32)
    for b in range(B):
        for kh in range(Hkv):
            h0 = kh * G
            qa = q1[b, h0 : h0 + G]
            qb = q2[b, h0 : h0 + G]
            K1 = k1[b, kh]
            K2 = k2[b, kh]
            V = v[b, kh]
            mloc[:] = NEG
            lloc[:] = zero
            acc[:] = zero
            for tb in range(t0, t1, BLOCK):
                n = min(BLOCK, t1 - tb)
                t = 0
                while t + 4 <= n:
                    k0 = K1[tb + t]
                    k1_ = K1[tb + t + 1]
                    k2_ = K1[tb + t + 2]
                    k3 = K1[tb + t + 3]
                    for g in range(G):
                        qg = qa[g]
                        a0 = zero
                        a1 = zero
                        a2 = zero
                        a3 = zero
                        for i in range(d1):
                            x = qg[i]
                            a0 += x * k0[i]
                            a1 += x * k1_[i]
                            a2 += x * k2_[i]
                            a3 += x * k3[i]
                        s[g, t] = a0
                        s[g, t + 1] = a1
                        s[g, t + 2] = a2
                        s[g, t + 3] = a3
                    t += 4
                while t < n:
                    kr = K1[tb + t]
                    for g in range(G):
                        s[g, t] = _dot(qa[g], kr)
                    t += 1
                if d2:
                    for t in range(n):
                        for g in range(G):
                            s[g, t] += _dot(qb[g], K2[tb + t])
                for g in range(G):
                    mx = mloc[g]
                    for t in range(n):
                        mx = max(mx, s[g, t])
                    corr = np.exp(mloc[g] - mx)
                    total = zero
                    sg = s[g]
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
                    if corr != 1:
                        for i in range(dv):
                            acc[g, i] *= corr
                t = 0
                while t + 4 <= n:
                    v0 = V[tb + t]
                    v1 = V[tb + t + 1]
                    v2 = V[tb + t + 2]
                    v3 = V[tb + t + 3]
                    for g in range(G):
                        p0 = s[g, t]
                        p1 = s[g, t + 1]
                        p2 = s[g, t + 2]
                        p3 = s[g, t + 3]
                        ag = acc[g]
                        for i in range(dv):
                            ag[i] += p0 * v0[i] + p1 * v1[i] + p2 * v2[i] + p3 * v3[i]
                    t += 4
                while t < n:
                    vr = V[tb + t]
                    for g in range(G):
                        _axpy(s[g, t], vr, acc[g])
                    t += 1
            for g in range(G):
                m[b, h0 + g] = mloc[g]
                l[b, h0 + g] = lloc[g]
                o[b, h0 + g, :] = acc[g]


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def naive_partial_jit(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, t0, t1, m, l, o):  # noqa: PLR0913
    """MLA naive partial state over [t0, t1): every cached latent is up-projected to this
    head's key (w_uk[h] @ c_kv[t]) and value (w_uv[h] @ c_kv[t]) before it is used.
    """
    B, H, nope = q_nope.shape
    rope = q_pe.shape[2]
    r = c_kv.shape[2]
    dv = w_uv.shape[1]
    zero = o.dtype.type(0)
    acc = np.empty(dv, o.dtype)
    for b in range(B):
        for h in range(H):
            mloc = o.dtype.type(NEG)
            lloc = zero
            for i in range(dv):
                acc[i] = zero
            for t in range(t0, t1):
                a = zero
                for j in range(nope):
                    kj = zero
                    for i in range(r):
                        kj += w_uk[h, j, i] * c_kv[b, t, i]
                    a += q_nope[b, h, j] * kj
                for i in range(rope):
                    a += q_pe[b, h, i] * k_pe[b, t, i]
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
                        vj += w_uv[h, j, i] * c_kv[b, t, i]
                    acc[j] += p * vj
            m[b, h] = mloc
            l[b, h] = lloc
            for i in range(dv):
                o[b, h, i] = acc[i]


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


def split_bounds(length: int, splits: int) -> list[tuple[int, int]]:
    """``splits`` contiguous token ranges covering [0, length), sizes differing by <= 1."""
    return [(s * length // splits, (s + 1) * length // splits) for s in range(splits)]


@njit(parallel=True, nogil=True, cache=True)
def fused_decode(q1, k1, q2, k2, v, length, splits, out):
    """One decode step: ``splits`` sequence ranges in parallel (prange), then the merge."""
    B, H = q1.shape[0], q1.shape[1]
    dv = v.shape[3]
    m = np.empty((splits, B, H), out.dtype)
    l = np.empty((splits, B, H), out.dtype)
    o = np.empty((splits, B, H, dv), out.dtype)
    for s in prange(splits):
        partial_jit(
            q1, k1, q2, k2, v, s * length // splits, (s + 1) * length // splits, m[s], l[s], o[s]
        )
    merge_partials(m, l, o, out)


@njit(parallel=True, nogil=True, cache=True)
def fused_naive(q_nope, q_pe, c_kv, k_pe, w_uk, w_uv, length, splits, out):
    """MLA naive decode step: ``splits`` ranges in parallel, then the merge."""
    B, H = q_nope.shape[0], q_nope.shape[1]
    dv = w_uv.shape[1]
    m = np.empty((splits, B, H), out.dtype)
    l = np.empty((splits, B, H), out.dtype)
    o = np.empty((splits, B, H, dv), out.dtype)
    for s in prange(splits):
        naive_partial_jit(
            q_nope,
            q_pe,
            c_kv,
            k_pe,
            w_uk,
            w_uv,
            s * length // splits,
            (s + 1) * length // splits,
            m[s],
            l[s],
            o[s],
        )
    merge_partials(m, l, o, out)
