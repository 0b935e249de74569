"""Mandelbrot: escape counts of a rectangle of the complex plane, row bands as chunks.

Plan -> chunks -> chunk kernel -> combine, as every kernel here:

- The image is ``height`` rows of ``width`` pixels; pixel ``(i, j)`` is
  ``c = (x0 + j*dx) + (y0 + i*dy)i`` with ``dx = (x1 - x0) / width``,
  ``dy = (y1 - y0) / height`` (see :mod:`kernels.mandelbrot.reference` for the exact
  escape loop). A chunk is a band of whole rows; a task carries only
  ``(kernel, region, width, height, first row, end row, max_iter)``. Serial tasks
  return their rows; pool tasks write them into one shared-memory image
  (:func:`kernels.executors.run_shared`) and return their checksum. Rows never depend on the plan,
  so every strategy, schedule and worker count gives the same image, bit for bit.
- Chunk kernels: ``reference.render_rows`` (pure Python), ``vectorized.render_rows``
  (NumPy, masked iteration over the points still active) and ``jit.render_rows``
  (numba, ``nogil``). They repeat the same floating-point operations in the same
  order, so their counts are equal too (docs/mandelbrot.md, "Exactness").
- Schedules, for ``numba`` with ``workers > 1`` and for the pool strategies:
  ``static`` cuts the rows into one contiguous band per worker; ``dynamic`` cuts them
  into about 16 tiles per worker (at least 8 rows each) handed out as workers free up. The work
  per row varies by orders of magnitude (a row through the set costs ``max_iter`` per
  pixel, one far outside costs 1 to 3), so static bands are unequal unless the view is
  symmetric about the cut.
- Strategies: ``python`` and ``numpy`` run the bands one after another on one core;
  ``numba`` runs them over numba's thread pool (``prange``); ``threaded`` and
  ``multiprocess`` (every entry of :data:`kernels.executors.POOL_STRATEGIES`) hand the
  tasks to :mod:`kernels.executors` with the chunk kernel named by ``inner``.

Under the dynamic schedule (the default), and on one core, no task holds more than
:data:`MAX_TASK_ITERATIONS` pixel-iterations at worst (every pixel at ``max_iter``), so
the caller gets back to Python, and sees Ctrl-C, within about a quarter of a second
(docs/reliability.md). The static schedule is one band per worker whatever its size:
cutting bands into pieces run in rounds pairs unequal pieces in every round and is a
different, worse schedule (measured: the full view's mirror-image bands lost their
balance), so a static render answers Ctrl-C only when its bands finish.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels import executors, memory, registry
from kernels.mandelbrot.tasks import (  # the task layer, re-exported here
    Task,
    _batches,
    pixel_steps,
    run_task,
    run_task_into,
    run_tasks,
    run_tasks_into,
)

__all__ = [
    "DEFAULT_MAX_ITER",
    "DEFAULT_REGION",
    "DEFAULT_SCHEDULE",
    "DEFAULT_SIZES",
    "KNOWN_CHECKSUMS",
    "SCHEDULES",
    "SPEC",
    "STRATEGIES",
    "VIEWS",
    "check_case",
    "checksum",
    "cores_used",
    "effective_plan",
    "list_extra",
    "reference_image",
    "make_case",
    "plan",
    "plan_rows",
    "plan_tasks",
    "render",
    "run_task",
    "side_for",
    "unavailable_reason",
    "verify",
    "verify_cases",
    "workers_used",
]

STRATEGIES = ("python", "numpy", "numba", *executors.POOL_STRATEGIES)
SCHEDULES = ("static", "dynamic")
DEFAULT_SCHEDULE = "dynamic"
# 2**16 and 2**18 pixels: 256x256 and 512x512 images of the whole set at max_iter 256,
# 4.4e6 and 1.8e7 iterations: about 4 and 16 ms on one core with numba.
DEFAULT_SIZES = (1 << 16, 1 << 18)
DEFAULT_MAX_ITER = 256

#: Named regions ``(x0, x1, y0, y1)`` of the complex plane (``view`` option, verify).
VIEWS: dict[str, tuple[float, float, float, float]] = {
    # The classic picture: the whole set, square, symmetric about the real axis.
    "full": (-2.0, 0.5, -1.25, 1.25),
    # The upper half only: the set's bulk lies in the lower rows, so static bands differ.
    "upper": (-2.0, 0.5, 0.0, 1.25),
    # A zoom on the boundary between the main cardioid and the period-2 bulb.
    "seahorse": (-0.8, -0.7, 0.05, 0.15),
    # Inside the main cardioid: every pixel runs to max_iter.
    "inside": (-0.5, 0.1, -0.3, 0.3),
    # Right of the set (Re c > 0.25 there): every pixel escapes within a few iterations.
    "outside": (0.5, 1.5, 0.5, 1.5),
}
DEFAULT_VIEW = "full"
DEFAULT_REGION = VIEWS[DEFAULT_VIEW]

# Limits of the arguments: a side up to 2**20 pixels and an image up to 2**36 (the
# memory budget refuses far less on most machines); counts are int32.
MAX_SIDE = 1 << 20
MAX_PIXELS = 1 << 36
MAX_ITER = 1 << 24

#: The dynamic schedule's tiles: about this many per worker (a worker that finishes
#: early takes more; the last tiles even the workers out) and never fewer than
#: :data:`DYNAMIC_TILE_ROWS` rows each, so that handing a tile out (a pickle round trip
#: of ~1 ms for a process pool on a busy 2-core machine) stays small beside its work:
#: 8 rows of the 256-row default image, 32 of a 1024-row one, at 2 workers.
DYNAMIC_TILES_PER_WORKER = 16
DYNAMIC_TILE_ROWS = 8
#: The most pixel-iterations (rows x width x max_iter, the worst case) one task may
#: hold: about 1/4 s of one core (numba ~1 ns, NumPy ~20 ns, Python ~140 ns per
#: iteration on the Xeon of docs/mandelbrot.md). Tasks never hold less than one row.
MAX_TASK_ITERATIONS = {"numba": 1 << 28, "numpy": 1 << 24, "python": 1 << 21}
#: The most pixels of one NumPy task (its temporaries: 80 bytes a pixel, 20 MiB).
MAX_TASK_PIXELS = 1 << 18
#: A grain no input reaches: this label never splits (:data:`kernels.registry.NEVER_SPLIT`).
NEVER = registry.NEVER_SPLIT
#: The minimum grain: worst-case pixel-iterations (pixels x max_iter) per worker below
#: which a second worker costs more than it saves, by strategy label
#: (``registry.label``). A render runs on ``workers_used`` = min(workers, height,
#: pixels * max_iter // grain) workers (at least one): the plan of that many workers;
#: below ``grain * workers`` the pool strategies send one task per worker used, so a
#: small image pays one round trip instead of one per tile. The image does not change.
#: Each grain is twice the measured cost of going parallel (a prange launch, a pool
#: round trip) times the measured worst-case pixel-iterations per second of one worker
#: on the full view at max_iter 256: docs/mandelbrot.md ("Minimum grain") has the
#: command and the figures. Worst case, so a view that escapes at once (``outside``)
#: splits where its real work is far below the grain. A label not listed is split as
#: asked.
MIN_GRAIN: dict[str, int] = {
    "numba": 1 << 24,
    "threaded:numba": 1 << 19,
    "threaded:numpy": NEVER,
    "threaded:python": NEVER,
    "multiprocess:numba": 1 << 26,
    "multiprocess:numpy": 1 << 26,
    "multiprocess:python": 1 << 17,
    "distributed:numba": 1 << 27,
    "distributed:numpy": 1 << 24,
    "distributed:python": 1 << 20,
}

_SERIAL_STRATEGIES = ("python", "numpy")
_COUNT_BYTES = np.dtype(np.int32).itemsize

#: FLOP per escape iteration (jit.py): zr*zr, zi*zi, their sum, 2*zr, *zi, +ci,
#: zr2-zi2, +cr: 4 multiplies and 4 adds or subtracts, none fused (the exactness rule
#: forbids FMA); the compare with 4.0 is not counted (benchmarks/mandelbrot_peak.py).
FLOP_PER_ITERATION = 8

SPEC = registry.KernelSpec(
    name="mandelbrot",
    title="Mandelbrot: escape counts of an image of the complex plane",
    size_name="pixels",
    unit="pixels",
    max_size=MAX_PIXELS,
    default_sizes=DEFAULT_SIZES,
    strategies=STRATEGIES,
    serial=_SERIAL_STRATEGIES,
    # The whole set at max_iter 256 averages ~67 iterations a pixel: past these a call
    # takes over a second on one core (Python ~140 ns, NumPy ~20 ns, numba ~1 ns each).
    size_limits={"python": 1 << 16, "numpy": 1 << 20, "numba": 1 << 24},
    options=(
        registry.Option("max_iter", f"iterations before a point counts as in the set "
                        f"(default {DEFAULT_MAX_ITER})", low=1, high=MAX_ITER),
        registry.Option("schedule", "how rows are spread over workers: static (one band "
                        f"per worker) or dynamic (~{DYNAMIC_TILES_PER_WORKER} tiles per worker "
                        f"as workers free up; default {DEFAULT_SCHEDULE})", choices=SCHEDULES),
        registry.Option("view", "region of the plane: " + ", ".join(VIEWS)
                        + f" (default {DEFAULT_VIEW})", choices=tuple(VIEWS)),
    ),
    picture=lambda: _picture(),  # defined below, with render
    arithmetic=registry.Arithmetic(
        unit="FLOP", per="iteration", ops_per_unit=FLOP_PER_ITERATION,
        probe_flop_per_op=1.0, probe_dtype="float64",
        units_of=lambda size: _cases.render_iterations(size),
        explain=(
            f"*GFLOP/s* counts {FLOP_PER_ITERATION} float64 operations per escape "
            "iteration (4 multiplies, 4 adds or subtracts; the compare is not counted) "
            "over the iterations of the image (its checksum: about 67.5 a pixel for the "
            "whole set at max_iter 256). *of FMA peak* is that rate over the float64 FMA "
            "probe's at the same thread count. The kernel may not fuse a multiply and an "
            "add (every strategy must give the reference's counts bit for bit), so 50% is "
            "its ceiling; the escape test and the select of escaped lanes take issue "
            "slots too.")),
    order=40,
    workers_used=lambda size, strategy, inner, workers, **options: (
        _cases.workers_used_at(size, strategy, inner, workers, **options)),
)


# ---------------------------------------------------------------------------
# Argument checks (all run before any allocation or pool)
# ---------------------------------------------------------------------------


def check_region(region: Any) -> tuple[float, float, float, float]:
    """``region`` as 4 finite floats ``(x0, x1, y0, y1)`` with ``x0 < x1`` and ``y0 < y1``."""
    accepted = "region must be 4 finite real numbers (x0, x1, y0, y1) with x0 < x1 and y0 < y1"
    if isinstance(region, (str, bytes)) or not hasattr(region, "__len__"):
        raise TypeError(f"{accepted}, got {type(region).__name__}")
    if len(region) != 4:
        raise ValueError(f"{accepted}, got {len(region)} values")
    values = []
    for name, v in zip(("x0", "x1", "y0", "y1"), region, strict=True):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{accepted}; {name} is {type(v).__name__}")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{accepted}; {name} = {f}")
        values.append(f)
    x0, x1, y0, y1 = values
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"{accepted}, got {tuple(values)}")
    if not (math.isfinite(x1 - x0) and math.isfinite(y1 - y0)):
        raise ValueError(f"{accepted}; its width or height overflows a float: {tuple(values)}")
    return x0, x1, y0, y1


def check_schedule(schedule: Any) -> str:
    """``schedule`` as one of :data:`SCHEDULES`."""
    if not isinstance(schedule, str) or schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    return schedule


def check_workers(strategy: str, workers: Any) -> int:
    """``workers`` for ``strategy``: python and numpy run on one core and take 1 or None;
    the others an int in [1, :func:`kernels.executors.max_workers`] or None (all cores)."""
    return registry.check_workers(strategy, workers, _SERIAL_STRATEGIES)


@dataclass(frozen=True)
class _Plan:
    strategy: str
    inner: str | None
    workers: int
    schedule: str
    width: int
    height: int
    max_iter: int
    region: tuple[float, float, float, float]

    @property
    def kernel(self) -> str:
        """The chunk kernel this plan runs: python, numpy or numba."""
        return self.inner or self.strategy

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def grain(self) -> int | None:
        """:data:`MIN_GRAIN` of this plan's strategy and chunk kernel (None: not listed)."""
        if self.strategy in _SERIAL_STRATEGIES:
            return None
        return MIN_GRAIN.get(registry.label(self.strategy, self.inner))

    @property
    def workers_used(self) -> int:
        """Workers the render runs on: ``workers`` cut to one per grain of worst-case
        pixel-iterations and one per row, at least one (1 for python and numpy)."""
        if self.strategy in _SERIAL_STRATEGIES:
            return 1
        return registry.grain_workers(self.workers, self.pixels * self.max_iter, self.grain,
                                      self.height)

    @property
    def below_grain(self) -> bool:
        """True when the image is below the grain of ``workers`` workers."""
        return registry.below_grain(self.pixels * self.max_iter, self.grain, self.workers)


