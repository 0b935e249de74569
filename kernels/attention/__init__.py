"""Attention decode with a KV cache: MHA, GQA, MQA and MLA, in every strategy.

One decode step of one attention layer: the new token's query attends over every
cached token. At long context the step streams the whole cache once, so memory
bandwidth is its limit and the cache's bytes per token decide both memory and speed.

Public pieces: configs and :data:`PRESETS`, :func:`kv_bytes_per_token`, the caches
(:class:`KVCache`, :class:`MLACache`), :func:`decode` (the entry, same shape as the
other kernels'), and the registry contract (:data:`STRATEGIES`,
:func:`unavailable_reason`, :func:`make_case`, :func:`verify`, :func:`list_extra`).
See docs/attention.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import executors, memory, registry
from kernels.attention.cache import (
    Cache,
    KVCache,
    MLACache,
    cache_nbytes,
    check_cache_memory,
    fill_random,
    make_cache,
)
from kernels.attention.config import (
    PRESETS,
    AttentionConfig,
    KVConfig,
    MLAConfig,
    _positive_int,
    check_cache_dtype,
    get_preset,
    kv_bytes_per_token,
    step_cost,
)
from kernels.attention.decode import (
    MLA_IMPLS,
    STRATEGIES,
    check_mla_impl,
    decode,
    unavailable_reason,
    workers_used,
)
from kernels.attention.precision import (
    KV_DTYPES,
    KVDtype,
    check_torch_dtype,
    kv_dtype,
    rounds_query,
)

__all__ = [
    "KV_DTYPES", "KVDtype", "kv_dtype",
    "SPEC", "AttentionConfig", "Cache", "DEFAULT_SIZES", "KVCache", "KVConfig", "MLACache",
    "MLAConfig", "MLA_IMPLS", "PRESETS", "STRATEGIES", "cache_nbytes", "check_case", "decode",
    "fill_random",
    "kv_bytes_per_token", "step_cost", "list_extra", "make_cache", "make_case", "random_query",
    "unavailable_reason", "verify", "verify_cases",
]

#: Context lengths (tokens) that ``kernelrace run --kernel attention`` uses by default.
DEFAULT_SIZES = (1024, 8192)

_CASE_OPTIONS = {"seed", "dtype", "source"}


def random_query(cache: Cache, *, seed: int = 1) -> np.ndarray:
    """A seeded standard-normal query [batch, n_heads, query_dim] in the cache dtype."""
    c = cache.config
    rng = np.random.default_rng(seed)
    shape = (cache.batch, c.n_heads, c.query_dim)
    return rng.standard_normal(shape).astype(cache.dtype)


def make_case(
    size: int,
    *,
    strategy: str,
    inner: str | None = None,
    workers: int | None = 1,
    preset: str = "gqa",
    batch: int = 1,
    mla_impl: str | None = None,
    **options: Any,
) -> registry.Case:
    """A decode step over a cache of ``size`` tokens (random, seeded), ready to time.

    ``case.run()`` is one decode step (the newest token is already in the cache).
    ``case.fields`` has preset, batch, mla_impl (MLA only), dtype and ``cache_bytes``
    (bytes of cache arrays the step reads, from the arrays held); ``describe`` adds
    ``gbps`` = cache_bytes / seconds / 1e9. Options: ``seed`` (int), ``dtype``, and
    ``source``: a cache of this preset and batch already holding ``size`` tokens, used
    instead of building one (the case reads it in place, or a shared-memory copy of it
    for ``multiprocess``; ``case.close()`` never closes ``source``). The asv suite
    builds each cache once per process this way: asv re-runs ``setup`` before every
    sample.
    """
    strategy, inner, workers, config, impl, seed = _check_case_args(
        size, strategy, inner, workers, preset, batch, mla_impl, options)
    shared = strategy == "multiprocess"
    source = options.get("source")
    if source is not None:
        _check_source(source, config, int(size), batch, options.get("dtype"))
    _check_case_memory(size, strategy, inner, config, impl, batch, preset, options)
    if source is None:
        cache = make_cache(config, capacity=int(size), batch=batch,
                           dtype=options.get("dtype", np.float32), shared=shared)
    else:
        cache = source.copy(shared=True) if shared and not source.shared else source
    close = cache.close if cache is not source else (lambda: None)
    try:
        if source is None:
            fill_random(cache, int(size), seed=seed)
        query = random_query(cache, seed=seed + 1)
    except BaseException:
        close()
        raise
    check_mla_impl(cache, impl)
    cache_bytes = cache.used_nbytes
    fields: dict[str, Any] = {"preset": preset, "batch": cache.batch,
                              "dtype": cache.kv_dtype.name}
    if impl is not None:
        fields["mla_impl"] = impl
    fields["cache_bytes"] = cache_bytes
    cost = step_cost(config, int(size), cache.batch, dtype=cache.kv_dtype, mla_impl=impl)
    fields["weight_bytes"] = cost.weight_bytes
    fields["flops"] = cost.flops
    # workers_used: the workers a step really runs on (fewer than asked below the grain)
    fields["workers_used"] = workers_used(config, int(size), cache.batch, cache.kv_dtype,
                                          strategy, inner, workers, impl)

    def run() -> np.ndarray:
        return decode(cache, query, strategy=strategy, workers=workers, inner=inner,
                      mla_impl=impl)

    def describe(result: Any, seconds: float) -> dict[str, Any]:
        if not seconds > 0:
            return {"gbps": float("nan"), "gflops": float("nan")}
        return {"gbps": cache_bytes / seconds / 1e9, "gflops": cost.flops / seconds / 1e9}

    return registry.Case(run=run, describe=describe, close=close, fields=fields)


def check_case(
    size: int,
    *,
    strategy: str,
    inner: str | None = None,
    workers: int | None = 1,
    preset: str = "gqa",
    batch: int = 1,
    mla_impl: str | None = None,
    **options: Any,
) -> None:
    """Raise what :func:`make_case` would raise for these arguments, without building a
    cache: the harness checks every point of a grid this way before timing the first.
    That includes the memory budget (:mod:`kernels.memory`): the cache, its shared
    segments and a step's temporaries against available memory and /dev/shm."""
    strategy, inner, _, config, impl, _ = _check_case_args(
        size, strategy, inner, workers, preset, batch, mla_impl, options)
    _check_case_memory(size, strategy, inner, config, impl, batch, preset, options)


