"""The float64 reference: attention decode written the way the maths reads.

This is the ``python`` strategy and the oracle for the tests. It is deliberately
plain: one query head at a time, scores over every cached token, a full softmax, the
weighted sum of values. MLA is computed from its definition (``naive``: the latent
cache up-projected to per-head keys and values) or with the absorbed weights
(``absorbed``), both in float64. NumPy is used only for dot products, so it stays
usable on the real presets at small context lengths.

It also provides the ``python`` chunk kernels for ``threaded`` and ``multiprocess``:
the partial softmax state ``(m, l, o)`` of one token range (see
:mod:`kernels.attention.jit` for the state and how states merge).
"""

from __future__ import annotations

import numpy as np

from kernels.attention.cache import Cache, KVCache
from kernels.attention.config import rotate_query


def reference_decode(cache: Cache, query: np.ndarray, mla_impl: str = "naive") -> np.ndarray:
    """Attention output [batch, n_heads, out_dim], float64, of ``query`` over the cache.

    ``query`` [batch, n_heads, query_dim] is the new token's query before RoPE; it is
    rotated at position ``cache.length - 1`` (the new token, already appended). A bf16,
    fp16 or int8 cache is read as its stored values widened (int8 times its scales), so
    this is the exact answer for what the cache holds.
    """
    c = cache.config
    L = cache.length
    q = rotate_query(c, query, L - 1)
    B, H = q.shape[:2]
    out = np.empty((B, H, c.out_dim))
    if isinstance(cache, KVCache):
        G = c.group
        keys, values = cache.dequantized("k"), cache.dequantized("v")
        for b in range(B):
            for h in range(H):
                K = keys[b, h // G, :L].astype(np.float64)
                V = values[b, h // G, :L].astype(np.float64)
                out[b, h] = _softmax_weighted(K @ q[b, h] * c.scale, V)
        return out
    nope = c.qk_nope_head_dim
    w_uk = cache.w_uk.astype(np.float64)
    w_uv = cache.w_uv.astype(np.float64)
    c_kv, k_pe_all = cache.dequantized("c_kv"), cache.dequantized("k_pe")
    for b in range(B):
        latent = c_kv[b, :L].astype(np.float64)  # [L, r]
        k_pe = k_pe_all[b, :L].astype(np.float64)  # [L, rope]
        for h in range(H):
            q_nope, q_pe = q[b, h, :nope], q[b, h, nope:]
            if mla_impl == "naive":
                K = latent @ w_uk[h].T  # [L, nope]: this head's keys, expanded
                V = latent @ w_uv[h].T  # [L, v]
                scores = (K @ q_nope + k_pe @ q_pe) * c.scale
                out[b, h] = _softmax_weighted(scores, V)
            else:
                q_latent = w_uk[h].T @ q_nope  # [r]: W_UK folded into the query
                scores = (latent @ q_latent + k_pe @ q_pe) * c.scale
                out[b, h] = w_uv[h] @ _softmax_weighted(scores, latent)  # W_UV after
    return out


def _softmax_weighted(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    p = np.exp(scores - scores.max())
    return (p @ values) / p.sum()


def partial_python(
    q1: np.ndarray, k1: np.ndarray, q2: np.ndarray, k2: np.ndarray, v: np.ndarray,
    t0: int, t1: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial state (m, l, o) over tokens [t0, t1) of the generic split-key problem, float64.

    Scores are ``q1 . k1 + q2 . k2`` (queries already scaled); query head ``h`` reads
    KV head ``h // (H // Hkv)``. Shapes as in :func:`kernels.attention.jit.partial_jit`.
    """
    B, H = q1.shape[:2]
    G = H // k1.shape[1]
    m = np.full((B, H), -np.inf)
    l = np.zeros((B, H))
    o = np.zeros((B, H, v.shape[3]))
    if t1 <= t0:
        return m, l, o
    for b in range(B):
        for h in range(H):
            kh = h // G
            scores = k1[b, kh, t0:t1].astype(np.float64) @ q1[b, h].astype(np.float64)
            if q2.shape[2]:
                scores += k2[b, kh, t0:t1].astype(np.float64) @ q2[b, h].astype(np.float64)
            m[b, h] = scores.max()
            p = np.exp(scores - m[b, h])
            l[b, h] = p.sum()
            o[b, h] = p @ v[b, kh, t0:t1].astype(np.float64)
    return m, l, o


def naive_partial_python(
    q_nope: np.ndarray, q_pe: np.ndarray, c_kv: np.ndarray, k_pe: np.ndarray,
    w_uk: np.ndarray, w_uv: np.ndarray, t0: int, t1: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial state (m, l, o) of MLA naive over tokens [t0, t1), float64 (queries scaled)."""
    B, H = q_nope.shape[:2]
    m = np.full((B, H), -np.inf)
    l = np.zeros((B, H))
    o = np.zeros((B, H, w_uv.shape[1]))
    if t1 <= t0:
        return m, l, o
    for b in range(B):
        latent = c_kv[b, t0:t1].astype(np.float64)
        pe = k_pe[b, t0:t1].astype(np.float64)
        for h in range(H):
            K = latent @ w_uk[h].T.astype(np.float64)
            V = latent @ w_uv[h].T.astype(np.float64)
            scores = K @ q_nope[b, h].astype(np.float64) + pe @ q_pe[b, h].astype(np.float64)
            m[b, h] = scores.max()
            p = np.exp(scores - m[b, h])
            l[b, h] = p.sum()
            o[b, h] = p @ V
    return m, l, o
