"""asv benchmarks for Mandelbrot: strategy x schedule x size x workers, warm and cold apart.

- ``TimeRender.time_render``: warm steady state of ``render`` on the default view (the
  whole set, max_iter 256) at ``size`` pixels (a square of side ``isqrt(size)``).
  ``setup`` renders the point once untimed (numba compilation or its cache load, the
  pool's start, first touch) and checks its checksum, so a wrong image is never timed.
- ``ScheduleSpeedup.track_dynamic_over_static``: static time / dynamic time at 2
  workers on 2**20 pixels, the calls paired in alternation in one process (drift cancels).
- The race (``_race``, the ``setup_cache`` of the two ratio classes below): for each
  strategy, a process of its own renders with numpy on 1 worker and the strategy at 1
  and 2 workers under each schedule at every size of the grid, one sample of each per
  round, 12 rounds (:func:`race_group`), so that every ratio of a table row comes from
  calls taken in the same rounds:
  - ``VersusNumpy.track_speedup_over_numpy``: numpy's time on 1 worker over each
    strategy's: the report's "speedup vs numpy@1", with its interval;
  - ``Scaling.track_speedup_2_workers``: 1 worker / 2 workers (parallel efficiency).
- ``StaticImbalance.track_static_imbalance``: the static schedule's bands, each timed
  alone on one core: the slowest band's time over the mean (1.0 is a perfect split;
  the static schedule's wall time at k workers is at least that many times its ideal).
- ``ColdStart.timeraw_*``: a fresh interpreter imports kernels and renders a small image:
  import + JIT (from numba's on-disk cache, or compiled from scratch) + pool start.
- ``PeakMemory.peakmem_*``: resident set of the process rendering one image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from kernels import mandelbrot, registry

from .common import (
    WORKERS,
    ColdStartBase,
    Paired,
    RaceRatio,
    WarmTime,
    race_groups,
    race_members,
    race_point,
    skip,
    skip_unless_raced,
)

LABELS = [registry.label(s, i) for s, i in registry.variants("mandelbrot")]
SCHEDULES = list(mandelbrot.SCHEDULES)
SIZES = [1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22]
SPEC = mandelbrot.SPEC
MAX_ITER = mandelbrot.DEFAULT_MAX_ITER
VIEW = "full"


def _kwargs(label: str, workers: int, schedule: str = mandelbrot.DEFAULT_SCHEDULE) -> dict:
    strategy, inner = registry.parse_label(label)
    return {"strategy": strategy, "inner": inner, "workers": workers, "schedule": schedule,
            "max_iter": MAX_ITER, "region": mandelbrot.VIEWS[VIEW]}


def skip_reason(label: str, schedule: str, size: int, workers: int) -> str | None:
    """Why a point of :class:`TimeRender` is not timed, or None: the suites' shared rule
    (:func:`common.skip_unless_raced`: availability, the spec's size limits, one-core
    strategies at one worker), and one schedule only where the plan is the same under both.
    """
    try:
        strategy, _ = skip_unless_raced("mandelbrot", label, size, workers)
    except NotImplementedError as exc:
        return str(exc)
    one_core = strategy in SPEC.serial or (strategy == "numba" and workers == 1)
    if one_core and schedule != mandelbrot.DEFAULT_SCHEDULE:
        return f"{label} on one core runs the same plan under every schedule"
    return None


def expected_checksum(side: int) -> int:
    """The checksum of the default view at ``side``: the kernel's table, else the serial
    numba kernel's (checked against the reference by the tests)."""
    known = mandelbrot.KNOWN_CHECKSUMS.get((side, MAX_ITER, VIEW))
    if known is not None:
        return known
    counts = mandelbrot.render(side, side, max_iter=MAX_ITER, region=mandelbrot.VIEWS[VIEW],
                               strategy="numba", workers=1)
    return mandelbrot.checksum(counts)


def _render_checked(side: int, kwargs: dict) -> None:
    """Render once (JIT, pool start, first touch) and refuse to time a wrong image."""
    got = mandelbrot.checksum(mandelbrot.render(side, side, **kwargs))
    want = expected_checksum(side)
    if got != want:
        raise AssertionError(f"mandelbrot {kwargs} at {side}x{side}: checksum {got}, "
                             f"expected {want}")


