"""NumPy chunk kernels: batched matmuls on the cache in place (views, no per-step copies).

Grouped heads are handled by reshaping the *query* to [batch, kv_head, group, d], so
each K/V head is multiplied by all of its query heads in one matmul and K/V are never
repeated. Each function returns the partial softmax state ``(m, l, o)`` of a token
range; :func:`kernels.attention.jit.merge_partials` combines states.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Tokens up-projected at once by MLA naive (bounds the expanded K/V block in memory).
NAIVE_BLOCK = 512

#: Tokens of a bf16, fp16 or int8 cache widened to float32 at once by the NumPy kernel:
#: 1024 GQA tokens are 8 MiB of float32 K and V (the widened cache would be 2-4x the
#: cache itself, every step).
WIDEN_BLOCK = 1024


def _empty_state(B: int, H: int, dv: int, dtype: np.dtype):
    return (
        np.full((B, H), -np.inf, dtype=dtype),
        np.zeros((B, H), dtype=dtype),
        np.zeros((B, H, dv), dtype=dtype),
    )


def partial_numpy(
    q1: np.ndarray, k1: np.ndarray, q2: np.ndarray, k2: np.ndarray, v: np.ndarray,
    t0: int, t1: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial state (m, l, o) over tokens [t0, t1): scores ``q1.k1 + q2.k2`` (q pre-scaled).

    q1 [B, H, d1], k1 [B, Hkv, cap, d1], q2 [B, H, d2], k2 [B, Hkv, cap, d2],
    v [B, Hkv, cap, dv]. Returns m, l [B, H] and o [B, H, dv] in the cache dtype.
    """
    B, H, d1 = q1.shape
    Hkv = k1.shape[1]
    G = H // Hkv
    dv = v.shape[3]
    if t1 <= t0:
        return _empty_state(B, H, dv, v.dtype)
    # [B, Hkv, G, d] @ [B, Hkv, d, n]: the transposed view is BLAS-able, nothing copied.
    s = q1.reshape(B, Hkv, G, d1) @ k1[:, :, t0:t1].transpose(0, 1, 3, 2)
    if q2.shape[2]:
        s += q2.reshape(B, Hkv, G, q2.shape[2]) @ k2[:, :, t0:t1].transpose(0, 1, 3, 2)
    m = s.max(axis=-1)
    np.subtract(s, m[..., None], out=s)
    np.exp(s, out=s)
    l = s.sum(axis=-1)
    o = s @ v[:, :, t0:t1]  # [B, Hkv, G, dv]
    return m.reshape(B, H), l.reshape(B, H), o.reshape(B, H, dv)


def naive_partial_numpy(
    q_nope: np.ndarray, q_pe: np.ndarray, c_kv: np.ndarray, k_pe: np.ndarray,
    w_uk: np.ndarray, w_uv: np.ndarray, t0: int, t1: int, block: int = NAIVE_BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MLA naive partial state over tokens [t0, t1): up-project each block of latents to
    per-head K [B, H, n, nope] and V [B, H, n, v], then attend (online softmax over blocks).
    """
    B, H, _ = q_nope.shape
    dv = w_uv.shape[1]
    m, l, o = _empty_state(B, H, dv, c_kv.dtype)
    w_uk_t = w_uk.transpose(0, 2, 1)[None]  # [1, H, r, nope]
    w_uv_t = w_uv.transpose(0, 2, 1)[None]
    for tb in range(t0, t1, block):
        te = min(tb + block, t1)
        latent = c_kv[:, None, tb:te]  # [B, 1, n, r]
        K = latent @ w_uk_t  # [B, H, n, nope]
        V = latent @ w_uv_t  # [B, H, n, v]
        s = (K @ q_nope[..., None])[..., 0] + (k_pe[:, None, tb:te] @ q_pe[..., None])[..., 0]
        m_new = np.maximum(m, s.max(axis=-1))
        corr = np.exp(m - m_new)
        p = np.exp(s - m_new[..., None])
        l = l * corr + p.sum(axis=-1)
        o = o * corr[..., None] + (p[:, :, None, :] @ V)[:, :, 0, :]
        m = m_new
    return m, l, o


def partial_numpy_blocked(
    q1: np.ndarray, q2: np.ndarray, t0: int, t1: int,
    widened: Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]],
    block: int = WIDEN_BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`partial_numpy` over [t0, t1) of a reduced-precision cache: ``widened(a, b)``
    gives (k1, k2, v) of tokens [a, b) in float32; each block's state is merged into the
    running one (log-sum-exp), so only one widened block exists at a time."""
    m = l = o = None
    for tb in range(t0, t1, block):
        k1, k2, v = widened(tb, min(tb + block, t1))
        mb, lb, ob = partial_numpy(q1, k1, q2, k2, v, 0, k1.shape[2])
        if m is None:
            m, l, o = mb, lb, ob
            continue
        top = np.maximum(m, mb)
        wa, wb = np.exp(m - top), np.exp(mb - top)
        m, l, o = top, l * wa + lb * wb, o * wa[..., None] + ob * wb[..., None]
    if m is None:  # an empty range
        B, H = q1.shape[:2]
        return _empty_state(B, H, widened(t0, t0)[2].shape[3], q1.dtype)
    return m, l, o
