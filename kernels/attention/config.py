"""Attention layer configurations (MHA, GQA, MQA, MLA), presets and KV bytes per token.

A config says what one attention layer caches per token; the cache classes
(:mod:`kernels.attention.cache`) hold arrays shaped by it and the strategies read
them. Rotary position embedding lives here too, because the cache applies it to
keys on entry and the decode entry applies it to the query.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from kernels import registry
from kernels.attention.precision import KV_DTYPES, SCALE_BYTES, KVDtype, kv_dtype

#: Cache element types the kernels run on (names; see :mod:`kernels.attention.precision`).
CACHE_DTYPES = tuple(KV_DTYPES)


def _positive_int(name: str, value: Any) -> int:
    return registry.check_int(name, value, 1)


def _even_positive_int(name: str, value: Any) -> int:
    value = _positive_int(name, value)
    if value % 2:
        raise ValueError(f"{name} must be even (rotary embedding rotates pairs), got {value}")
    return value


def _positive_float(name: str, value: Any) -> float:
    # float() would take True as 1.0 and "5e5" as a number: neither is one here.
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{name} must be a number > 0, got {type(value).__name__} {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number > 0, got {value!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


@dataclass(frozen=True)
class KVConfig:
    """Multi-head attention with a K/V cache: MHA (n_kv_heads == n_heads), GQA, MQA (1).

    Query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)`` (Llama /
    ``repeat_interleave`` grouping). Keys get rotate-half RoPE (the Llama layout).
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_heads", _positive_int("n_heads", self.n_heads))
        object.__setattr__(self, "n_kv_heads", _positive_int("n_kv_heads", self.n_kv_heads))
        object.__setattr__(self, "head_dim", _even_positive_int("head_dim", self.head_dim))
        object.__setattr__(self, "rope_theta", _positive_float("rope_theta", self.rope_theta))
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )

    @property
    def kind(self) -> str:
        """"mha", "mqa" or "gqa"."""
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def query_dim(self) -> int:
        """Width of one query head (elements)."""
        return self.head_dim

    @property
    def out_dim(self) -> int:
        """Width of one output head (elements)."""
        return self.head_dim

    @property
    def scale(self) -> float:
        """Softmax scale: head_dim ** -0.5."""
        return self.head_dim**-0.5

    def elements_per_token(self) -> int:
        """Cached elements per token per layer: K and V for every KV head."""
        return 2 * self.n_kv_heads * self.head_dim


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): the cache holds a latent and a rotary key.

    Per token the cache keeps ``c_kv`` (kv_lora_rank) and ``k_pe`` (qk_rope_head_dim,
    shared by all heads, interleaved-pair RoPE as in DeepSeek's reference code). The
    layer's up-projection ``wkv_b`` gives per-head keys (qk_nope_head_dim) and values
    (v_head_dim). Softmax scale is ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``.
    """

    n_heads: int
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_heads", _positive_int("n_heads", self.n_heads))
        object.__setattr__(self, "kv_lora_rank", _positive_int("kv_lora_rank", self.kv_lora_rank))
        object.__setattr__(
            self, "qk_nope_head_dim", _positive_int("qk_nope_head_dim", self.qk_nope_head_dim)
        )
        object.__setattr__(
            self, "qk_rope_head_dim", _even_positive_int("qk_rope_head_dim", self.qk_rope_head_dim)
        )
        object.__setattr__(self, "v_head_dim", _positive_int("v_head_dim", self.v_head_dim))
        object.__setattr__(self, "rope_theta", _positive_float("rope_theta", self.rope_theta))

    kind = "mla"

    @property
    def query_dim(self) -> int:
        """Width of one query head: nope part then rope part (elements)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def out_dim(self) -> int:
        """Width of one output head (elements)."""
        return self.v_head_dim

    @property
    def scale(self) -> float:
        """Softmax scale: (qk_nope_head_dim + qk_rope_head_dim) ** -0.5."""
        return (self.qk_nope_head_dim + self.qk_rope_head_dim) ** -0.5

    def elements_per_token(self) -> int:
        """Cached elements per token per layer: the latent plus the shared rotary key."""
        return self.kv_lora_rank + self.qk_rope_head_dim


AttentionConfig = KVConfig | MLAConfig

#: The issue's presets. gqa is Llama-3-8B; mla is DeepSeek-V2-Lite; mla-v3 is DeepSeek-V3.
PRESETS: dict[str, AttentionConfig] = {
    "mha": KVConfig(n_heads=32, n_kv_heads=32, head_dim=128),
    "gqa": KVConfig(n_heads=32, n_kv_heads=8, head_dim=128, rope_theta=500000.0),
    "mqa": KVConfig(n_heads=32, n_kv_heads=1, head_dim=128),
    "mla": MLAConfig(n_heads=16),
    "mla-v3": MLAConfig(n_heads=128),
}


def get_preset(name: str) -> AttentionConfig:
    """The preset called ``name``; ValueError lists the names otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {name!r}")
    return PRESETS[name]


def dtype_itemsize(dtype: Any) -> int:
    """Bytes per stored element of the cache type ``dtype`` (a numpy dtype, or a name:
    'bfloat16'/'bf16', 'float16'/'fp16', 'int8', ...), not counting int8's scales."""
    return kv_dtype(dtype).itemsize


def scales_per_token(config: AttentionConfig) -> int:
    """Scales an int8 cache keeps per token per layer: one per KV head for K and for V
    (MHA/GQA/MQA), one for the latent and one for the rotary key (MLA)."""
    return 2 * config.n_kv_heads if isinstance(config, KVConfig) else 2


def kv_bytes_per_token(config: AttentionConfig, dtype: Any = np.float32) -> int:
    """Analytic cache size per token per layer, in bytes.

    MHA/GQA/MQA: ``2 * n_kv_heads * head_dim`` elements; MLA: ``kv_lora_rank +
    qk_rope_head_dim`` elements; times the stored element's bytes. ``int8`` adds its
    float32 scales (:func:`scales_per_token`). ``dtype``: a numpy dtype or a name
    ('bfloat16', 'float16', 'int8', ...).
    """
    if not isinstance(config, (KVConfig, MLAConfig)):
        raise TypeError(f"config must be a KVConfig or MLAConfig, got {type(config).__name__}")
    spec = kv_dtype(dtype)
    scales = scales_per_token(config) * SCALE_BYTES if spec.scaled else 0
    return config.elements_per_token() * spec.itemsize + scales


class StepCost(NamedTuple):
    """What one decode step does, analytically: floating-point operations (a multiply and
    an add count as two), the bytes of the cache it reads (the ``context`` filled tokens)
    and the bytes of the weights it reads (MLA's up-projections), for ``batch`` sequences.
    Softmax's exponentials, the query's RoPE and the split-K merge are left out: they
    are O(batch x heads x context) at most, against the dot products' x head width.
    ``weight_flops``, part of ``flops``: the products with the weights that the step
    makes once, whatever the context (absorbed MLA's ``q @ W_UK`` and ``o @ W_UV``)."""

    flops: int
    cache_bytes: int
    weight_bytes: int
    weight_flops: int = 0

    @property
    def bytes(self) -> int:
        """Every byte the step must read: cache plus weights."""
        return self.cache_bytes + self.weight_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte read."""
        return self.flops / self.bytes


def step_cost(config: AttentionConfig, context: int, batch: int = 1, *,
              dtype: Any = np.float32, mla_impl: str | None = None) -> StepCost:
    """The analytic :class:`StepCost` of one decode step over ``context`` cached tokens.

    - MHA/GQA/MQA: each of ``n_heads`` query heads dots ``context`` keys (``head_dim``)
      and sums as many values: ``4 * n_heads * context * head_dim`` per sequence. GQA and
      MQA read each KV head once for its whole group.
    - MLA absorbed (default): ``q_nope @ W_UK`` (``2 * H * nope * r``), scores over the
      latent and the rotary key (``2 * H * T * (r + rope)``), ``p @ c_kv``
      (``2 * H * T * r``) and ``@ W_UV`` (``2 * H * r * v``); both weights are read.
    - MLA naive: every head up-projects every latent to its key and value
      (``2 * H * T * r * (nope + v)``), then dots and sums (``2 * H * T * (nope + rope + v)``).
    """
    context = _positive_int("context", context)
    batch = _positive_int("batch", batch)
    # The weights are kept in the compute dtype (float32 for bf16, fp16 and int8 caches).
    item = kv_dtype(dtype).compute.itemsize
    cache_bytes = batch * context * kv_bytes_per_token(config, dtype)
    if isinstance(config, KVConfig):
        flops = 4 * config.n_heads * context * config.head_dim
        return StepCost(batch * flops, cache_bytes, 0)
    if not isinstance(config, MLAConfig):
        raise TypeError(f"config must be a KVConfig or MLAConfig, got {type(config).__name__}")
    h, r, rope = config.n_heads, config.kv_lora_rank, config.qk_rope_head_dim
    nope, v = config.qk_nope_head_dim, config.v_head_dim
    impl = "absorbed" if mla_impl is None else mla_impl
    weight_bytes = h * (nope + v) * r * item
    if impl == "absorbed":
        once = 2 * h * (nope * r + r * v)
        flops = once + 2 * h * context * (r + rope + r)
    elif impl == "naive":
        once = 0
        flops = 2 * h * context * (r * (nope + v) + nope + rope + v)
    else:
        raise ValueError(f"mla_impl must be 'absorbed' or 'naive', got {mla_impl!r}")
    return StepCost(batch * flops, cache_bytes, weight_bytes, batch * once)


def check_cache_dtype(dtype: Any) -> KVDtype:
    """The cache element type (:class:`kernels.attention.precision.KVDtype`) of ``dtype``:
    float32, float64, bfloat16 (bf16), float16 (fp16) or int8; ValueError or TypeError,
    naming the accepted types, for anything else."""
    return kv_dtype(dtype)


# ---------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _inv_freq(dim: int, theta: float) -> np.ndarray:
    """``theta ** (-2i / dim)`` for i < dim / 2, float64, read-only: made once per
    (dim, theta), not once per decode step."""
    out = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    out.flags.writeable = False
    return out


def rope_tables(positions: np.ndarray, dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of ``position * theta ** (-2i / dim)``, float64, shape [n, dim // 2]."""
    angles = np.asarray(positions, dtype=np.float64)[:, None] * _inv_freq(dim, float(theta))
    return np.cos(angles), np.sin(angles)


def apply_rope(
    x: np.ndarray, positions: np.ndarray, theta: float, *, interleaved: bool
) -> np.ndarray:
    """Rotate ``x`` (shape [..., n, dim]) at token ``positions`` (shape [n]); float64 result.

    ``interleaved=False``: rotate-half pairs (i, i + dim/2), the Llama/HF layout.
    ``interleaved=True``: adjacent pairs (2i, 2i+1), DeepSeek's complex-number layout.
    """
    x = np.asarray(x, dtype=np.float64)
    dim = x.shape[-1]
    cos, sin = rope_tables(positions, dim, theta)
    out = np.empty_like(x)
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = b * cos + a * sin
    else:
        half = dim // 2
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * cos - b * sin
        out[..., half:] = b * cos + a * sin
    return out


def query_rope(config: AttentionConfig) -> tuple[int, bool, np.ndarray]:
    """A query head's rotary part: the column it starts at, whether its pairs are adjacent
    (interleaved: MLA's ``qk_rope_head_dim`` tail) or the two halves (rotate-half: the
    whole head of MHA/GQA/MQA), and its inverse frequencies (read-only)."""
    if isinstance(config, KVConfig):
        start, interleaved = 0, False
    else:
        start, interleaved = config.qk_nope_head_dim, True
    return start, interleaved, _inv_freq(config.query_dim - start, float(config.rope_theta))


def rotate_query(config: AttentionConfig, query: np.ndarray, position: int) -> np.ndarray:
    """The query [batch, n_heads, query_dim] with RoPE applied at ``position``; float64.

    MHA/GQA/MQA rotate the whole head (rotate-half); MLA rotates only the trailing
    ``qk_rope_head_dim`` part (interleaved), leaving the ``qk_nope_head_dim`` part as is.
    The reference's rotation, by :func:`apply_rope`; the decode strategies rotate with
    :func:`kernels.attention.jit.rotate_one`, checked against this.
    """
    start, interleaved, _ = query_rope(config)
    q = np.asarray(query, dtype=np.float64)
    out = q.copy()
    out[..., start:] = apply_rope(
        q[..., None, start:], np.array([position]), config.rope_theta, interleaved=interleaved
    )[..., 0, :]
    return out
