"""KV caches: preallocated to a capacity, one token (for a batch of sequences) per append.

Layouts (C order, capacity along the token axis so each head's rows are contiguous):

- :class:`KVCache` (MHA/GQA/MQA): ``k`` and ``v`` of shape [batch, n_kv_heads, capacity,
  head_dim]. Keys are rotated (rotate-half RoPE) at their position when they enter.
- :class:`MLACache`: ``c_kv`` [batch, capacity, kv_lora_rank] and ``k_pe`` [batch,
  capacity, qk_rope_head_dim] (interleaved RoPE, shared by all heads), plus the layer's
  up-projection weights ``w_uk`` [n_heads, qk_nope_head_dim, kv_lora_rank] and ``w_uv``
  [n_heads, v_head_dim, kv_lora_rank] (``wkv_b`` of DeepSeek's code, split), which the
  decode step needs but which are not per-token cache.

Element types (``dtype``, :mod:`kernels.attention.precision`): float32 and float64 are
stored as they are; a ``bfloat16``, ``float16`` or ``int8`` cache takes float32 K/V and
rounds them on entry (``cache.dtype`` is float32, ``cache.kv_dtype`` says how it
stores). An int8 cache holds a float32 scale per token and head beside each quantised
array (``k_scale``, ``v_scale``; MLA ``c_kv_scale``, ``k_pe_scale``), listed in
:meth:`arrays` and ``token_axes`` like the values, so everything that ships a cache's
tokens elsewhere ships them too.

``shared=True`` allocates the arrays in shared memory (for the ``multiprocess``
strategy); ``close()`` unlinks them, and so does garbage collection or interpreter
exit if ``close()`` was never called.

Every append validates everything and computes the rotated keys before writing, so a
refused append leaves the cache exactly as it was.

The arrays a cache shows (``cache.k``, ``cache.c_kv``, :meth:`arrays`...) are read-only
views: ``append``, ``extend`` and :meth:`load` are the only writes, and each bumps
:attr:`generation` and logs the first token it wrote. An executor that keeps copies of
the cache elsewhere (the ``distributed`` strategy keeps shards on its workers across
decode steps) asks :meth:`first_write_since` which of its copies are stale, so it
resends only the new tokens. Setting ``length`` writes nothing: it shows a prefix of
what was written (or zeros past it).
"""

from __future__ import annotations

import itertools
import os
import weakref
from typing import Any

import numpy as np

from kernels import memory
from kernels.attention.config import (
    KVConfig,
    MLAConfig,
    apply_rope,
    check_cache_dtype,
    kv_bytes_per_token,
)
from kernels.attention.precision import KVDtype, encode, widen
from kernels.shared_memory import SegmentSpec, SharedArray

_share_ids = itertools.count(1)


def _unlink_all(segments: list[SharedArray]) -> None:
    """Unlink the cache's segments (on close, or by its finaliser at exit). A Ctrl-C
    meanwhile waits for the last of them and is then dropped
    (:func:`kernels.executors.sigint_deferred`): at exit, where the second of a double
    Ctrl-C lands, the program is ending anyway, and the unlinks take microseconds."""
    from kernels.executors import sigint_deferred

    with sigint_deferred(reraise=False):
        for seg in segments:
            seg.unlink()


