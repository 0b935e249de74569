"""The torch anchor: PyTorch's CPU kernels on the same arrays (zero-copy ``from_numpy``).

MHA/GQA/MQA use ``torch.nn.functional.scaled_dot_product_attention`` with
``enable_gqa=True`` for grouped heads. MLA follows DeepSeek-V3's reference code with
einsum: ``absorbed`` folds W_UK into the query and W_UV after the latent sum;
``naive`` up-projects the latent cache to per-head K and V and calls sdpa.
A bfloat16 cache is handed to torch as ``torch.bfloat16`` (the uint16 bits viewed, no
copy) and a float16 cache as ``torch.float16``: the query and MLA's weights are cast to
that type, torch's CPU kernels accumulate in float32, and the output comes back as
float32. torch has no int8 attention on the CPU: an int8 cache is refused
(:data:`kernels.attention.precision.TORCH_DTYPES`). Imported only when torch is installed.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kernels.attention.cache import Cache, KVCache
from kernels.attention.precision import check_torch_dtype


def _tensor(cache: Cache, name: str) -> torch.Tensor:
    """The cache array ``name`` as a tensor of its element type, without a copy."""
    a = getattr(cache, name)
    with warnings.catch_warnings():  # the cache is read-only; torch never writes to it
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        if cache.kv_dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)


def _out(t: torch.Tensor, cache: Cache) -> np.ndarray:
    """An output tensor as an array of the cache's compute dtype (float32 for bf16/fp16)."""
    return t.to(torch.float64 if cache.dtype == np.float64 else torch.float32).numpy()


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
    check_torch_dtype("torch", cache.kv_dtype)
    q = torch.from_numpy(np.ascontiguousarray(q_rot, dtype=cache.dtype))
    if isinstance(cache, KVCache):
        k = _tensor(cache, "k")[:, :, :L]
        v = _tensor(cache, "v")[:, :, :L]
        out = F.scaled_dot_product_attention(
            q[:, :, None, :].to(k.dtype), k, v, scale=c.scale,
            enable_gqa=c.n_kv_heads != c.n_heads,
        )
        return _out(out[:, :, 0, :], cache)
    nope = c.qk_nope_head_dim
    latent = _tensor(cache, "c_kv")[:, :L]  # [B, L, r]
    k_pe = _tensor(cache, "k_pe")[:, :L]  # [B, L, rope]
    q = q.to(latent.dtype)
    q_nope, q_pe = q[..., :nope], q[..., nope:]
    w_uk = torch.from_numpy(cache.w_uk).to(latent.dtype)  # [H, nope, r]
    w_uv = torch.from_numpy(cache.w_uv).to(latent.dtype)  # [H, v, r]
    if mla_impl == "absorbed":
        q_lat = torch.einsum("bhd,hdc->bhc", q_nope, w_uk)
        scores = (
            torch.einsum("bhc,btc->bht", q_lat, latent) + torch.einsum("bhr,btr->bht", q_pe, k_pe)
        ) * c.scale
        p = scores.softmax(dim=-1)
        x = torch.einsum("bht,btc->bhc", p, latent)
        return _out(torch.einsum("bhc,hdc->bhd", x, w_uv), cache)
    K_nope = torch.einsum("btc,hdc->bhtd", latent, w_uk)
    V = torch.einsum("btc,hdc->bhtd", latent, w_uv)
    K = torch.cat([K_nope, k_pe[:, None].expand(-1, c.n_heads, -1, -1)], dim=-1)
    out = F.scaled_dot_product_attention(q[:, :, None, :], K, V, scale=c.scale)
    return _out(out[:, :, 0, :], cache)