def step_temp_nbytes(
    config: Any, length: int, batch: int, dtype: Any, strategy: str, inner: str | None,
    mla_impl: str | None,
) -> int:
    """Bytes a decode step allocates beyond the cache, where they grow with ``length``.

    The NumPy kernel (``numpy``, and ``inner='numpy'``, whose ranges run at the same
    time) holds the scores [batch, n_heads, length], twice on the MLA absorbed path
    (the rotary scores are a second matmul); the torch anchor is counted the same way.
    numba, python and MLA naive (blocked) hold O(heads) or one block: counted as 0.
    """
    kernel = inner if strategy in ("threaded", "multiprocess") else strategy
    if kernel not in ("numpy", "torch") or mla_impl == "naive":
        return 0
    copies = 2 if mla_impl == "absorbed" else 1
    return copies * int(batch) * config.n_heads * int(length) * kv_dtype(dtype).compute.itemsize


def _check_case_memory(  # noqa: PLR0913
    size: int, strategy: str, inner: str | None, config: Any, impl: str | None, batch: int,
    preset: str, options: dict[str, Any],
) -> None:
    """The case's bytes against the memory budget, before anything is built: a new cache
    (in /dev/shm for ``multiprocess``), or the shared copy of a private ``source``, plus
    a step's temporaries."""
    source = options.get("source")
    dtype = kv_dtype(options.get("dtype") or (source.kv_dtype if source is not None
                                              else np.float32))
    extra = step_temp_nbytes(config, int(size), batch, dtype, strategy, inner, impl)
    shared = strategy == "multiprocess"
    if source is not None and (source.shared or not shared):
        # The cache exists already: only the temporaries are new.
        memory.check(f"a decode step over size={size} tokens x batch={batch}", extra,
                     hint="lower size (the context length) or batch, or free memory")
        return
    what = (f"attention case {registry.label(strategy, inner)} preset {preset} "
            f"({dtype}): a cache of size={size} tokens x batch={batch}")
    check_cache_memory(config, int(size), batch, dtype, shared=shared, extra=extra,
                       param="size", what=what)


