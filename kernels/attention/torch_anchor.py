"""The torch anchor: PyTorch's CPU kernels on the same arrays (zero-copy ``from_numpy``).

MHA/GQA/MQA use ``torch.nn.functional.scaled_dot_product_attention`` with
``enable_gqa=True`` for grouped heads. MLA follows DeepSeek-V3's reference code with
einsum: ``absorbed`` folds W_UK into the query and W_UV after the latent sum;
``naive`` up-projects the latent cache to per-head K and V and calls sdpa.
Imported only when torch is installed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kernels.attention.cache import Cache, KVCache


@contextlib.contextmanager
def torch_threads(workers: int) -> Iterator[None]:
    """Cap torch's intra-op pool to ``workers`` threads for the call."""
    previous = torch.get_num_threads()
    torch.set_num_threads(workers)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.inference_mode()
def decode_torch(cache: Cache, q_rot: np.ndarray, mla_impl: str) -> np.ndarray:
    """Output [B, H, out_dim] for the RoPE-rotated (unscaled) query ``q_rot`` [B, H, qdim]."""
    c = cache.config
    L = cache.length
    q = torch.from_numpy(np.ascontiguousarray(q_rot, dtype=cache.dtype))
    if isinstance(cache, KVCache):
        k = torch.from_numpy(cache.k)[:, :, :L]
        v = torch.from_numpy(cache.v)[:, :, :L]
        out = F.scaled_dot_product_attention(
            q[:, :, None, :], k, v, scale=c.scale, enable_gqa=c.n_kv_heads != c.n_heads
        )
        return out[:, :, 0, :].numpy()
    nope = c.qk_nope_head_dim
    q_nope, q_pe = q[..., :nope], q[..., nope:]
    latent = torch.from_numpy(cache.c_kv)[:, :L]  # [B, L, r]
    k_pe = torch.from_numpy(cache.k_pe)[:, :L]  # [B, L, rope]
    w_uk = torch.from_numpy(cache.w_uk)  # [H, nope, r]
    w_uv = torch.from_numpy(cache.w_uv)  # [H, v, r]
    if mla_impl == "absorbed":
        q_lat = torch.einsum("bhd,hdc->bhc", q_nope, w_uk)
        scores = (
            torch.einsum("bhc,btc->bht", q_lat, latent) + torch.einsum("bhr,btr->bht", q_pe, k_pe)
        ) * c.scale
        p = scores.softmax(dim=-1)
        x = torch.einsum("bht,btc->bhc", p, latent)
        return torch.einsum("bhc,hdc->bhd", x, w_uv).numpy()
    K_nope = torch.einsum("btc,hdc->bhtd", latent, w_uk)
    V = torch.einsum("btc,hdc->bhtd", latent, w_uv)
    K = torch.cat([K_nope, k_pe[:, None].expand(-1, c.n_heads, -1, -1)], dim=-1)
    out = F.scaled_dot_product_attention(q[:, :, None, :], K, V, scale=c.scale)
    return out[:, :, 0, :].numpy()