class TimeRender(WarmTime):
    """Warm time of one ``render`` of the whole set (seconds)."""

    params = (LABELS, SCHEDULES, SIZES, WORKERS)
    param_names = ["strategy", "schedule", "size", "workers"]
    # The regression gate's points (kernelrace compare --run): calls of 15-250 ms
    # (python ~0.2 s at 128x128, numpy ~85 ms at 256x256, numba ~15 ms at 512x512).
    gate_params = [(["python"], ["dynamic"], [1 << 14], [1]),
                   (["numpy"], ["dynamic"], [1 << 16], [1]),
                   (["numba", "threaded:numba", "multiprocess:numba"], ["dynamic"], [1 << 18],
                    WORKERS),
                   (["numba", "threaded:numba"], ["static"], [1 << 18], [2])]

    def skip_reason(self, label: str, schedule: str, size: int, workers: int) -> str | None:
        return skip_reason(label, schedule, size, workers)

    def setup(self, label: str, schedule: str, size: int, workers: int) -> None:
        reason = skip_reason(label, schedule, size, workers)
        if reason:
            skip(reason)
        self.side = mandelbrot.side_for(size)
        self.kwargs = _kwargs(label, workers, schedule)
        _render_checked(self.side, self.kwargs)

    def time_render(self, label: str, schedule: str, size: int, workers: int) -> None:
        mandelbrot.render(self.side, self.side, **self.kwargs)


class ScheduleSpeedup(Paired):
    """Static time / dynamic time at 2 workers on 2**20 pixels (x), in alternation.

    Above 1: dynamic is faster. On the symmetric full view two static bands are mirror
    images and the ratio is near 1; on the upper half the set's bulk falls in one band.
    """

    params = (["numba", "threaded:numba", "multiprocess:numba"], ["full", "upper"])
    param_names = ["strategy", "view"]
    SIDE = 1024

    def setup(self, label: str, view: str) -> None:
        self.pair = []
        for schedule in ("static", "dynamic"):
            kwargs = dict(_kwargs(label, 2, schedule), region=mandelbrot.VIEWS[view])
            mandelbrot.render(self.SIDE, self.SIDE, **kwargs)  # JIT, pool start
            self.pair.append(lambda kw=kwargs: mandelbrot.render(self.SIDE, self.SIDE, **kw))

    def track_dynamic_over_static(self, label: str, view: str) -> dict:
        return self.ratio()


def race_group(label: str) -> dict:
    """One strategy's race (:func:`benchmarks.common.race_groups` runs it in a process
    of its own): at each size of the grid, under the default schedule, ``numpy`` on 1
    worker and the strategy at 1 and 2 workers, each image checked once, then timed in
    rounds (:func:`benchmarks.common.race`), with the strategy under the other
    schedules (static) at 1 and 2 workers in the same rounds."""
    def make(name: str, schedule: str, size: int, workers: int) -> Callable[[], object]:
        reason = skip_reason(name, schedule, size, workers)
        if reason:
            skip(reason)
        side, kwargs = mandelbrot.side_for(size), _kwargs(name, workers, schedule)
        _render_checked(side, kwargs)
        return lambda: mandelbrot.render(side, side, **kwargs)

    raced: dict = {"times": {}, "failed": {}}
    for size in SIZES:
        keys = [(name, mandelbrot.DEFAULT_SCHEDULE, size, w)
                for name, w in race_members(label)]
        # The other schedules' rows of the strategy (numpy's on 1 worker is the same
        # plan under every schedule: the default's stands for them).
        keys += [(label, schedule, size, w) for schedule in SCHEDULES
                 if schedule != mandelbrot.DEFAULT_SCHEDULE for w in WORKERS]
        race_point(keys, make, raced, needs=[k for k in keys if k[0] == label])
    return raced


def _race(self: object) -> dict:
    """The ``setup_cache`` of :class:`VersusNumpy` and :class:`Scaling` (asv runs it once
    for both): every strategy's :func:`race_group` but numpy's (one core only: it has no
    ratio of its own)."""
    return race_groups(__name__, [label for label in LABELS if label != "numpy"])


_race.timeout = 3600  # every group's process, one after another


class VersusNumpy(RaceRatio):
    """How many times faster than ``numpy`` on 1 worker each strategy renders (x), under
    each schedule, the two timed in the same rounds of the suite's race (median of
    12 per-round ratios and its interval): the report's "speedup vs numpy@1", where
    ``TimeRender`` divides two medians timed minutes apart. Every image is checked first.
    """

    params = ([label for label in LABELS if label != "numpy"], SCHEDULES, SIZES, WORKERS)
    param_names = ["strategy", "schedule", "size", "workers"]
    setup_cache = _race

    def sides(self, label: str, schedule: str, size: int, workers: int) -> tuple:
        return (label, ("numpy", mandelbrot.DEFAULT_SCHEDULE, size, 1),
                (label, schedule, size, workers))

    def track_speedup_over_numpy(self, raced: dict, label: str, schedule: str, size: int,
                                 workers: int) -> dict:
        return self.ratio()


class Scaling(RaceRatio):
    """Speed-up of 2 workers over 1 (x) under each schedule, both timed in the
    same rounds of the race (``TimeRender`` times them minutes apart). Parallel
    efficiency = this / the workers that ran.
    """

    params = ([label for label in LABELS if label not in SPEC.serial], SCHEDULES, SIZES)
    param_names = ["strategy", "schedule", "size"]
    setup_cache = _race

    def sides(self, label: str, schedule: str, size: int) -> tuple:
        return label, (label, schedule, size, 1), (label, schedule, size, 2)

    def track_speedup_2_workers(self, raced: dict, label: str, schedule: str,
                                size: int) -> dict:
        return self.ratio()