def _plan(
    width: Any, height: Any, max_iter: Any, region: Any, strategy: Any,
    inner: Any, workers: Any, schedule: Any,
) -> _Plan:
    width = registry.check_int("width", width, 1, MAX_SIDE)
    height = registry.check_int("height", height, 1, MAX_SIDE)
    if width * height > MAX_PIXELS:
        raise ValueError(f"width x height must be at most {MAX_PIXELS} pixels (2**36), "
                         f"got {width} x {height} = {width * height}")
    max_iter = registry.check_int("max_iter", max_iter, 1, MAX_ITER)
    region = check_region(region)
    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    schedule = check_schedule(schedule)
    workers = check_workers(strategy, workers)
    plan = _Plan(strategy, inner, workers, schedule, width, height, max_iter, region)
    memory.check(
        f"mandelbrot {width}x{height} ({registry.label(strategy, inner)}, {workers} workers)",
        bytes_needed(plan),
        shared=shared_bytes(plan),
        hint="lower width and height (the size)",
    )
    registry.require_available(sys.modules[__name__], strategy)
    return plan


def shared_bytes(plan: _Plan) -> int:
    """Bytes of the shared-memory image the pool strategies' tasks write into (0 for the
    others)."""
    return _COUNT_BYTES * plan.pixels if plan.strategy in executors.POOL_STRATEGIES else 0