def _check_case_args(  # noqa: PLR0913
    size: Any, strategy: str, inner: str | None, workers: Any, preset: str, batch: Any,
    mla_impl: str | None, options: dict[str, Any],
) -> tuple[str, str | None, int, Any, str | None, int]:
    """(strategy, inner, workers, config, mla_impl, seed), every argument checked."""
    unknown = set(options) - _CASE_OPTIONS
    if unknown:
        raise ValueError(
            f"unknown attention option(s): {', '.join(sorted(unknown))}; "
            f"accepted: preset, batch, mla_impl, {', '.join(sorted(_CASE_OPTIONS))}"
        )
    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    workers = executors.resolve_workers(workers)
    registry.require_available(__import__(__name__, fromlist=["_"]), strategy)
    config = get_preset(preset)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size (context length) must be an int >= 1, got {size!r}")
    _positive_int("batch", batch)
    if isinstance(config, MLAConfig):
        impl = "absorbed" if mla_impl is None else mla_impl
        if impl not in MLA_IMPLS:
            raise ValueError(f"mla_impl must be one of {', '.join(MLA_IMPLS)}; got {mla_impl!r}")
    elif mla_impl is not None:
        raise ValueError(f"mla_impl applies only to MLA presets; preset {preset!r} is "
                         f"{config.kind}")
    else:
        impl = None
    if options.get("dtype") is not None:
        check_torch_dtype(strategy, check_cache_dtype(options["dtype"]))
    seed = _check_seed(options.get("seed", 0))
    return strategy, inner, workers, config, impl, seed


MAX_SEED = (1 << 64) - 1


def _check_seed(seed: Any) -> int:
    """``seed`` as an int in [0, 2**64 - 1]; a float (1.7) is refused, not truncated."""
    return registry.check_int("seed", seed, 0, MAX_SEED)


def _check_source(source: Any, config: Any, size: int, batch: int, dtype: Any) -> None:
    """Refuse a ``source`` cache that does not match the case asked for."""
    if not isinstance(source, (KVCache, MLACache)):
        raise TypeError(f"source must be a KVCache or MLACache, got {type(source).__name__}")
    wanted = {"config": config, "length": size, "batch": batch}
    if dtype is not None:
        wanted["kv_dtype"] = kv_dtype(dtype)
    for name, value in wanted.items():
        if getattr(source, name) != value:
            raise ValueError(f"source cache has {name} {getattr(source, name)!r}, "
                             f"the case needs {value!r}")