class _CacheBase:
    """Capacity, length, allocation and the shared-memory life cycle."""

    config: Any
    _names: tuple[str, ...] = ()

    def __init__(
        self, config: Any, *, capacity: int, batch: int = 1, dtype: Any = np.float32,
        shared: bool = False,
    ) -> None:
        from kernels.attention.config import _positive_int

        self.capacity = _positive_int("capacity", capacity)
        self.batch = _positive_int("batch", batch)
        #: How the cache stores its elements (float32, float64, bfloat16, float16, int8).
        self.kv_dtype: KVDtype = check_cache_dtype(dtype)
        #: What appends take and decode computes in: float32 (float64 for a float64 cache).
        self.dtype = self.kv_dtype.compute
        self._length = 0
        self.shared = bool(shared)
        check_cache_memory(config, self.capacity, self.batch, self.dtype, shared=self.shared)
        self._segments: list[SharedArray] = []
        self._finalizer = weakref.finalize(self, _unlink_all, self._segments)
        #: The writable arrays behind the read-only views the cache shows.
        self._writable: dict[str, np.ndarray] = {}
        #: Unique for this cache's life (``id()`` is reused after garbage collection).
        self.share_id = next(_share_ids)
        #: First token index written by each write, oldest first (one int per write).
        self._write_log: list[int] = []

    @property
    def length(self) -> int:
        """Tokens a decode step attends to: those appended (or a prefix, if set lower)."""
        return self._length

    @length.setter
    def length(self, value: int) -> None:
        value = int(value)
        if not 0 <= value <= self.capacity:
            raise ValueError(f"length must be in [0, {self.capacity}], got {value}")
        self._length = value

    @property
    def generation(self) -> int:
        """Number of writes so far (appends, extends, loads)."""
        return len(self._write_log)

    def first_write_since(self, generation: int) -> int | None:
        """Lowest token index written after ``generation`` writes (None: nothing written).
        Copies of tokens below it are still exact."""
        later = self._write_log[generation:]
        return min(later) if later else None

    def _alloc(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Allocate array ``name`` (zeros); returns its writable array and sets the
        attribute ``name`` to a read-only view of it."""
        if not self.shared:
            array = aligned_zeros(shape, dtype)
        else:
            try:
                seg = SharedArray(shape, dtype)
            except BaseException:
                self.close()
                raise
            self._segments.append(seg)
            assert seg.array is not None
            array = seg.array
            array[...] = 0
        view = array.view()
        view.flags.writeable = False
        self._writable[name] = array
        setattr(self, name, view)
        return array

    def load(self, arrays: dict[str, Any], length: int) -> None:
        """Overwrite the arrays with ``arrays`` (by name, whole capacity; e.g. saved from
        another cache's :meth:`arrays`) and set ``length``. One write from token 0.

        A value may also be the path of a ``.npy`` file (``np.save`` of such an array):
        it is read straight into the cache's memory, so loading a saved cache costs no
        second copy of it (an ``np.load(..., mmap_mode="r")`` copy would map the file's
        pages into this process too, and its peak resident set would count them).
        """
        missing = set(self._names) - set(arrays)
        if missing:
            raise ValueError(f"load needs every array of the cache; missing {sorted(missing)}")
        for name in self._names:
            if isinstance(arrays[name], str | os.PathLike):
                read_npy_into(arrays[name], self._writable[name])
            else:
                self._writable[name][...] = arrays[name]
        self._write_log.append(0)
        self.length = length

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays the decode step reads, by name (whole capacity)."""
        return {name: getattr(self, name) for name in self._names}

    def segment_specs(self) -> dict[str, SegmentSpec]:
        """Shared-memory specs of :meth:`arrays` (only for ``shared=True`` caches)."""
        if not self.shared:
            raise RuntimeError("segment_specs needs a cache made with shared=True")
        if not self._segments:
            raise RuntimeError("this cache is closed")
        return {name: seg.spec for name, seg in zip(self._names, self._segments, strict=True)}

    @property
    def nbytes(self) -> int:
        """Bytes held by the per-token cache arrays at full capacity."""
        return sum(getattr(self, n).nbytes for n in self._cache_names)

    @property
    def used_nbytes(self) -> int:
        """Bytes of the cache arrays holding the ``length`` filled tokens (what a step reads)."""
        return sum(self._filled(getattr(self, n)).nbytes for n in self._cache_names)

    def _filled(self, a: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    _cache_names: tuple[str, ...] = ()

    def _check_room(self, n: int) -> None:
        if self.length + n > self.capacity:
            raise ValueError(
                f"cache is full: length {self.length} + {n} new token(s) exceeds "
                f"capacity {self.capacity}"
            )

    def _check_array(self, name: str, x: Any, shape: tuple[int, ...]) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"{name} must have dtype {self.dtype} (the cache's), got {x.dtype}")
        if x.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or infinity")
        return x

    def _scaled_names(self, names: tuple[str, ...]) -> None:
        """Per instance: the value arrays ``names``, and for int8 a scale array after
        each (``<name>_scale``, the value's shape without its last axis)."""
        if self.kv_dtype.scaled:
            self._names = tuple(n for v in self._names
                                for n in ((v, f"{v}_scale") if v in names else (v,)))
            self._cache_names = tuple(n for v in self._cache_names for n in (v, f"{v}_scale"))
            self.token_axes = {n: self.token_axes[n.removesuffix("_scale")]
                               for n in self._names}

    def _alloc_values(self, name: str, shape: tuple[int, ...]) -> None:
        self._alloc(name, shape, self.kv_dtype.storage)
        if self.kv_dtype.scaled:
            self._alloc(f"{name}_scale", shape[:-1], np.float32)

    def _write(self, name: str, index: tuple, x: np.ndarray) -> None:
        """Write ``x`` (already encoded by :meth:`_encode`) at ``index`` of ``name``."""
        values, scale = x
        self._writable[name][index] = values
        if scale is not None:
            self._writable[f"{name}_scale"][index] = scale

    def _encode(self, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return encode(x, self.kv_dtype, name)

    def dequantized(self, name: str) -> np.ndarray:
        """Array ``name`` (whole capacity) as the kernels see its values, in the compute
        dtype: bf16/fp16 widened, int8 times its scales. A new array."""
        stored = getattr(self, name)
        scale = getattr(self, f"{name}_scale", None) if self.kv_dtype.scaled else None
        if name not in self._cache_names:
            return stored.copy()
        return widen(stored, self.kv_dtype, scale).copy()

    def copy(self, *, shared: bool | None = None) -> Cache:
        """A copy with this config, capacity, batch, dtype, length and contents; in shared
        memory when ``shared`` (default: where this one is)."""
        new = make_cache(self.config, capacity=self.capacity, batch=self.batch,
                         dtype=self.kv_dtype, shared=self.shared if shared is None else shared)
        try:
            new.load(self.arrays(), self.length)
        except BaseException:
            new.close()
            raise
        return new

    def close(self) -> None:
        """Unlink the shared-memory segments (idempotent; no-op for a private cache)."""
        self._finalizer()

    def __enter__(self) -> _CacheBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class KVCache(_CacheBase):
    """K/V cache for MHA, GQA and MQA: ``k``, ``v`` of shape [batch, n_kv_heads, capacity, d]."""

    _names = ("k", "v")
    _cache_names = ("k", "v")
    k: np.ndarray  # read-only views (see the module docstring)
    v: np.ndarray
    #: The token axis of each array in :meth:`arrays` (None: not per token).
    token_axes: dict[str, int | None] = {"k": 2, "v": 2}

    def __init__(
        self, config: KVConfig, *, capacity: int, batch: int = 1, dtype: Any = np.float32,
        shared: bool = False,
    ) -> None:
        if not isinstance(config, KVConfig):
            raise TypeError(f"KVCache needs a KVConfig, got {type(config).__name__}")
        super().__init__(config, capacity=capacity, batch=batch, dtype=dtype, shared=shared)
        self.config = config
        self._scaled_names(("k", "v"))
        shape = (self.batch, config.n_kv_heads, self.capacity, config.head_dim)
        self._alloc_values("k", shape)
        self._alloc_values("v", shape)

    def _filled(self, a: np.ndarray) -> np.ndarray:
        return a[:, :, : self.length]

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Append one token per sequence: ``k``, ``v`` of shape [batch, n_kv_heads, head_dim].

        ``k`` is given before RoPE; it is rotated at position ``length``.
        """
        shape = (self.batch, self.config.n_kv_heads, self.config.head_dim)
        self._check_array("k", k, shape)
        self._check_array("v", v, shape)
        self.extend(k[:, :, None, :], v[:, :, None, :])

    def extend(self, k: np.ndarray, v: np.ndarray) -> None:
        """Append ``n`` tokens: ``k``, ``v`` of shape [batch, n_kv_heads, n, head_dim]."""
        c = self.config
        n = k.shape[2] if isinstance(k, np.ndarray) and k.ndim == 4 else -1
        if n < 1:
            raise ValueError(
                f"k must have shape ({self.batch}, {c.n_kv_heads}, n, {c.head_dim}) with n >= 1"
            )
        shape = (self.batch, c.n_kv_heads, n, c.head_dim)
        self._check_array("k", k, shape)
        self._check_array("v", v, shape)
        self._check_room(n)
        positions = np.arange(self.length, self.length + n)
        rotated = apply_rope(k, positions, c.rope_theta, interleaved=False).astype(self.dtype)
        k_enc, v_enc = self._encode("k", rotated), self._encode("v", v)
        t0 = self.length
        index = (slice(None), slice(None), slice(t0, t0 + n))
        self._write("k", index, k_enc)
        self._write("v", index, v_enc)
        self._write_log.append(t0)
        self.length += n


class MLACache(_CacheBase):
    """MLA cache: latent ``c_kv`` [batch, capacity, r] and shared rotary key ``k_pe``.

    Also holds the layer's up-projections ``w_uk`` and ``w_uv`` (random, seeded, unless
    given) because decode needs them; they are not counted as per-token cache.
    """

    _names = ("c_kv", "k_pe", "w_uk", "w_uv")
    _cache_names = ("c_kv", "k_pe")
    c_kv: np.ndarray  # read-only views (see the module docstring)
    k_pe: np.ndarray
    w_uk: np.ndarray
    w_uv: np.ndarray
    #: The token axis of each array in :meth:`arrays` (None: not per token).
    token_axes: dict[str, int | None] = {"c_kv": 1, "k_pe": 1, "w_uk": None, "w_uv": None}

    def __init__(
        self, config: MLAConfig, *, capacity: int, batch: int = 1, dtype: Any = np.float32,
        shared: bool = False, wkv_b: np.ndarray | None = None, seed: int = 0,
    ) -> None:
        if not isinstance(config, MLAConfig):
            raise TypeError(f"MLACache needs an MLAConfig, got {type(config).__name__}")
        super().__init__(config, capacity=capacity, batch=batch, dtype=dtype, shared=shared)
        self.config = c = config
        wshape = (c.n_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        if wkv_b is None:
            rng = np.random.default_rng(seed)
            wkv_b = rng.standard_normal(wshape) * c.kv_lora_rank**-0.5
        elif not isinstance(wkv_b, np.ndarray) or wkv_b.shape != wshape:
            raise ValueError(f"wkv_b must be an array of shape {wshape}")
        self._scaled_names(("c_kv", "k_pe"))
        self._alloc_values("c_kv", (self.batch, self.capacity, c.kv_lora_rank))
        self._alloc_values("k_pe", (self.batch, self.capacity, c.qk_rope_head_dim))
        # Split and made contiguous once, so each strategy reads plain [H, out, r] blocks.
        # Written here only: a cache's weights never change (load() rewrites them whole).
        # In the compute dtype: the absorbed fold and W_UV are float32 matmuls.
        w_uk = self._alloc("w_uk", (c.n_heads, c.qk_nope_head_dim, c.kv_lora_rank), self.dtype)
        w_uv = self._alloc("w_uv", (c.n_heads, c.v_head_dim, c.kv_lora_rank), self.dtype)
        w_uk[...] = wkv_b[:, : c.qk_nope_head_dim]
        w_uv[...] = wkv_b[:, c.qk_nope_head_dim :]

    def _filled(self, a: np.ndarray) -> np.ndarray:
        return a[:, : self.length]

    def append(self, c_kv: np.ndarray, k_pe: np.ndarray) -> None:
        """Append one token per sequence: ``c_kv`` [batch, r], ``k_pe`` [batch, rope dim].

        ``k_pe`` is given before RoPE; it is rotated at position ``length``.
        """
        c = self.config
        self._check_array("c_kv", c_kv, (self.batch, c.kv_lora_rank))
        self._check_array("k_pe", k_pe, (self.batch, c.qk_rope_head_dim))
        self.extend(c_kv[:, None, :], k_pe[:, None, :])

    def extend(self, c_kv: np.ndarray, k_pe: np.ndarray) -> None:
        """Append ``n`` tokens: ``c_kv`` [batch, n, r], ``k_pe`` [batch, n, rope dim]."""
        c = self.config
        n = c_kv.shape[1] if isinstance(c_kv, np.ndarray) and c_kv.ndim == 3 else -1
        if n < 1:
            raise ValueError(f"c_kv must have shape ({self.batch}, n, {c.kv_lora_rank}), n >= 1")
        self._check_array("c_kv", c_kv, (self.batch, n, c.kv_lora_rank))
        self._check_array("k_pe", k_pe, (self.batch, n, c.qk_rope_head_dim))
        self._check_room(n)
        positions = np.arange(self.length, self.length + n)
        rotated = apply_rope(k_pe, positions, c.rope_theta, interleaved=True).astype(self.dtype)
        c_enc, pe_enc = self._encode("c_kv", c_kv), self._encode("k_pe", rotated)
        t0 = self.length
        index = (slice(None), slice(t0, t0 + n))
        self._write("c_kv", index, c_enc)
        self._write("k_pe", index, pe_enc)
        self._write_log.append(t0)
        self.length += n


Cache = KVCache | MLACache


def cache_nbytes(config: Any, capacity: int, batch: int = 1, dtype: Any = np.float32) -> int:
    """Bytes of every array a cache of these arguments allocates, at full capacity.

    The per-token arrays (:func:`kv_bytes_per_token` x capacity x batch, int8 scales
    included), plus for MLA the up-projections ``w_uk``/``w_uv`` in the compute dtype.
    Computed from the arguments alone, so it can be checked before anything is allocated.
    """
    total = int(capacity) * int(batch) * kv_bytes_per_token(config, dtype)
    if isinstance(config, MLAConfig):
        total += _mla_weight_elements(config) * check_cache_dtype(dtype).compute.itemsize
    return total


def _mla_weight_elements(c: MLAConfig) -> int:
    return c.n_heads * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank


def check_cache_memory(
    config: Any, capacity: int, batch: int, dtype: Any, *, shared: bool,
    extra: int = 0, param: str = "capacity", what: str = "",
) -> None:
    """Refuse (:class:`kernels.memory.MemoryBudgetError`) a cache that would not fit.

    The cache's bytes count against available memory and, when ``shared``, against the
    free space of /dev/shm too; ``extra`` bytes (a decode step's temporaries, a
    transient copy) count against memory only. MLA adds the float64 ``wkv_b`` built
    while the cache is made.
    """
    nbytes = cache_nbytes(config, capacity, batch, dtype)
    transient = _mla_weight_elements(config) * 8 if isinstance(config, MLAConfig) else 0
    label = what or (f"an attention cache ({config.kind}, {check_cache_dtype(dtype)}) of {param}="
                     f"{capacity} tokens x batch={batch}")
    memory.check(
        label,
        nbytes + transient + int(extra),
        shared=nbytes if shared else 0,
        hint=f"lower {param} (the context length) or batch, or free memory",
    )


def read_npy_into(path: str | os.PathLike[str], out: np.ndarray) -> None:
    """Read the ``.npy`` file at ``path`` into the C-contiguous array ``out``; its shape
    and dtype must be ``out``'s. Raises ValueError otherwise."""
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"{path}: .npy format version {version} is not supported")
        if tuple(shape) != out.shape or np.dtype(dtype) != out.dtype or (
                fortran and out.ndim > 1):
            raise ValueError(f"{path}: holds {np.dtype(dtype)} {tuple(shape)}"
                             f"{' (Fortran order)' if fortran else ''}, not the cache's "
                             f"{out.dtype} {out.shape}")
        if not out.flags.c_contiguous:
            raise ValueError("read_npy_into needs a C-contiguous array")
        view = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise ValueError(f"{path}: ends after {done} of {len(view)} bytes")
            done += n


def aligned_zeros(shape: tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
    """Zeros starting on an ``align``-byte boundary (a cache line): a large ``np.zeros``
    starts 16 bytes past a page, so every 64-byte vector load of its rows would straddle
    two cache lines, which halves what the core can load (measured: the value tile of
    :mod:`kernels.attention.wide` ran at 103 GFLOP/s on such rows, 150-160 on aligned
    ones). Shared-memory segments start on a page already."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dt).reshape(shape)


def make_cache(config: Any, **kwargs: Any) -> Cache:
    """A :class:`KVCache` or :class:`MLACache` for ``config``."""
    if isinstance(config, MLAConfig):
        return MLACache(config, **kwargs)
    if isinstance(config, KVConfig):
        return KVCache(config, **kwargs)
    raise TypeError(f"config must be a KVConfig or MLAConfig, got {type(config).__name__}")


def fill_random(cache: Cache, n: int, *, seed: int = 0, block: int | None = None) -> None:
    """Append ``n`` random tokens (standard normal, seeded), in blocks to bound memory.

    The default block holds about 2**18 values per array, so the float64 RoPE
    temporaries stay in cache: 4096-token blocks of MHA made building a 32k cache 10x
    slower (fresh pages for every temporary), which dominated the benchmarks' set-up.
    """
    rng = np.random.default_rng(seed)
    c = cache.config
    if block is None:
        width = c.n_kv_heads * c.head_dim if isinstance(cache, KVCache) else c.kv_lora_rank
        block = max(16, (1 << 18) // (cache.batch * width))
    done = 0
    while done < n:
        m = min(block, n - done)
        if isinstance(cache, KVCache):
            shape = (cache.batch, c.n_kv_heads, m, c.head_dim)
            cache.extend(
                rng.standard_normal(shape, dtype=np.float32).astype(cache.dtype),
                rng.standard_normal(shape, dtype=np.float32).astype(cache.dtype),
            )
        else:
            cache.extend(
                rng.standard_normal((cache.batch, m, c.kv_lora_rank), np.float32).astype(
                    cache.dtype
                ),
                rng.standard_normal((cache.batch, m, c.qk_rope_head_dim), np.float32).astype(
                    cache.dtype
                ),
            )
        done += m
