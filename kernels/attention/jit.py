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


@njit(nogil=True, fastmath=FASTMATH, cache=True)
def partial_jit(q1, k1, q2, k2, v, t0, t1, m, l, o):  # noqa: PLR0913
    """Write the partial state over tokens [t0, t1) into m, l [B, H] and o [B, H, dv].

    q1 [B, H, d1], k1 [B, Hkv, cap, d1], q2 [B, H, d2], k2 [B, Hkv, cap, d2],
    v [B, Hkv, cap, dv]; queries pre-scaled; query head h reads KV head h // (H // Hkv).
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
    for b in range(B):
        for kh in range(Hkv):
            h0 = kh * G
            for g in range(G):
                mloc[g] = NEG
                lloc[g] = zero
                for i in range(dv):
                    acc[g, i] = zero
            for tb in range(t0, t1, BLOCK):
                n = min(BLOCK, t1 - tb)
                # Scores: each K row is loaded once and used by every head of the group.
                for t in range(n):
                    for g in range(G):
                        a = zero
                        for i in range(d1):
                            a += q1[b, h0 + g, i] * k1[b, kh, tb + t, i]
                        for i in range(d2):
                            a += q2[b, h0 + g, i] * k2[b, kh, tb + t, i]
                        s[g, t] = a
                # Online softmax update, once per block.
                for g in range(G):
                    mx = mloc[g]
                    for t in range(n):
                        if s[g, t] > mx:
                            mx = s[g, t]
                    corr = np.exp(mloc[g] - mx)
                    total = zero
                    for t in range(n):
                        p = np.exp(s[g, t] - mx)
                        s[g, t] = p
                        total += p
                    lloc[g] = lloc[g] * corr + total
                    mloc[g] = mx
                    if corr != 1:
                        for i in range(dv):
                            acc[g, i] *= corr
                # Values: each V row once, into all the group's accumulators.
                for t in range(n):
                    for g in range(G):
                        p = s[g, t]
                        for i in range(dv):
                            acc[g, i] += p * v[b, kh, tb + t, i]
            for g in range(G):
                m[b, h0 + g] = mloc[g]
                l[b, h0 + g] = lloc[g]
                for i in range(dv):
                    o[b, h0 + g, i] = acc[g, i]


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
            q_nope, q_pe, c_kv, k_pe, w_uk, w_uv,
            s * length // splits, (s + 1) * length // splits, m[s], l[s], o[s],
        )
    merge_partials(m, l, o, out)