def list_extra() -> str:
    """A text table: each preset's KV-cache bytes per token per layer, and ratio to MHA."""
    mha = kv_bytes_per_token(PRESETS["mha"], np.float32)
    headers = ["preset", "kind", "heads", "cached per token", "B/token f32",
               "bf16/fp16", "int8+scales", "vs mha", "MiB @32k f32"]
    rows = []
    for name, c in PRESETS.items():
        if isinstance(c, KVConfig):
            what = f"K,V x {c.n_kv_heads} heads x {c.head_dim}"
        else:
            what = f"c_kv {c.kv_lora_rank} + k_pe {c.qk_rope_head_dim}"
        f32 = kv_bytes_per_token(c, np.float32)
        rows.append([name, c.kind, str(c.n_heads), what, str(f32),
                     str(kv_bytes_per_token(c, "bfloat16")), str(kv_bytes_per_token(c, "int8")),
                     f"{f32 / mha:.4f}",
                     f"{f32 * 32768 / 2**20:.0f}"])
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["attention: KV cache per token per layer (batch 1)"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------

#: Small configs of every kind, so every strategy can be checked quickly.
SMALL_CONFIGS: dict[str, AttentionConfig] = {
    "mha-small": KVConfig(n_heads=4, n_kv_heads=4, head_dim=16),
    "gqa-small": KVConfig(n_heads=8, n_kv_heads=2, head_dim=16),
    "mqa-small": KVConfig(n_heads=4, n_kv_heads=1, head_dim=16),
    "mla-small": MLAConfig(n_heads=4, kv_lora_rank=32, qk_nope_head_dim=16,
                           qk_rope_head_dim=8, v_head_dim=12),
    # Groups of 16 heads per KV row: the group-GEMM kernels of kernels.attention.wide
    # (two KV heads; value widths below one value tile). Groups of 32, two vectors of
    # heads, are the mqa preset's (tests/test_simd.py).
    "mqa-wide": KVConfig(n_heads=32, n_kv_heads=2, head_dim=16),
    "mla-wide": MLAConfig(n_heads=16, kv_lora_rank=32, qk_nope_head_dim=16,
                          qk_rope_head_dim=16, v_head_dim=16),
}


#: The cache types besides float32 :func:`verify` also checks, on one case per small
#: config: the reduced ones, and float64 (whose numba compile once failed unnoticed).
VERIFY_DTYPES = ("bfloat16", "float16", "int8", "float64")


def verify_cases() -> list[tuple[str, dict]]:
    """The inputs :func:`verify` checks: (name, dict of config, length, batch, mla_impl,
    dtype)."""
    cases = []
    for name, c in SMALL_CONFIGS.items():
        impls = MLA_IMPLS if isinstance(c, MLAConfig) else (None,)
        for impl in impls:
            for length, batch in ((1, 1), (7, 1), (33, 2), (300, 1)):
                tag = f"{name}{'/' + impl if impl else ''} T={length} B={batch}"
                cases.append((tag, {"config": c, "length": length, "batch": batch,
                                    "mla_impl": impl, "dtype": "float32"}))
            for dtype in VERIFY_DTYPES:
                tag = f"{name}{'/' + impl if impl else ''} {dtype} T=33 B=2"
                cases.append((tag, {"config": c, "length": 33, "batch": 2,
                                    "mla_impl": impl, "dtype": dtype}))
    for name, c in PRESETS.items():
        impls = MLA_IMPLS if isinstance(c, MLAConfig) else (None,)
        for impl in impls:
            tag = f"{name}{'/' + impl if impl else ''} T=5 B=1"
            cases.append((tag, {"config": c, "length": 5, "batch": 1, "mla_impl": impl,
                                "dtype": "float32"}))
    return cases


def verify(strategy: str, inner: str | None, workers: int) -> list[registry.Check]:
    """Check ``strategy`` against the float64 reference (MLA: its naive definition) on
    :func:`verify_cases`: float32 caches, and bf16, fp16 and int8 ones against the
    reference on the values they hold (the torch anchor skips int8, which it refuses);
    tolerance rtol 2e-4 / atol 2e-5 relative to the output scale, plus 4 unit roundoffs of
    the cache type where the query is rounded to it as well (torch on bf16/fp16, numba's
    bf16 products: :func:`~kernels.attention.precision.rounds_query`).
    """
    from kernels.attention.reference import reference_decode

    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    workers = executors.resolve_workers(workers)
    checks = []
    for tag, spec in verify_cases():
        if strategy == "torch" and spec["dtype"] == "int8":
            continue
        cache = make_cache(spec["config"], capacity=spec["length"], batch=spec["batch"],
                           dtype=spec["dtype"], shared=strategy == "multiprocess")
        try:
            fill_random(cache, spec["length"], seed=len(tag))
            query = random_query(cache, seed=spec["length"])
            want = reference_decode(cache, query, "naive")
            got = decode(cache, query, strategy=strategy, inner=inner, workers=workers,
                         mla_impl=spec["mla_impl"])
        finally:
            cache.close()
        err = float(np.max(np.abs(got - want)))
        limit = 2e-5 * max(1.0, float(np.max(np.abs(want)))) + 2e-4 * float(
            np.max(np.abs(want))
        )
        spec_dtype = kv_dtype(spec["dtype"])
        if rounds_query(spec_dtype, strategy, inner):
            # products in the cache's type: the query (and numba's weights) rounded too
            limit += 4 * spec_dtype.u * float(np.max(np.abs(want)))
        ok = got.shape == want.shape and bool(np.isfinite(got).all()) and err <= limit
        checks.append(registry.Check(tag, ok, f"max abs err {err:.2e} (limit {limit:.2e})"))
    return checks


SPEC = registry.KernelSpec(
    name="attention",
    title="attention decode with a KV cache (MHA, GQA, MQA, MLA)",
    size_name="context",
    unit="tokens",
    max_size=1 << 62,  # the memory budget binds long before
    default_sizes=DEFAULT_SIZES,
    strategies=STRATEGIES,
    serial=("python",),  # the float64 reference runs on one core whatever workers is
    requires={"torch": "torch"},
    # The float64 Python reference takes seconds per step past this context.
    size_limits={"python": 1024},
    anchors=("torch",),
    workers_used=lambda size, strategy, inner, workers, preset="gqa", batch=1, mla_impl=None,
    dtype=np.float32, **_: workers_used(get_preset(preset), size, batch, dtype, strategy, inner,
                                        workers, mla_impl),
    options=(
        registry.Option("preset", "config preset (default gqa)", choices=tuple(PRESETS)),
        registry.Option("batch", "sequences decoded together (default 1)", low=1, high=1 << 20),
        registry.Option("mla_impl", "MLA presets: naive or absorbed (default absorbed)",
                        choices=MLA_IMPLS),
        registry.Option("seed", "seed of the random cache and query", low=0, high=MAX_SEED),
        registry.Option("dtype", "cache element type (default float32; bf16/fp16/int8 "
                        "computed in float32)", choices=tuple(KV_DTYPES)),
    ),
    order=30,
)
