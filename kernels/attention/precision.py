"""Cache element types: float32/float64, the 2-byte bfloat16 and float16, and int8 with
a float32 scale per token and head. What a cache stores, what it takes and gives, how
a value is rounded on the way in and widened on the way out.

A cache is written and read in its *compute* dtype (float32, or float64 for a float64
cache): ``append`` takes float32 K/V for a bf16, fp16 or int8 cache and rounds them on
entry, queries and outputs are float32, and every kernel accumulates in float32. Only
the stored arrays are narrow:

- ``bfloat16``: uint16 arrays holding the top half of the float32 bits, rounded to
  nearest even. NumPy has no bfloat16 dtype; a uint16 view needs no library
  (``ml_dtypes`` would add a dependency and an extension dtype that shared memory,
  pickling to Dask workers and numba would each have to know), and widening is exact
  and cheap everywhere: ``bits << 16`` viewed as float32.
- ``float16``: numpy's own float16 (numba cannot type it: the numba kernels read it as
  int16 bits and widen with LLVM's ``fpext half``, ``vcvtph2ps`` on x86).
- ``int8``: symmetric per-(token, head) quantisation, the scheme of LMDeploy's online
  int8 KV cache and vLLM-Ascend's ``int8_pertoken``: ``scale = max|x| / 127`` over one
  head's row, ``q = round(x / scale)``; the scales (float32) live in arrays of their
  own beside K and V (``k_scale``, ``v_scale``; MLA: ``c_kv_scale``, ``k_pe_scale``).

See docs/attention.md for the choice and the accuracy bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class KVDtype:
    """One cache element type.

    ``name``: what users pass and reports show; ``storage``: the numpy dtype of the
    cache arrays; ``compute``: the dtype of what goes in and comes out (K/V appended,
    queries, outputs, partial states); ``scaled``: int8, with a float32 scale per token
    and head; ``u``: the unit roundoff of one stored element (relative error bound of
    rounding to nearest), ``eta``: its absolute floor (fp16 subnormals), 0 for int8,
    whose error is bounded by half a scale step instead.
    """

    name: str
    storage: np.dtype
    compute: np.dtype
    scaled: bool = False
    u: float = 0.0
    eta: float = 0.0

    @property
    def itemsize(self) -> int:
        """Bytes per stored element (not counting int8's scales)."""
        return self.storage.itemsize

    @property
    def reduced(self) -> bool:
        """True when the stored type is narrower than the compute type."""
        return self.storage != self.compute

    def __str__(self) -> str:
        return self.name

    def __reduce__(self) -> tuple:
        # One object per type in every process: a KVDtype pickled to a pool worker (inside
        # a decode step's Problem) comes back as that process's own, so ``is`` holds.
        return kv_dtype, (self.name,)


FLOAT32 = KVDtype("float32", np.dtype(np.float32), np.dtype(np.float32), u=2.0**-24)
FLOAT64 = KVDtype("float64", np.dtype(np.float64), np.dtype(np.float64), u=2.0**-53)
BFLOAT16 = KVDtype("bfloat16", np.dtype(np.uint16), np.dtype(np.float32), u=2.0**-8)
FLOAT16 = KVDtype("float16", np.dtype(np.float16), np.dtype(np.float32), u=2.0**-11,
                  eta=2.0**-25)
INT8 = KVDtype("int8", np.dtype(np.int8), np.dtype(np.float32), scaled=True)

KV_DTYPES: dict[str, KVDtype] = {d.name: d for d in (FLOAT32, FLOAT64, BFLOAT16, FLOAT16, INT8)}
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
            "fp64": "float64", "f4": "float32", "f8": "float64", "f2": "float16", "i1": "int8"}
#: Bytes of the scale kept per token and head of an int8 cache.
SCALE_BYTES = 4
#: Largest int8 magnitude used (symmetric: -127..127, -128 never stored).
QMAX = 127
#: Cache element types the torch anchor runs (torch has no int8 attention on the CPU).
TORCH_DTYPES = ("float32", "float64", "bfloat16", "float16")
_ACCEPTED = ", ".join(KV_DTYPES) + " (aliases bf16, fp16)"