def bytes_needed(plan: _Plan) -> int:
    """Bytes a render holds at its peak: the int32 image (for the pool strategies, the
    shared one the tasks write and the copy returned), and the NumPy kernel's
    temporaries of the tasks running at once."""
    total = _COUNT_BYTES * plan.pixels + shared_bytes(plan)
    if plan.kernel == "numpy":
        from kernels.mandelbrot.vectorized import BYTES_PER_PIXEL

        task_pixels = min(plan.pixels, rows_per_task(plan) * plan.width)
        concurrent = 1 if plan.strategy in _SERIAL_STRATEGIES else plan.workers
        total += BYTES_PER_PIXEL * task_pixels * concurrent
    return total


def unavailable_reason(strategy: str) -> str | None:
    """Why ``strategy`` cannot run here, or None. numba and multiprocess are hard
    dependencies, so this only says something on a broken install."""
    if strategy == "numba":
        return registry.module_available("numba")
    if strategy == "multiprocess":
        return registry.module_available("multiprocess")
    return None


# ---------------------------------------------------------------------------
# The plan: which rows each task holds
# ---------------------------------------------------------------------------

def rows_per_task(plan: _Plan) -> int:
    """The most rows one task holds: :data:`MAX_TASK_ITERATIONS` of the plan's kernel at
    worst (and :data:`MAX_TASK_PIXELS` for NumPy), at least one row."""
    rows = MAX_TASK_ITERATIONS[plan.kernel] // (plan.width * plan.max_iter)
    if plan.kernel == "numpy":
        rows = min(rows, MAX_TASK_PIXELS // plan.width)
    return max(1, rows)


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into ``parts`` contiguous ranges whose lengths differ by <= 1."""
    n = stop - start
    return [(start + k * n // parts, start + (k + 1) * n // parts) for k in range(parts)]


def tile_rows(plan: _Plan) -> int:
    """Rows per tile of the dynamic schedule: ``height / (16 * workers)``, at least
    :data:`DYNAMIC_TILE_ROWS`, at most :func:`rows_per_task`."""
    tile = max(DYNAMIC_TILE_ROWS, plan.height // (DYNAMIC_TILES_PER_WORKER * plan.workers))
    return min(tile, rows_per_task(plan))


def plan_rows(plan: _Plan) -> list[tuple[int, int]]:
    """The row ranges ``(first, end)`` of the plan's tasks, at the plan's ``workers``
    (a render runs those of :func:`effective_plan`: fewer workers below the grain).

    - ``python`` and ``numpy``, and ``numba`` at 1 worker: the fewest bands that respect
      :func:`rows_per_task` (the schedule changes nothing on one core).
    - ``static``: ``min(workers, height)`` equal contiguous bands, one per worker, however
      long each takes.
    - ``dynamic``: :func:`tile_rows` rows per tile, handed out as workers free up.
    """
    cap = rows_per_task(plan)
    one_core = plan.strategy in _SERIAL_STRATEGIES or (
        plan.strategy == "numba" and plan.workers == 1)
    if one_core:
        return _split(0, plan.height, -(-plan.height // cap))
    if plan.schedule == "dynamic":
        tile = tile_rows(plan)
        return [(r, min(r + tile, plan.height)) for r in range(0, plan.height, tile)]
    return _split(0, plan.height, min(plan.workers, plan.height))


def _tasks(plan: _Plan, ranges: list[tuple[int, int]]) -> list[Task]:
    return [(plan.kernel, plan.region, plan.width, plan.height, first, end, plan.max_iter)
            for first, end in ranges]


def effective_plan(plan: _Plan) -> _Plan:
    """The plan a render runs: ``plan`` at its :attr:`~_Plan.workers_used` workers (the
    same plan when all of them are used). :func:`plan_rows` of it gives the rows of the
    tasks that really run."""
    used = plan.workers_used
    return plan if used == plan.workers else dataclasses.replace(plan, workers=used)


def _run_numba(plan: _Plan, image: np.ndarray) -> None:
    from kernels.mandelbrot import jit

    plan = effective_plan(plan)
    x0, dx, y0, dy = pixel_steps(plan.region, plan.width, plan.height)
    ranges = plan_rows(plan)
    if plan.workers == 1:
        for first, end in ranges:
            jit.render_rows(image[first:end], x0, dx, y0, dy, first, plan.max_iter)
        return
    import numba

    with executors.limit_threads(plan.workers):
        if plan.schedule == "static":
            starts, stops = (np.array(col, dtype=np.int64) for col in zip(*ranges, strict=True))
            jit.render_static(image, x0, dx, y0, dy, starts, stops, plan.max_iter)
            return
        threads = numba.get_num_threads()
        # Calls of at most rows_per_task rows per thread, so Ctrl-C is seen between them.
        batch = max(1, rows_per_task(plan) * threads // tile_rows(plan))
        for k in range(0, len(ranges), batch):
            starts, stops = (np.array(col, dtype=np.int64)
                             for col in zip(*ranges[k:k + batch], strict=True))
            jit.render_dynamic(image, x0, dx, y0, dy, starts, stops, plan.max_iter, threads)


def _run_pool(plan: _Plan) -> np.ndarray:
    """The pool strategies: tasks write their rows into one shared-memory image, or return
    them where the executor's workers cannot reach this process's memory (a cluster)."""
    from kernels import shared_memory

    # The rows of the workers really used, on the pool of the workers asked for; below
    # the grain one task per worker used (its tiles rendered one after another).
    used = effective_plan(plan)
    ranges = plan_rows(used)
    parts = min(used.workers, len(ranges)) if plan.below_grain else None
    kind = executors.executor_kind(plan.strategy)
    if not executors.shares_host_memory(kind):
        image = np.empty((plan.height, plan.width), dtype=np.int32)
        tasks = _tasks(plan, ranges)
        if parts is None:
            results = executors.run_chunks(kind, run_task, tasks, used.workers)
        else:
            results = [rows for batch in executors.run_chunks(
                kind, run_tasks, _batches(tasks, parts), plan.workers) for rows in batch]
        for (first, end), rows in zip(ranges, results, strict=True):
            image[first:end] = rows
        return image
    segment = shared_memory.SharedArray((plan.height, plan.width), np.int32)
    try:
        image = segment.array

        def make_tasks(handle: dict[str, Any]) -> list[Any]:
            tasks = [(handle, *task) for task in _tasks(plan, ranges)]
            return tasks if parts is None else _batches(tasks, parts)

        sums = executors.run_shared(kind, run_task_into if parts is None else run_tasks_into,
                                    {"image": image}, make_tasks,
                                    plan.workers if parts is not None else used.workers,
                                    what="the mandelbrot image",
                                    hint="lower width and height (the size)")
        if parts is not None:
            sums = [total for batch in sums for total in batch]
        for (first, end), want in zip(ranges, sums, strict=True):
            # An executor that hands tasks a copy of the image (one that scatters it to
            # remote workers) would lose the rows: refuse rather than return zeros.
            got = int(image[first:end].sum(dtype=np.int64))
            if got != want:
                raise RuntimeError(
                    f"rows {first}..{end - 1} of the image did not come back from the "
                    f"{plan.strategy} executor (checksum {got}, task reported {want}): it "
                    "must let tasks write into the shared image")
        result = image.copy()
        del image
    finally:
        segment.unlink()
    return result


def _run(plan: _Plan) -> np.ndarray:
    if plan.strategy in executors.POOL_STRATEGIES:
        return _run_pool(plan)
    image = np.empty((plan.height, plan.width), dtype=np.int32)
    if plan.strategy == "numba":
        _run_numba(plan, image)
        return image
    ranges = plan_rows(plan)
    results = executors.run_chunks("serial", run_task, _tasks(plan, ranges), plan.workers)
    for (first, end), rows in zip(ranges, results, strict=True):
        image[first:end] = rows
    return image


# ---------------------------------------------------------------------------
# Public entry
# ---------------------------------------------------------------------------


def render(
    width: int,
    height: int,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    region: tuple[float, float, float, float] = DEFAULT_REGION,
    strategy: str = "numba",
    workers: int | None = None,
    schedule: str = DEFAULT_SCHEDULE,
    inner: str | None = None,
) -> np.ndarray:
    """Escape counts of a ``width`` x ``height`` image of ``region = (x0, x1, y0, y1)``.

    Returns an int32 array of shape ``(height, width)``: row ``i``, column ``j`` holds
    the iterations of ``z = z*z + c`` from ``z = 0`` before ``|z|^2 > 4``, ``max_iter``
    when it never escapes, for ``c = (x0 + j*dx) + (y0 + i*dy)i``, ``dx = (x1-x0)/width``,
    ``dy = (y1-y0)/height`` (row 0 is ``y0``: the image is upside down as a picture).

    ``width`` and ``height`` are ints in [1, 2**20] (at most 2**36 pixels); ``max_iter``
    an int in [1, 2**24]; ``region`` 4 finite numbers with ``x0 < x1`` and ``y0 < y1``.
    ``strategy`` is one of :data:`STRATEGIES`; ``inner`` (python, numpy or numba,
    default numba) picks the chunk kernel of the pool strategies and is refused
    elsewhere. ``workers``: cores (None: all; python and numpy take only 1 or None).
    ``schedule`` (static or dynamic) says how rows are spread over workers; it changes
    the time, never the counts. Every argument, and the memory the call needs, is
    checked before anything is allocated or any pool starts.
    """
    plan = _plan(width, height, max_iter, region, strategy, inner, workers, schedule)
    return _run(plan)


def plan(
    width: int,
    height: int,
    *,
    max_iter: int = DEFAULT_MAX_ITER,
    region: tuple[float, float, float, float] = DEFAULT_REGION,
    strategy: str = "numba",
    workers: int | None = None,
    schedule: str = DEFAULT_SCHEDULE,
    inner: str | None = None,
) -> _Plan:
    """The checked plan :func:`render` would run for these arguments (same checks, same
    errors); :func:`plan_rows` and :func:`plan_tasks` show its bands. For benchmarks
    that time one band alone (timing lives there, not here)."""
    return _plan(width, height, max_iter, region, strategy, inner, workers, schedule)


def workers_used(width: int, height: int, **options: Any) -> int:
    """Workers :func:`render` runs on for these arguments (the keywords of :func:`plan`,
    same checks): fewer than ``workers`` below :data:`MIN_GRAIN` worst-case
    pixel-iterations per worker or with fewer rows than workers; 1 for python and numpy."""
    return plan(width, height, **options).workers_used


def plan_tasks(plan: _Plan) -> list[Task]:
    """The tasks of :func:`plan_rows`; ``run_task(task)`` renders one. For the ``numba``
    strategy these are the bands or tiles its ``prange`` calls cover, as tasks of the
    ``numba`` chunk kernel."""
    return _tasks(plan, plan_rows(plan))


def _picture() -> np.ndarray:
    """The default view at 384 x 384 (numba, one worker, ~0.05 s): the report's picture."""
    return render(384, 384, strategy="numba", workers=1)


def checksum(counts: np.ndarray) -> int:
    """The total iteration count of an image: what benchmarks and ``verify`` compare."""
    return int(counts.sum(dtype=np.int64))


# The harness hooks live in their own module; imported last, they use the names above.
from kernels.mandelbrot import cases as _cases  # noqa: E402

_CASE_OPTIONS = _cases._CASE_OPTIONS
KNOWN_CHECKSUMS = _cases.KNOWN_CHECKSUMS
check_case = _cases.check_case
cores_used = _cases.cores_used
list_extra = _cases.list_extra
make_case = _cases.make_case
reference_image = _cases.reference_image
side_for = _cases.side_for
verify = _cases.verify
verify_cases = _cases.verify_cases