class StaticImbalance:
    """Slowest static band over the mean band (x), each band timed alone on one core.

    The bands are the kernel's own plan (``mandelbrot.plan_tasks``) at 2**18 pixels;
    each is rendered by the numba chunk kernel in this thread, best of 3.
    """

    params = (["full", "upper"], [2, 4])
    param_names = ["view", "workers"]
    unit = "x"
    timeout = 120
    SIDE = 512
    REPEAT = 3

    def setup(self, view: str, workers: int) -> None:
        plan = mandelbrot.plan(self.SIDE, self.SIDE, max_iter=MAX_ITER,
                               region=mandelbrot.VIEWS[view], strategy="threaded",
                               inner="numba", workers=workers, schedule="static")
        self.bands = mandelbrot.plan_tasks(plan)
        mandelbrot.run_task(self.bands[0])  # JIT

    def band_seconds(self) -> list[float]:
        """Best-of-``REPEAT`` time of each band's task alone (seconds)."""
        times = []
        for task in self.bands:
            best = float("inf")
            for _ in range(self.REPEAT):
                t0 = time.perf_counter()
                mandelbrot.run_task(task)
                best = min(best, time.perf_counter() - t0)
            times.append(best)
        return times

    def track_static_imbalance(self, view: str, workers: int) -> float:
        times = self.band_seconds()
        return max(times) / statistics.fmean(times)


class BandSeconds:
    """Seconds of one static band's work, timed alone on one core (best of 3): the report
    draws one bar per band (the ``band`` parameter), and the run lasts as long as the
    slowest. Bands as in :class:`StaticImbalance`; ``band >= workers`` is skipped."""

    params = (["full", "upper"], [2, 4], [0, 1, 2, 3])
    param_names = ["view", "workers", "band"]
    unit = "seconds"
    timeout = 120
    SIDE = StaticImbalance.SIDE
    REPEAT = StaticImbalance.REPEAT

    def setup(self, view: str, workers: int, band: int) -> None:
        if band >= workers:
            skip(f"{workers} workers make bands 0..{workers - 1}")
        plan = mandelbrot.plan(self.SIDE, self.SIDE, max_iter=MAX_ITER,
                               region=mandelbrot.VIEWS[view], strategy="threaded",
                               inner="numba", workers=workers, schedule="static")
        self.task = mandelbrot.plan_tasks(plan)[band]
        mandelbrot.run_task(self.task)  # JIT

    def track_band_seconds(self, view: str, workers: int, band: int) -> float:
        best = float("inf")
        for _ in range(self.REPEAT):
            t0 = time.perf_counter()
            mandelbrot.run_task(self.task)
            best = min(best, time.perf_counter() - t0)
        return best


class ColdStart(ColdStartBase):
    """A fresh interpreter: import, JIT, pool start and a 256x256 render (seconds)."""

    params = (LABELS, WORKERS)

    def setup(self, label: str, workers: int) -> None:
        skip_unless_raced("mandelbrot", label, 1 << 16, workers)

    def body(self, label: str, workers: int) -> str:
        kwargs = _kwargs(label, workers)
        side = 64 if (kwargs["inner"] or kwargs["strategy"]) == "python" else 256
        return f"from kernels.mandelbrot import render\nrender({side}, {side}, **{kwargs!r})\n"

    def timeraw_cold_start(self, label: str, workers: int) -> str:
        """Cold start: numba's on-disk cache as a previous run left it, or empty where
        the class sets ``fresh_jit_cache`` (the compiling variant inherits this)."""
        return self.code(label, workers)


class ColdStartCompiling(ColdStart):
    """As :class:`ColdStart`, but numba compiles the kernels from scratch (seconds)."""

    params = ([label for label in LABELS if label.endswith("numba")], WORKERS)
    fresh_jit_cache = True

    def setup(self, label: str, workers: int) -> None:
        pass


class PeakMemory:
    """Peak resident memory of the process rendering one image (bytes): the int32 image
    (4 bytes a pixel) and, for NumPy, its bands' temporaries (bounded per task)."""

    params = (["numpy", "numba"], [1 << 18, 1 << 20])
    param_names = ["strategy", "size"]
    # The regression gate's points: each sample is a fresh process (about 1-2 s).
    gate_params = (["numpy", "numba"], [1 << 18])
    timeout = 120

    def setup(self, label: str, size: int) -> None:
        self.side = mandelbrot.side_for(size)
        self.kwargs = _kwargs(label, 1)
        mandelbrot.render(64, 64, **self.kwargs)

    def peakmem_render(self, label: str, size: int) -> None:
        mandelbrot.render(self.side, self.side, **self.kwargs)
