"""The public decode step and the strategies that compute it.

``decode(cache, query, strategy=...)`` checks every argument, rotates and scales the
query once, then hands the cache to a strategy:

- ``python``: :func:`kernels.attention.reference.reference_decode` (float64);
- ``numpy``: one batched-matmul pass over the cache (BLAS capped to ``workers``);
- ``numba``: :func:`kernels.attention.jit.fused`, one fused online-softmax pass,
  the sequence split ``workers`` ways by prange and merged;
- ``threaded`` / ``multiprocess``: the sequence split ``workers`` ways, each range run
  by the ``inner`` chunk kernel on a thread / process pool, the partial states merged
  by :func:`kernels.attention.jit.merge_partials`;
- ``torch``: :mod:`kernels.attention.torch_anchor`.

MLA ``absorbed`` runs the generic split-key kernel on the latent cache (keys
``[c_kv | k_pe]``, values ``c_kv``) with ``q_latent = q_nope @ W_UK`` and applies
``W_UV`` after the merge; ``naive`` up-projects the latents per head in the chunk
kernels.

A bf16, fp16 or int8 cache (:mod:`kernels.attention.precision`) is computed in float32:
the query is float32, the numba kernels widen each element as they load it, the NumPy
kernel widens blocks of tokens, the Python kernels widen their range; the output is
float32.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
import weakref
from typing import Any

import numpy as np

from kernels import executors, registry
from kernels.attention import jit, reference, vectorized, wide
from kernels.attention.cache import Cache, KVCache, MLACache
from kernels.attention.config import query_rope, step_cost
from kernels.attention.precision import check_torch_dtype, numba_view, widen

STRATEGIES = ("python", "numpy", "numba", *executors.POOL_STRATEGIES, "torch")
MLA_IMPLS = ("naive", "absorbed")

#: Minimum grain of the pool strategies, in :func:`work_units` per worker: below it a
#: second worker's round trip (a task to another process or host, its result back) costs
#: more than the half step it saves, and the step runs on fewer workers
#: (:func:`workers_used`). Set from ``python -m benchmarks.workers_penalty --kernel
#: attention`` on the 2-core Xeon: at 1k tokens, 2 workers were 1.20-1.35x slower than 1
#: with multiprocess:numba/numpy (MQA, MLA), 1.36-1.79x with distributed:numba/numpy, and
#: 1.09x with threaded:numba on MQA. ``threaded:numba`` went from 300 to 500 when the
#: units left out absorbed MLA's weight products (the parent makes them): an MLA 1k step
#: on 2 threads, 948 units split, was 1.045-1.082x slower than on 1 (AMD EPYC Zen 4,
#: 2026-12-03; docs/attention.md). The python chunk kernel is about 100x slower than
#: the estimate assumes, so its grains are 100x smaller. ``threaded:python`` has its own
#: rule (:data:`PY_THREADS_GRAIN`). ``numba`` (prange) and ``threaded:numpy`` split as
#: asked: no penalty measured.
MIN_GRAIN: dict[str, int] = {
    "threaded:numba": 500,
    "multiprocess:numba": 2_000,
    "multiprocess:numpy": 2_000,
    "multiprocess:python": 20,
    "distributed:numba": 20_000,
    "distributed:numpy": 20_000,
    "distributed:python": 200,
}


#: ``threaded:python``'s grain, in elements per head and worker (tokens x the head's key
#: and value width, :func:`workers_used`). It has no round trip, but every thread
#: makes every head's NumPy calls over its share of the tokens, holding the GIL between
#: them: splitting the tokens halves each call's elements, not the calls. Two threads
#: against one (``python -m benchmarks.workers_penalty --kernel attention``), at 1k
#: tokens (262,144 elements a head): GQA and MQA 1.19-1.26x slower on a 2-core AMD
#: EPYC, MHA 0.95x there but 1.25x in two runs on an AMD EPYC Zen 4 (2026-12-02); MQA
#: 2k (524,288) 1.07x slower; level or faster from MQA 4k (0.99x, 1,048,576) and MLA 1k
#: absorbed (0.65-0.89x; 1,245,184 with the absorbed weights' share).
PY_THREADS_GRAIN = 400_000


def work_units(cost: Any) -> int:
    """A step's work as estimated microseconds on one core: its bytes at 10 GB/s plus its
    FLOPs at 50 GFLOP/s (:class:`kernels.attention.config.StepCost`)."""
    return int(cost.bytes // 10_000 + cost.flops // 50_000)


def workers_used(config: Any, context: int, batch: int, dtype: Any, strategy: str,  # noqa: PLR0913
                 inner: str | None, workers: int, mla_impl: str | None = None) -> int:
    """The workers a step over ``context`` cached tokens runs on: ``workers`` cut to one
    per token and to one per :data:`MIN_GRAIN` of :func:`work_units` of the part the
    workers split (absorbed MLA's weight products, and the weights they read, are made
    once, in the parent: :class:`Problem`, :func:`_projected`); 1 for ``python``.
    ``threaded:python`` instead to one per :data:`PY_THREADS_GRAIN` of the python chunk
    kernel's work per call, half the step's FLOPs (a multiply-add per element) over its
    batch x query heads calls, which every thread makes."""
    if strategy == "python":
        return 1
    cost = step_cost(config, context, batch, dtype=dtype, mla_impl=mla_impl)
    label = registry.label(strategy, inner)
    if label == "threaded:python":
        per_call = cost.flops // (2 * batch * config.n_heads)
        return registry.grain_workers(workers, per_call, PY_THREADS_GRAIN, context)
    if cost.weight_flops:
        cost = cost._replace(flops=cost.flops - cost.weight_flops, weight_bytes=0,
                             weight_flops=0)
    return registry.grain_workers(workers, work_units(cost), MIN_GRAIN.get(label), context)


def unavailable_reason(strategy: str) -> str | None:
    """Why ``strategy`` cannot run here (torch not installed), else None. Loads torch
    (checking that it imports), with a warning if that is too late (:func:`_late_torch`)."""
    if strategy == "torch":
        _late_torch()
        return registry.module_available("torch")
    return None


def _late_torch() -> None:
    """Warn when torch is about to load after numba's parallel kernels started OpenMP
    threads: torch's own libgomp then never loads (numba's has the same soname) and
    torch's steps run up to 20x slower (measured: MQA at 32k, 25 ms -> 420-670 ms).
    Every case and decode call with strategy ``torch`` asks for torch first, so a run
    that makes its cases before timing them is safe."""
    numba = sys.modules.get("numba")
    if "torch" in sys.modules or numba is None or importlib.util.find_spec("torch") is None:
        return
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel numba call yet
        return
    if layer == "omp":
        warnings.warn(
            "torch is loaded after numba started its OpenMP threads, so torch runs on "
            "numba's libgomp and its steps can be 20x slower: load torch (make the torch "
            "case) before the first parallel numba call, or set "
            "NUMBA_THREADING_LAYER=workqueue", RuntimeWarning, stacklevel=3)


def _module() -> Any:
    import kernels.attention as module

    return module


def check_mla_impl(cache: Any, mla_impl: str | None) -> str | None:
    """The MLA path for ``cache``: 'absorbed' by default for MLA; None for K/V caches."""
    if isinstance(cache, MLACache):
        impl = "absorbed" if mla_impl is None else mla_impl
        if impl not in MLA_IMPLS:
            raise ValueError(f"mla_impl must be one of {', '.join(MLA_IMPLS)}; got {mla_impl!r}")
        return impl
    if mla_impl not in (None, "absorbed"):
        raise ValueError(f"mla_impl applies only to MLA caches; got mla_impl={mla_impl!r}")
    return None


def check_query(cache: Any, query: Any, finite: bool = True) -> np.ndarray:
    """Validate ``query`` [batch, n_heads, query_dim] against ``cache``; returns it.
    ``finite=False`` leaves out the NaN and infinity check, for a caller that makes it
    itself (:func:`rotated_query` does, in its one pass)."""
    if not isinstance(cache, (KVCache, MLACache)):
        raise TypeError(f"cache must be a KVCache or MLACache, got {type(cache).__name__}")
    if cache.length < 1:
        raise ValueError("cache is empty: append the new token's key/value before decode")
    c = cache.config
    shape = (cache.batch, c.n_heads, c.query_dim)
    if not isinstance(query, np.ndarray):
        raise TypeError(f"query must be a numpy array, got {type(query).__name__}")
    if query.shape != shape:
        raise ValueError(
            f"query must have shape {shape} (batch, n_heads, query_dim), got {query.shape}"
        )
    if query.dtype.kind != "f":
        raise TypeError(f"query must be a floating array, got dtype {query.dtype}")
    if finite and not np.all(np.isfinite(query)):
        raise _not_finite()
    return query


def _not_finite() -> ValueError:
    return ValueError("query contains NaN or infinity")


def rotated_query(config: Any, query: np.ndarray, position: int) -> np.ndarray:
    """:func:`kernels.attention.config.rotate_query` (the reference's), in one compiled
    pass (:func:`kernels.attention.jit.rotate_one`); float64. ValueError where the
    query holds NaN or infinity (checked in the same pass)."""
    start, interleaved, inv_freq = query_rope(config)
    q = query if query.dtype in (np.float32, np.float64) else query.astype(np.float64)
    out = np.empty(q.shape)
    if not jit.rotate_one(q, start, position, inv_freq, interleaved, out):
        raise _not_finite()
    return out


def decode(
    cache: Cache,
    query: np.ndarray,
    *,
    strategy: str = "numba",
    workers: int | None = None,
    inner: str | None = None,
    mla_impl: str | None = None,
) -> np.ndarray:
    """One decode step: attention of ``query`` over the ``cache.length`` cached tokens.

    ``query`` [batch, n_heads, query_dim] is the new token's query before RoPE (rotated
    here at position ``cache.length - 1``; append the token's K/V or latent first).
    Returns [batch, n_heads, out_dim] in the cache dtype (float64 for ``python``).
    ``workers=None`` means all cores; ``mla_impl`` (MLA only) is 'absorbed' (default)
    or 'naive'. All arguments are checked before any pool starts.
    """
    plan = _Plan.get(cache, workers, mla_impl) if strategy == "numba" and inner is None \
        and isinstance(cache, (KVCache, MLACache)) else None
    if plan is not None:
        return plan.step(cache, query)
    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    workers = executors.resolve_workers(workers)
    registry.require_available(_module(), strategy)
    impl = check_mla_impl(cache, mla_impl)
    check_query(cache, query, finite=strategy == "python")  # else: rotated_query checks
    check_torch_dtype(strategy, cache.kv_dtype)

    if strategy == "python":
        return reference.reference_decode(cache, query, impl or "naive")
    q_rot = rotated_query(cache.config, query, cache.length - 1)
    if strategy == "torch":
        from kernels.attention import torch_anchor

        with torch_anchor.torch_threads(workers):
            return torch_anchor.decode_torch(cache, q_rot, impl or "absorbed")
    if strategy == "numpy":
        problem = Problem(cache, q_rot, impl)
        with executors.limit_threads(workers, numba_pool=False):
            return problem.finish(problem.partial("numpy", 0, cache.length, cache.arrays()))
    used = workers_used(cache.config, cache.length, cache.batch, cache.kv_dtype, strategy,
                        inner, workers, impl)
    if strategy == "numba":
        with executors.limit_threads(used, pools=False):  # no BLAS call inside
            return Problem(cache, q_rot, impl, parallel=True).fused(used, cache.arrays())
    problem = Problem(cache, q_rot, impl)
    states = _run_pool(cache, problem, strategy, inner, workers, used)
    return problem.finish_states(states)


class _Plan:
    """Everything a ``numba`` step needs besides its query and length, found on the first
    step of a cache with these ``workers`` and ``mla_impl`` and kept for the cache's life
    (:data:`_PLANS`): the arguments checked, the RoPE table, the chunk kernel, the
    cache's arrays as the kernel reads them (MLA: and its weights), and the kernel's
    native address.

    Each step then checks the query, rotates, scales and casts it in one compiled pass
    (:func:`kernels.attention.jit.rotate_scaled`), caps numba's pool, absorbs W_UK (MLA
    absorbed), runs :func:`kernels.attention.jit.fused` and projects by W_UV: the same
    work and the same result, bit for bit, as the general path (:class:`Problem`),
    without its dozen Python calls. Those cost about 0.2 ms of a 32k step, where
    streaming the cache has pushed the interpreter's own data out of the CPU's caches.
    Each step timed after one over another cache (AMD EPYC Zen 4, GQA): int8 32k at 2
    workers, 2.96 ms against 2.90 for the kernel alone (3.15 by the general path's
    calls); float32 1k, 0.31 ms against 0.27 (0.38).
    """

    __slots__ = ("address", "arrays", "dtype", "head", "impl", "inv_freq", "interleaved",
                 "nope", "out", "scale", "start", "tail", "w_uk", "w_uv", "workers")

    def __init__(self, cache: Cache, workers: Any, mla_impl: str | None) -> None:
        registry.check_strategy(STRATEGIES, "numba", None)
        self.workers = executors.resolve_workers(workers)
        registry.require_available(_module(), "numba")
        self.impl = check_mla_impl(cache, mla_impl)
        c = cache.config
        self.start, self.interleaved, self.inv_freq = query_rope(c)
        self.scale = c.scale
        self.dtype = cache.dtype
        arrays = cache.arrays()
        self.arrays = tuple(arrays.values())
        q = np.zeros((cache.batch, c.n_heads, c.query_dim))
        problem = Problem(cache, q, self.impl, parallel=True)
        kernel, head, self.tail, dv = problem._numba_kernel(arrays)
        # all but the query's parts: (k1, q2, k2, v) with q2 empty for a K/V cache; MLA
        # absorbed (k1, k2, v), naive (c_kv, k_pe, w_uk, w_uv)
        self.head = head[1:] if self.impl is None else \
            head[2:] if self.impl == "naive" else (head[1], *head[3:])
        self.nope = 0 if self.impl is None else c.qk_nope_head_dim
        self.w_uk = cache.w_uk if self.impl == "absorbed" else None
        self.w_uv = problem.w_uv
        self.out = (cache.batch, c.n_heads, dv)
        self.address = jit.fused_address(kernel, head, self.tail,
                                         np.empty(self.out, self.dtype))

    @staticmethod
    def get(cache: Cache, workers: Any, mla_impl: str | None) -> _Plan | None:
        """The plan of ``cache`` for ``workers`` and ``mla_impl`` (made and checked on
        first use; made again if the cache's arrays are not the ones it holds); None
        for arguments that cannot key one (unhashable: the general path refuses them)."""
        plans = _PLANS.get(cache)
        if plans is None:
            plans = _PLANS[cache] = {}
        key = (type(workers), workers, type(mla_impl), mla_impl)
        try:
            plan = plans.get(key)
        except TypeError:
            return None
        if plan is None or any(a is not b for a, b in zip(plan.arrays, cache.arrays().values(),
                                                         strict=True)):
            plan = plans[key] = _Plan(cache, workers, mla_impl)
        return plan

    def step(self, cache: Cache, query: np.ndarray) -> np.ndarray:
        """One decode step of ``cache`` (as :func:`decode`)."""
        check_query(cache, query, finite=False)
        q = query if query.dtype in (np.float32, np.float64) else query.astype(np.float64)
        qs = np.empty(q.shape, self.dtype)
        length = cache.length
        if not jit.rotate_scaled(q, self.start, length - 1, self.inv_freq, self.interleaved,
                                 self.scale, qs):
            raise _not_finite()
        used = max(1, min(self.workers, length))  # workers_used: numba splits as asked
        out = np.empty(self.out, self.dtype)
        with executors.limit_threads(used, pools=False):  # no BLAS call inside
            if self.impl is None:
                head = (qs, *self.head)
            else:
                q1, q2 = _mla_query(qs, self.nope, self.impl, self.w_uk, parallel=True)
                head = (q1, q2, *self.head) if self.impl == "naive" else \
                    (q1, self.head[0], q2, *self.head[1:])
            jit.fused(self.address, head, self.tail, length, used, out)
            return out if self.impl != "absorbed" else _projected(out, self.w_uv, True)


#: The :class:`_Plan` of each cache by ``workers`` and ``mla_impl`` (dropped with the
#: cache).
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _read_only(a: np.ndarray) -> np.ndarray:
    """``a`` marked read-only. The placeholders (no rotary key, no scales) then have the
    numba type of the cache's own read-only views, so an MHA/GQA/MQA step and an MLA step,
    or a float and an int8 cache, share compiled specialisations instead of each
    compiling its own (each chunk kernel's compile takes seconds to tens of seconds)."""
    a.flags.writeable = False
    return a


class Problem:
    """The query side of one step, prepared once: rotated, scaled, and (MLA absorbed)
    multiplied by W_UK. Small; pickled whole to process workers.
    """

    def __init__(self, cache: Cache, q_rot: np.ndarray, impl: str | None,
                 parallel: bool = False) -> None:
        c = cache.config
        # MLA's weight products on numba's pool (jit.absorb, jit.project) for the numba
        # strategy, inside its thread cap; NumPy's matmul otherwise (starting numba's
        # OpenMP threads would leave torch, imported later, on numba's libgomp).
        self.parallel = parallel
        dt = cache.dtype
        self.kind = "kv" if impl is None else impl
        self.length = cache.length
        self.dtype = dt
        self.kv_dtype = cache.kv_dtype
        q = (q_rot * c.scale).astype(dt)
        if self.kind == "kv":
            self.q1 = q
            self.q2 = np.zeros(q.shape[:2] + (0,), dt)
        else:
            self.q1, self.q2 = _mla_query(q, c.qk_nope_head_dim, self.kind, cache.w_uk,
                                          parallel)
        # W_UV is applied after the merge on the absorbed path (parent only).
        self.w_uv = cache.w_uv if self.kind == "absorbed" else None

    def operands(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """(k1, k2, v, ks1, ks2, vs) views for the generic kernel, built from the cache
        arrays: keys, rotary keys, values and, for int8, their scales [B, Hkv, cap]
        (otherwise empty [B, Hkv, 0])."""
        if self.kind == "kv":
            k = arrays["k"]
            none = _read_only(np.zeros(k.shape[:2] + (0,), np.float32))
            k2 = _read_only(np.zeros(k.shape[:3] + (0,), k.dtype))
            if not self.kv_dtype.scaled:
                return k, k2, arrays["v"], none, none, none
            return k, k2, arrays["v"], arrays["k_scale"], none, arrays["v_scale"]
        latent = arrays["c_kv"][:, None]  # one shared "KV head": [B, 1, cap, r]
        if not self.kv_dtype.scaled:
            none = _read_only(np.zeros(latent.shape[:2] + (0,), np.float32))
            return latent, arrays["k_pe"][:, None], latent, none, none, none
        ls = arrays["c_kv_scale"][:, None]
        return latent, arrays["k_pe"][:, None], latent, ls, arrays["k_pe_scale"][:, None], ls

    def _latents(self, arrays: dict[str, np.ndarray], t0: int, t1: int) -> tuple:
        """MLA's c_kv and k_pe over tokens [t0, t1), widened to the compute dtype."""
        spec = self.kv_dtype
        return tuple(
            widen(arrays[n][:, t0:t1], spec,
                  arrays[f"{n}_scale"][:, t0:t1] if spec.scaled else None)
            for n in ("c_kv", "k_pe"))

    def _widened(self, ops: tuple[np.ndarray, ...], t0: int, t1: int) -> tuple:
        """(k1, k2, v) over tokens [t0, t1), widened to the compute dtype."""
        k1, k2, v, ks1, ks2, vs = ops
        spec = self.kv_dtype
        pairs = ((k1, ks1), (k2, ks2), (v, vs))
        return tuple(widen(a[:, :, t0:t1], spec, sc[:, :, t0:t1] if spec.scaled else None)
                     for a, sc in pairs)

    def partial(
        self, inner: str, t0: int, t1: int, arrays: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Partial state (m, l, o) over tokens [t0, t1) with the ``inner`` chunk kernel."""
        reduced = self.kv_dtype.reduced
        if self.kind == "naive":
            if inner in ("python", "numpy"):
                latents = self._latents(arrays, t0, t1) if reduced else (
                    arrays["c_kv"][:, t0:t1], arrays["k_pe"][:, t0:t1])
                args = (self.q1, self.q2, *latents, arrays["w_uk"], arrays["w_uv"],
                        0, t1 - t0)
                if inner == "python":
                    return reference.naive_partial_python(*args)
                return vectorized.naive_partial_numpy(*args)
            return self._numba_partial(arrays, t0, t1)
        ops = self.operands(arrays)
        if inner == "python":
            if reduced:
                k1, k2, v = self._widened(ops, t0, t1)
                return reference.partial_python(self.q1, k1, self.q2, k2, v, 0, t1 - t0)
            return reference.partial_python(self.q1, ops[0], self.q2, ops[1], ops[2], t0, t1)
        if inner == "numpy":
            if reduced:
                return vectorized.partial_numpy_blocked(
                    self.q1, self.q2, t0, t1, lambda a, b: self._widened(ops, a, b))
            return vectorized.partial_numpy(self.q1, ops[0], self.q2, ops[1], ops[2], t0, t1)
        return self._numba_partial(arrays, t0, t1)

    def _numba_kernel(self, arrays: dict[str, np.ndarray]) -> tuple[Any, tuple, tuple, int]:
        """The numba chunk kernel for this step, called as ``kernel(*head, t0, t1, m, l,
        o, *tail)``, with its head and tail arguments and the width of ``o``. The cache's
        arrays go in read-only (:func:`_read_only_views`), as the cache shows them: one a
        user bound in their place (``cache.v = ...``) would otherwise be writable and
        compile a variant of its own (10 s for a GQA step on an AMD EPYC Zen 4)."""
        arrays = _read_only_views(arrays)
        if self.kind == "naive":
            head = (self.q1, self.q2, *self._naive_numba(arrays))
            return jit.naive_partial_jit, head, self._naive_scales(arrays), \
                arrays["w_uv"].shape[1]
        k1, k2, v, ks1, ks2, vs = self.operands(arrays)
        kernel = wide.partial_wide if self._wide(k1, v) else jit.partial_jit
        head = (self.q1, numba_view(k1), self.q2, numba_view(k2), numba_view(v))
        return kernel, head, (ks1, ks2, vs), v.shape[3]

    def _numba_partial(self, arrays: dict[str, np.ndarray], t0: int, t1: int) -> tuple:
        kernel, head, tail, dv = self._numba_kernel(arrays)
        m, l, o = self._empty_state(dv)
        kernel(*head, t0, t1, m, l, o, *tail)
        return m, l, o

    @staticmethod
    def _naive_numba(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        return (numba_view(arrays["c_kv"]), numba_view(arrays["k_pe"]), arrays["w_uk"],
                arrays["w_uv"])

    def _naive_scales(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        if self.kv_dtype.scaled:
            return arrays["c_kv_scale"], arrays["k_pe_scale"]
        none = _read_only(np.zeros((arrays["c_kv"].shape[0], 0), np.float32))
        return none, none

    def _empty_state(self, dv: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        B, H = self.q1.shape[:2]
        return (
            np.empty((B, H), self.dtype),
            np.empty((B, H), self.dtype),
            np.empty((B, H, dv), self.dtype),
        )

    def fused(self, splits: int, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """The ``numba`` strategy: fused pass with ``splits`` parallel ranges, merged."""
        kernel, head, tail, dv = self._numba_kernel(arrays)
        out = np.empty(self.q1.shape[:2] + (dv,), self.dtype)
        jit.fused(jit.fused_address(kernel, head, tail, out), head, tail, self.length, splits,
                  out)
        return self._project(out)

    def _wide(self, k1: np.ndarray, v: np.ndarray) -> bool:
        """Whether the group GEMM kernels (:mod:`kernels.attention.wide`) fit this step."""
        return wide.fits(self.q1.shape[1], k1.shape[1],
                         (self.q1.shape[2], self.q2.shape[2], v.shape[3]), self.dtype)

    def finish(self, state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Output of a single state covering every token: o / l, projected for absorbed."""
        m, l, o = state
        return self._project((o / l[..., None]).astype(self.dtype, copy=False))

    def finish_states(self, states: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        """Merge the ranges' states with :func:`jit.merge_partials`, then project."""
        m = np.stack([s[0] for s in states])
        l = np.stack([s[1] for s in states])
        o = np.stack([s[2] for s in states])
        out = np.empty(o.shape[1:], self.dtype)
        jit.merge_partials(m, l, o, out)
        return self._project(out)

    def _project(self, out: np.ndarray) -> np.ndarray:
        if self.kind != "absorbed":
            return out
        return _projected(out.astype(self.dtype, copy=False), self.w_uv, self.parallel)


def _mla_query(q: np.ndarray, nope: int, impl: str, w_uk: np.ndarray,
               parallel: bool) -> tuple[np.ndarray, np.ndarray]:
    """MLA's (q1, q2) from its rotated, scaled query ``q`` in the compute dtype: the
    latent part and the rotary part, each contiguous; absorbed, the latent part times
    W_UK ([B, H, 1, nope] @ [H, nope, r] -> [B, H, r], the weights not copied) on
    numba's pool where ``parallel`` (:func:`kernels.attention.jit.absorb`), else as a
    batched BLAS matmul in the cache dtype."""
    q_nope = np.ascontiguousarray(q[..., :nope])
    q_pe = np.ascontiguousarray(q[..., nope:])
    if impl != "absorbed":
        return q_nope, q_pe
    if parallel:
        q_lat = np.empty(q.shape[:2] + (w_uk.shape[2],), q.dtype)
        jit.absorb(q_nope, w_uk, q_lat)
        return q_lat, q_pe
    return (q_nope[:, :, None, :] @ w_uk)[:, :, 0, :], q_pe


def _projected(out: np.ndarray, w_uv: np.ndarray, parallel: bool) -> np.ndarray:
    """W_UV after attention in the latent space: [B, H, r] x [H, v, r] -> [B, H, v], on
    numba's pool where ``parallel`` (:func:`kernels.attention.jit.project`), else as a
    batched matmul."""
    if parallel:
        projected = np.empty(out.shape[:2] + (w_uv.shape[1],), out.dtype)
        jit.project(out, w_uv, projected)
        return projected
    return (out[:, :, None, :] @ w_uv.transpose(0, 2, 1))[:, :, 0, :]


# ---------------------------------------------------------------------------
# Pool strategies (threaded, multiprocess, and any executor registered later)
# ---------------------------------------------------------------------------


def _pool_task(task: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One task on a pool worker: the partial state over each of its pieces (token
    ranges of the cache arrays from the executor's handle: shared memory attached once
    per name in a process worker, the arrays themselves on a thread, shards kept on a
    Dask worker), merged into one state here."""
    problem, inner, pieces = task
    states = [problem.partial(inner, t0, t1, executors.shared_arrays(handle))
              for handle, t0, t1 in pieces if t1 > t0]
    return states[0] if len(states) == 1 else merge_states(states)


def _read_only_views(arrays: dict[str, Any]) -> dict[str, Any]:
    """Read-only views of the arrays, as the cache shows them: numba compiles a kernel
    once per argument type, and read-only is part of the type, so writable arrays (a
    worker's attached segments or Dask shards, an array a user bound into the cache)
    would compile a variant of their own instead of loading the one cached on disk."""
    return {name: _read_only(a.view()) if isinstance(a, np.ndarray) and a.flags.writeable
            else a for name, a in arrays.items()}


def merge_states(states: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """One (m, l, o) state from several over disjoint token sets (in float64, returned in
    the states' dtype): the log-sum-exp merge, without the final division."""
    dt = states[0][2].dtype
    m = np.stack([s[0] for s in states]).astype(np.float64)
    top = m.max(axis=0)
    w = np.exp(m - top)
    l = (w * np.stack([s[1] for s in states])).sum(axis=0)
    o = (w[..., None] * np.stack([s[2] for s in states])).sum(axis=0)
    return top.astype(dt), l.astype(dt), o.astype(dt)


def _run_pool(
    cache: Cache, problem: Problem, strategy: str, inner: str, workers: int, parts: int,
) -> list[tuple[np.ndarray, ...]]:
    """The tasks' partial states, ``parts`` of them (fewer than ``workers`` below
    :data:`MIN_GRAIN`) on the warm executor of ``strategy`` and ``workers``, which decides how the
    cache reaches them (:meth:`kernels.executors.Executor.share_split`): a ``shared=True``
    cache's segments travel by name, a private cache is copied to temporary segments for
    a process pool, and a Dask cluster keeps shards of it on its workers between steps."""
    problem.w_uv = None  # not needed in workers; keeps a pickled task small
    w_uv = cache.w_uv if problem.kind == "absorbed" else None
    try:
        return executors.run_split(
            executors.executor_kind(strategy), _pool_task, cache.arrays(), cache.token_axes,
            cache.length, lambda pieces: (problem, inner, pieces), workers, parts=parts,
            source=cache,
            what=f"a private attention cache ({cache.capacity} tokens x batch {cache.batch}) "
            f"for strategy {strategy}",
            hint="make the cache with shared=True (no copy is then made), or lower its "
            "capacity or batch",
        )
    finally:
        problem.w_uv = w_uv