def kv_dtype(dtype: Any) -> KVDtype:
    """The :class:`KVDtype` for ``dtype``: a name ('bfloat16', 'bf16', 'float16', 'int8',
    'float32', ...), a numpy dtype or type, or a KVDtype. ValueError (naming the accepted
    types) for anything else; a uint16 dtype is refused too: it would not say whether its
    bits are bfloat16 or not."""
    if isinstance(dtype, KVDtype):
        return dtype
    if isinstance(dtype, str):
        key = _ALIASES.get(dtype.lower(), dtype.lower())
        if key in KV_DTYPES:
            return KV_DTYPES[key]
        raise ValueError(f"dtype must be one of {_ACCEPTED}; got {dtype!r}")
    if dtype is None or isinstance(dtype, bool):
        raise TypeError(f"dtype must be one of {_ACCEPTED}; got {dtype!r}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be one of {_ACCEPTED}; got {dtype!r}") from None
    if dt.name in KV_DTYPES:
        return KV_DTYPES[dt.name]
    raise ValueError(f"dtype must be one of {_ACCEPTED}; got {dt}")


def rounds_query(dtype: Any, strategy: str, inner: str | None = None) -> bool:
    """Whether ``strategy`` (with ``inner``) rounds the query to the cache's type as well
    as the cache: the torch anchor on a bf16/fp16 cache, and numba's kernels on a bf16
    cache where they take its products in bf16 (``vdpbf16ps``,
    :data:`kernels.simd.BF16_DOT`; they round the softmax weights too). Their output is
    within a few unit roundoffs more of the reference on the stored values."""
    spec = kv_dtype(dtype)
    if strategy == "torch":
        return spec.reduced
    from kernels import simd

    return spec is BFLOAT16 and simd.BF16_DOT and "numba" in (strategy, inner)


def check_torch_dtype(strategy: str, dtype: Any) -> None:
    """ValueError if ``strategy`` is the torch anchor and ``dtype`` a type it cannot run."""
    name = kv_dtype(dtype).name
    if strategy == "torch" and name not in TORCH_DTYPES:
        raise ValueError(f"strategy torch (the anchor) takes dtype {', '.join(TORCH_DTYPES)}; "
                         f"got {name}")


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 (nearest, ties to even), as uint16 bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bfloat16(bits: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 ``bits`` widened (exactly) to float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(
        np.float32)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``x`` per row (last axis): (q int8, scale float32 of shape
    ``x.shape[:-1]``) with ``scale = max|row| / 127`` and ``q = round(x / scale)``, so
    ``|x - q * scale| <= scale / 2``. An all-zero row gets scale 0 and q 0."""
    x = np.asarray(x, dtype=np.float64)
    scale = (np.abs(x).max(axis=-1) / QMAX).astype(np.float32)
    s = scale.astype(np.float64)[..., None]
    q = np.divide(x, s, out=np.zeros_like(x), where=s > 0)
    return np.clip(np.rint(q), -QMAX, QMAX).astype(np.int8), scale


def encode(x: np.ndarray, spec: KVDtype, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``x`` (compute dtype or wider) in the stored form: (values, scales or None).
    ValueError (naming ``name``) if a value overflows the stored type (fp16 past 65504,
    bf16 past 3.39e38), so nothing is written."""
    if spec.scaled:
        return quantize_int8(x)
    if spec is BFLOAT16:
        stored = to_bfloat16(np.asarray(x, dtype=np.float32))
        back = from_bfloat16(stored)
    else:
        with np.errstate(over="ignore"):  # overflow is refused just below
            stored = np.asarray(x).astype(spec.storage)
        back = stored
    if not np.all(np.isfinite(back)):
        raise ValueError(f"{name} has values beyond the {spec.name} range "
                         f"(largest magnitude {float(np.max(np.abs(x))):.4g})")
    return stored, None


def widen(stored: np.ndarray, spec: KVDtype, scale: np.ndarray | None = None) -> np.ndarray:
    """Stored values back in the compute dtype (int8: times ``scale``, broadcast over the
    last axis)."""
    if stored.shape[-1] == 0:  # MHA/GQA/MQA's empty rotary-key operand
        return np.zeros(stored.shape, spec.compute)
    if spec is BFLOAT16:
        return from_bfloat16(stored)
    if spec.scaled:
        assert scale is not None
        return stored.astype(np.float32) * scale[..., None]
    return np.asarray(stored).astype(spec.compute, copy=False)


def numba_view(a: np.ndarray) -> np.ndarray:
    """``a`` as the numba kernels read it: float16 as its int16 bits (numba cannot type
    float16; the kernels widen int16 as half, uint16 as bfloat16, int8 as an integer)."""
    return a.view(np.int16) if a.dtype == np.float16 else a
