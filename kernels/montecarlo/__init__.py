"""Monte Carlo pi: throw points into the unit square, count those in the quarter circle.

Plan -> chunks -> chunk kernel -> combine, as every kernel here:

- ``samples`` is cut into chunks of ``chunk_size`` samples (default
  :data:`DEFAULT_CHUNK_SIZE`; the last chunk is shorter). The chunk size never depends
  on ``workers`` or on the executor, and chunk ``i`` draws from its own stream keyed by
  ``(seed, i)``, so for a given chunk kernel the hit count is the same at every worker
  count and on every executor.
- Chunk kernels: ``reference.chunk_hits`` (pure Python, MT19937),
  ``vectorized.chunk_hits`` (NumPy, PCG64) and ``jit.chunk_hits`` (numba, SplitMix64
  counter-based). The three generators differ, so their hit counts differ; each agrees
  with itself everywhere.
- Strategies: ``python`` and ``numpy`` run the chunks one after another; ``numba``
  runs them over numba's own thread pool (``prange``); ``threaded`` and
  ``multiprocess`` hand runs of whole chunks to :mod:`kernels.executors` with the
  chunk kernel named by ``inner``.

See docs/montecarlo.md for the generators, their periods and why streams do not overlap.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from kernels import executors, registry

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_SIZES",
    "STRATEGIES",
    "PiEstimate",
    "check_case",
    "estimate_pi",
    "make_case",
    "unavailable_reason",
    "serial_hits",
    "verify",
    "verify_cases",
    "workers_used",
]

STRATEGIES = ("python", "numpy", "numba", *executors.POOL_STRATEGIES)
DEFAULT_SIZES = (10**6, 10**7)

# 2**20 samples: about 1 ms of numba work and 4 ms of NumPy work per chunk, so the
# per-chunk set-up (a SeedSequence and a PCG64, a few microseconds) is lost in the
# noise, while 10**9 samples still make 954 chunks to spread over the cores.
DEFAULT_CHUNK_SIZE = 1 << 20
# The numba generator gives chunk i the draws [i * 2**32, i * 2**32 + chunk_size):
# these limits keep every chunk's draws disjoint (see jit.py).
MAX_CHUNK_SIZE = 1 << 32
MAX_CHUNKS = 1 << 32
MAX_SAMPLES = 1 << 62
MAX_SEED = (1 << 64) - 1
# Tasks per worker for the thread and process pools: enough to even out a slow worker,
# few enough that the per-task cost (a pickle round trip for processes) stays small.
TASKS_PER_WORKER = 8
# ...and more tasks when needed so that none holds more than this many samples: about a
# quarter of a second of one core's work with each chunk kernel (numba ~3 ms, NumPy ~8 ms,
# Python ~260 ms per 2**20 samples on the Xeon of docs/montecarlo.md). A running task
# cannot be interrupted (compiled code, or a pool thread), so this bounds how long Ctrl-C
# waits; the ``numba`` strategy returns to Python after this many samples per worker.
# A task is never less than one chunk, so a chunk_size past these bounds sets the wait.
MAX_TASK_SAMPLES = {"numba": 1 << 26, "numpy": 1 << 25, "python": 1 << 20}

#: A grain no input reaches: this label never splits (:data:`kernels.registry.NEVER_SPLIT`).
NEVER = registry.NEVER_SPLIT
#: The minimum grain: samples per worker below which a second worker costs more than it
#: saves, by strategy label (``registry.label``). A call runs on ``workers_used`` =
#: min(workers, chunks, samples // grain) workers (at least one); below ``grain *
#: workers`` the pool strategies send one task per worker used (a round trip each, not
#: TASKS_PER_WORKER), and one worker of the ``numba`` strategy runs without numba's
#: thread pool. Chunks are keyed by index, so the hits do not change. Each grain is
#: twice the measured cost of going parallel (a prange launch, a pool round trip) times
#: the measured samples per second of one worker: docs/montecarlo.md ("Minimum grain")
#: has the command and the figures. A label not listed is split as asked.
MIN_GRAIN: dict[str, int] = {
    "numba": 1 << 22,
    "threaded:numba": 1 << 19,
    "threaded:numpy": 1 << 20,
    "threaded:python": NEVER,
    "multiprocess:numba": 1 << 23,
    "multiprocess:numpy": 1 << 20,
    "multiprocess:python": 1 << 16,
    "distributed:numba": 1 << 25,
    "distributed:numpy": 1 << 23,
    "distributed:python": 1 << 18,
}

_SERIAL_STRATEGIES = ("python", "numpy")

#: 64-bit integer operations per sample (jit.chunk_hits): the counter z + j*GAMMA (2),
#: SplitMix64's mix64 (3 shifts, 3 xors, 2 multiplies: 8), then x = r & mask,
#: y = r >> 32, x*x, y*y, ~(x*x), the compare and the sum of hits (7).
OPS_PER_SAMPLE = 17

SPEC = registry.KernelSpec(
    name="montecarlo",
    title="Monte Carlo pi: points in the quarter circle",
    size_name="samples",
    unit="samples",
    max_size=MAX_SAMPLES,
    default_sizes=DEFAULT_SIZES,
    strategies=STRATEGIES,
    serial=_SERIAL_STRATEGIES,
    # Past these a benchmark point takes minutes (asv repeats each one): the Python
    # chunk kernel draws ~4e6 samples/s, NumPy ~1.3e8, numba ~3e8 per core.
    size_limits={"python": 10**6, "numpy": 10**8, "numba": 10**9},
    per_item=True,
    options=(
        registry.Option("seed", "random seed; the same seed gives the same hits at any "
                        "worker count", low=0, high=MAX_SEED),
        registry.Option("chunk_size", "samples per chunk, each drawn from its own stream "
                        f"(default {DEFAULT_CHUNK_SIZE})", low=1, high=MAX_CHUNK_SIZE),
    ),
    arithmetic=registry.Arithmetic(
        unit="int64 op", per="sample", ops_per_unit=OPS_PER_SAMPLE, probe_flop_per_op=2.0,
        probe_dtype="float64", units_of=registry.size_units,
        explain=(
            f"*Gint64 op/s* counts {OPS_PER_SAMPLE} 64-bit integer operations per sample "
            "(the counter's multiply and add, SplitMix64's 3 shifts, 3 xors and 2 "
            "multiplies, then the mask, shift, 2 squares, not, compare and sum of the hit "
            "test); there is no floating-point arithmetic. *of FMA peak* sets these "
            "against the float64 FMA probe's lane slots (one 64-bit operation for one "
            "float64 FMA, 2 FLOP): a ratio of issue rates, optimistic for the 4 "
            "multiplies, which AVX-512 issues as 3 micro-ops each.")),
    order=20,
    workers_used=lambda size, strategy, inner, workers, chunk_size=DEFAULT_CHUNK_SIZE, **_: (
        workers_used(size, strategy=strategy, workers=workers, inner=inner,
                     chunk_size=chunk_size)),
)


@dataclass(frozen=True)
class PiEstimate:
    """An estimate of pi from ``samples`` points, ``hits`` of them in the quarter circle.

    ``pi`` is ``4 * hits / samples``; ``stderr`` its standard error,
    ``4 * sqrt(p * (1 - p) / samples)`` with ``p = hits / samples``; ``generator``
    names the random generator that drew the points.
    """

    pi: float
    hits: int
    samples: int
    stderr: float
    generator: str

    @classmethod
    def from_hits(cls, hits: int, samples: int, generator: str) -> PiEstimate:
        """Build the estimate and its standard error from a hit count."""
        p = hits / samples
        return cls(
            pi=4.0 * p,
            hits=int(hits),
            samples=int(samples),
            stderr=4.0 * math.sqrt(p * (1.0 - p) / samples),
            generator=generator,
        )

    @property
    def error_in_stderr(self) -> float:
        """``(pi - math.pi) / stderr``: how many standard errors off; NaN when stderr is 0."""
        if self.stderr == 0.0:
            return math.nan
        return (self.pi - math.pi) / self.stderr


# ---------------------------------------------------------------------------
# Argument checks (all run before any pool starts)
# ---------------------------------------------------------------------------


def check_samples(samples: Any) -> int:
    """``samples`` as an int in [1, 2**62]; TypeError/ValueError naming ``samples``."""
    return registry.check_int("samples", samples, 1, MAX_SAMPLES)


def check_seed(seed: Any) -> int:
    """``seed`` as an int in [0, 2**64 - 1]; TypeError/ValueError naming ``seed``."""
    return registry.check_int("seed", seed, 0, MAX_SEED)


def check_workers(strategy: str, workers: Any) -> int:
    """``workers`` for ``strategy``: python and numpy run on one core, so they take 1 or
    None (as the sieve's single-core strategies do); the others an int in
    [1, :func:`kernels.executors.max_workers`] or None for all cores."""
    return registry.check_workers(strategy, workers, _SERIAL_STRATEGIES)


def check_chunk_size(chunk_size: Any, samples: int) -> int:
    """``chunk_size`` in [1, 2**32], and few enough chunks that streams stay disjoint."""
    chunk_size = registry.check_int("chunk_size", chunk_size, 1, MAX_CHUNK_SIZE)
    if _n_chunks(samples, chunk_size) > MAX_CHUNKS:
        raise ValueError(
            f"chunk_size={chunk_size} cuts samples={samples} into more than 2**32 chunks; "
            f"use chunk_size >= {-(-samples // MAX_CHUNKS)}"
        )
    return chunk_size


def _n_chunks(samples: int, chunk_size: int) -> int:
    return -(-samples // chunk_size)


@dataclass(frozen=True)
class _Plan:
    strategy: str
    inner: str | None
    workers: int
    seed: int
    samples: int
    chunk_size: int

    @property
    def kernel(self) -> str:
        """The chunk kernel this plan runs: python, numpy or numba."""
        return self.inner or self.strategy

    @property
    def n_chunks(self) -> int:
        return _n_chunks(self.samples, self.chunk_size)

    @property
    def grain(self) -> int | None:
        """:data:`MIN_GRAIN` of this plan's strategy and chunk kernel (None: not listed)."""
        if self.strategy in _SERIAL_STRATEGIES:
            return None
        return MIN_GRAIN.get(registry.label(self.strategy, self.inner))

    @property
    def workers_used(self) -> int:
        """Workers the plan runs on: ``workers`` cut to one per grain of samples and one
        per chunk, at least one (1 for python and numpy)."""
        if self.strategy in _SERIAL_STRATEGIES:
            return 1
        return registry.grain_workers(self.workers, self.samples, self.grain, self.n_chunks)

    @property
    def below_grain(self) -> bool:
        """True when the samples are below the grain of ``workers`` workers."""
        return registry.below_grain(self.samples, self.grain, self.workers)


def _plan(
    samples: Any,
    strategy: str,
    workers: int | None,
    seed: Any,
    inner: str | None,
    chunk_size: Any,
) -> _Plan:
    samples = check_samples(samples)
    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    workers = check_workers(strategy, workers)
    seed = check_seed(seed)
    chunk_size = check_chunk_size(chunk_size, samples)
    registry.require_available(sys.modules[__name__], strategy)
    return _Plan(strategy, inner, workers, seed, samples, chunk_size)


def unavailable_reason(strategy: str) -> str | None:
    """Why ``strategy`` cannot run here, or None. numba and multiprocess are hard
    dependencies, so this only says something on a broken install."""
    if strategy == "numba":
        return registry.module_available("numba")
    if strategy == "multiprocess":
        return registry.module_available("multiprocess")
    return None


# ---------------------------------------------------------------------------
# Chunk tasks
# ---------------------------------------------------------------------------

# (kernel, seed, first chunk, number of chunks, chunk_size, samples)
Task = tuple[str, int, int, int, int, int]


def generator_name(kernel: str) -> str:
    """The generator a chunk kernel (python, numpy, numba) draws from."""
    if kernel == "python":
        from kernels.montecarlo import reference

        return reference.GENERATOR
    if kernel == "numpy":
        from kernels.montecarlo import vectorized

        return vectorized.GENERATOR
    from kernels.montecarlo import jit

    return jit.GENERATOR


def run_task(task: Task) -> int:
    """Hits of a run of whole chunks with one chunk kernel (the unit the pools run).

    Module-level so that process-pool workers find it by import. Chunk ``i`` is always
    keyed by ``(seed, i)``, so grouping chunks into tasks does not change the sum.
    """
    kernel, seed, first, count, chunk_size, samples = task
    if kernel == "numba":
        import numpy as np

        from kernels.montecarlo import jit

        key = jit.seed_key(np.uint64(seed))
        return int(jit.range_hits(np.uint64(key), first, count, chunk_size, samples))
    if kernel == "numpy":
        from kernels.montecarlo.vectorized import chunk_hits
    else:
        from kernels.montecarlo.reference import chunk_hits
    hits = 0
    for i in range(first, first + count):
        start = i * chunk_size
        hits += chunk_hits(seed, i, min(chunk_size, samples - start))
    return hits


def chunks_per_task(plan: _Plan) -> int:
    """The most chunks one task takes: MAX_TASK_SAMPLES of the plan's kernel, at least one."""
    return max(1, MAX_TASK_SAMPLES[plan.kernel] // plan.chunk_size)


def make_tasks(plan: _Plan, n_tasks: int) -> list[Task]:
    """Cut the plan's chunks into ``n_tasks`` (at most one per chunk) contiguous runs, or
    more if a run would hold more than :func:`chunks_per_task` chunks."""
    n_chunks = plan.n_chunks
    n_tasks = max(1, min(max(n_tasks, -(-n_chunks // chunks_per_task(plan))), n_chunks))
    tasks = []
    for t in range(n_tasks):
        first = t * n_chunks // n_tasks
        last = (t + 1) * n_chunks // n_tasks
        tasks.append((plan.kernel, plan.seed, first, last - first, plan.chunk_size, plan.samples))
    return tasks


def run_tasks(tasks: list[Task]) -> int:
    """Hits of several tasks run one after another: the one pool task per worker used
    below the grain (module level, so that process-pool workers find it)."""
    return sum(run_task(task) for task in tasks)


def _batches(tasks: list[Task], parts: int) -> list[list[Task]]:
    """``tasks`` cut into ``parts`` contiguous runs (one per worker used)."""
    return [tasks[k * len(tasks) // parts : (k + 1) * len(tasks) // parts] for k in range(parts)]


def _run(plan: _Plan) -> int:
    used = plan.workers_used
    if plan.strategy == "numba":
        import numpy as np

        from kernels.montecarlo import jit

        key = np.uint64(jit.seed_key(np.uint64(plan.seed)))
        # Batches of chunks_per_task chunks per worker, so that Ctrl-C is seen between them.
        batch = chunks_per_task(plan) * used
        hits = 0
        if used == 1:
            # One worker: the serial kernel, no thread pool to wake or cap.
            with executors.interrupt_guard() as check:
                for first in range(0, plan.n_chunks, batch):
                    count = min(batch, plan.n_chunks - first)
                    hits += int(jit.range_hits(key, first, count, plan.chunk_size, plan.samples))
                    check()
            return hits
        with executors.limit_threads(used), executors.interrupt_guard() as check:
            for first in range(0, plan.n_chunks, batch):
                count = min(batch, plan.n_chunks - first)
                hits += int(jit.parallel_hits(key, first, count, plan.chunk_size, plan.samples))
                check()
        return hits
    if plan.strategy in _SERIAL_STRATEGIES:
        return sum(executors.run_chunks("serial", run_task, make_tasks(plan, 1), plan.workers))
    tasks = make_tasks(plan, TASKS_PER_WORKER * used)
    kind = executors.executor_kind(plan.strategy)
    if plan.below_grain:
        batches = _batches(tasks, min(used, len(tasks)))
        return sum(executors.run_chunks(kind, run_tasks, batches, plan.workers))
    return sum(executors.run_chunks(kind, run_task, tasks, used))


# ---------------------------------------------------------------------------
# Public entry
# ---------------------------------------------------------------------------


def estimate_pi(
    samples: int,
    *,
    strategy: str = "numba",
    workers: int | None = None,
    seed: int = 0,
    inner: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> PiEstimate:
    """Estimate pi from ``samples`` uniform points in the unit square.

    ``strategy`` is one of :data:`STRATEGIES`; ``inner`` (python, numpy or numba,
    default numba) picks the chunk kernel of ``threaded`` and ``multiprocess``.
    ``samples`` is an int in [1, 2**62]. ``workers`` is the number of cores (None: all;
    at most 4 x the cores; python and numpy run on one core and take only 1 or None).
    ``seed`` (0 <= seed < 2**64)
    and ``chunk_size`` (samples per chunk) fix the result: for a given chunk kernel
    the same (samples, seed, chunk_size) give the same hits with any ``workers`` and
    any executor. Every argument is checked before any work or pool starts.
    """
    plan = _plan(samples, strategy, workers, seed, inner, chunk_size)
    hits = _run(plan)
    return PiEstimate.from_hits(hits, plan.samples, generator_name(plan.kernel))


# ---------------------------------------------------------------------------
# Harness hooks: make_case, verify
# ---------------------------------------------------------------------------

_CASE_OPTIONS = ("chunk_size",)


def cores_used(strategy: str, workers: int) -> int:
    """Cores a strategy is given: ``workers`` for the parallel ones, 1 for python/numpy.
    What a call really runs on can be fewer: :func:`workers_used`."""
    return 1 if strategy in _SERIAL_STRATEGIES else workers


def workers_used(
    samples: int,
    *,
    strategy: str = "numba",
    workers: int | None = None,
    inner: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Workers ``estimate_pi`` runs on for these arguments (same checks): fewer than
    ``workers`` below :data:`MIN_GRAIN` samples per worker or with fewer chunks than
    workers; 1 for python and numpy."""
    return _plan(samples, strategy, workers, 0, inner, chunk_size).workers_used


def check_case(
    size: int,
    *,
    strategy: str,
    inner: str | None = None,
    workers: int = 1,
    seed: int = 0,
    **options: Any,
) -> None:
    """Raise what :func:`make_case` would raise for these arguments (the harness checks a
    whole grid this way before timing its first point)."""
    _case_plan(size, strategy, inner, workers, seed, options)


def _case_plan(
    size: Any, strategy: str, inner: str | None, workers: Any, seed: Any, options: dict[str, Any]
) -> _Plan:
    unknown = sorted(set(options) - set(_CASE_OPTIONS))
    if unknown:
        raise ValueError(
            f"montecarlo takes no option {', '.join(unknown)}; options: {', '.join(_CASE_OPTIONS)}"
        )
    chunk_size = options.get("chunk_size", DEFAULT_CHUNK_SIZE)
    return _plan(size, strategy, workers, seed, inner, chunk_size)


def make_case(
    size: int,
    *,
    strategy: str,
    inner: str | None = None,
    workers: int = 1,
    seed: int = 0,
    **options: Any,
) -> registry.Case:
    """A prepared ``estimate_pi(size, ...)`` for the harness; nothing runs until ``run()``.

    ``options`` may hold ``chunk_size``; anything else is refused (ValueError).
    ``describe`` adds the estimate, its standard error, the error in standard errors,
    the hits, and the time per sample in nanoseconds (total, and per core used).
    """
    plan = _case_plan(size, strategy, inner, workers, seed, options)

    def run() -> PiEstimate:
        return estimate_pi(
            plan.samples,
            strategy=plan.strategy,
            workers=plan.workers,
            seed=plan.seed,
            inner=plan.inner,
            chunk_size=plan.chunk_size,
        )

    def describe(result: PiEstimate, seconds: float) -> dict[str, Any]:
        ns_per_sample = seconds / plan.samples * 1e9
        return {
            "pi": result.pi,
            "stderr": result.stderr,
            "error_in_stderr": result.error_in_stderr,
            "hits": result.hits,
            "ns_per_sample": ns_per_sample,
            "ns_per_sample_per_core": ns_per_sample * plan.workers_used,
        }

    # workers_used: the workers that really ran (fewer than asked below MIN_GRAIN).
    fields = {"seed": plan.seed, "workers_used": plan.workers_used}
    return registry.Case(run=run, describe=describe, fields=fields)


# The checks against references live in their own module (re-exported here).
from kernels.montecarlo.checks import serial_hits, verify, verify_cases  # noqa: E402
