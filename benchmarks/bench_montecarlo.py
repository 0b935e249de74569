"""asv benchmarks for Monte Carlo pi: strategy x samples x workers, warm and cold apart.

- ``TimeEstimatePi.time_estimate_pi``: warm steady state. ``setup`` runs a small
  estimate first, so numba compilation (or its cache load) and the process pool's
  start are out of the timing.
- The race (``_race``, the ``setup_cache`` of the two ratio classes below): for each
  strategy, a process of its own times numpy on 1 worker and the strategy at 1 and 2
  workers at every sample count of the grid, one sample of each per round, 12 rounds
  (:func:`race_group`), so that every ratio of a table row comes from calls taken in
  the same rounds:
  - ``VersusNumpy.track_speedup_over_numpy``: numpy's time on 1 worker over each
    strategy's: the report's "speedup vs numpy@1", with its interval;
  - ``Scaling.track_speedup_2_workers``: 1 worker / 2 workers (parallel efficiency).
- ``ColdStart.timeraw_*``: a fresh interpreter imports kernels and runs a small
  estimate: import + JIT (from numba's on-disk cache, or compiled from scratch) +
  pool start + the run.
- ``PeakMemory.peakmem_*``: resident set of the benchmark process; for NumPy it must
  not grow with the sample count (chunks and sub-blocks bound the temporaries).
- ``Statistics.track_error_in_stderr``: the estimate's error in standard errors at a
  fixed seed, so that a broken generator shows up in the history.
"""

from __future__ import annotations

from collections.abc import Callable

from kernels import montecarlo, registry

from .common import (
    WORKERS,
    ColdStartBase,
    RaceRatio,
    WarmTime,
    race_groups,
    race_members,
    race_point,
    skip,
)

LABELS = [registry.label(s, i) for s, i in registry.variants("montecarlo")]
SAMPLES = [10**6, 10**7, 10**8, 10**9]
# The largest sample count timed per chunk kernel: the spec's limits (the setup below
# reads them here, so that its source, and with it asv's version of the benchmark, did
# not change when the limits moved into the spec).
MAX_SAMPLES = montecarlo.SPEC.size_limits


def _kwargs(label: str, workers: int) -> dict:
    strategy, inner = registry.parse_label(label)
    return {"strategy": strategy, "inner": inner, "workers": workers, "seed": 0}


def _skip_serial_at_many_workers(label: str, workers: int) -> None:
    if label in montecarlo.SPEC.serial and workers > 1:
        skip(f"{label} runs on one core whatever workers is")


def _warm_up(kwargs: dict) -> None:
    """JIT compile (or load), start and fill the pool, on a few chunks per worker."""
    samples = montecarlo.DEFAULT_CHUNK_SIZE * kwargs["workers"] * montecarlo.TASKS_PER_WORKER
    if (kwargs["inner"] or kwargs["strategy"]) == "python":
        samples = 10_000
    montecarlo.estimate_pi(samples, **kwargs)


def _warmed_call(label: str, samples: int, workers: int) -> Callable[[], montecarlo.PiEstimate]:
    """``estimate_pi(samples)`` of ``label`` at ``workers`` as a call, warmed up first."""
    kwargs = _kwargs(label, workers)
    _warm_up(kwargs)
    return lambda: montecarlo.estimate_pi(samples, **kwargs)


class TimeEstimatePi(WarmTime):
    """Warm time of one ``estimate_pi`` call (seconds)."""

    # 10^5 only here (the races start at 10^6): the gate's pure-Python point.
    params = (LABELS, [10**5, *SAMPLES], WORKERS)
    param_names = ["strategy", "samples", "workers"]
    # The regression gate's points (kernelrace compare --run): calls of 5-50 ms, so that
    # a round holds 3 or more pairs, whose median one slow call does not move, in 0.3 s.
    # The numba strategies at 10^7 (5-15 ms: 10 or more pairs; at 10^8, 3 pairs in
    # 0.7 s). Pure Python at 10^5 (11-15 ms): at 10^6 (110-150 ms a call, 3 pairs a
    # round) it was the point a 15% slowdown most often escaped (2 misses in 5 runs).
    gate_params = [(["python"], [10**5], [1]), (["numpy"], [10**7], [1]),
                   (["numba", "threaded:numba", "multiprocess:numba"], [10**7], WORKERS)]

    def setup(self, label: str, samples: int, workers: int) -> None:
        strategy, inner = registry.parse_label(label)
        if samples > MAX_SAMPLES[inner or strategy]:
            skip(f"{label} is too slow for {samples} samples")
        _skip_serial_at_many_workers(label, workers)
        self.kwargs = _kwargs(label, workers)
        _warm_up(self.kwargs)

    def time_estimate_pi(self, label: str, samples: int, workers: int) -> None:
        montecarlo.estimate_pi(samples, **self.kwargs)


def _check_runs(label: str, samples: int, workers: int) -> None:
    """Skip (NotImplementedError) a point that is not raced: too many samples for the
    strategy, or a one-core strategy at more than one worker. (``TimeEstimatePi.setup``
    spells the same rule out: asv versions a benchmark by its source.)"""
    strategy, inner = registry.parse_label(label)
    if samples > MAX_SAMPLES[inner or strategy]:
        skip(f"{label} is too slow for {samples} samples")
    _skip_serial_at_many_workers(label, workers)


def race_group(label: str) -> dict:
    """One strategy's race (:func:`benchmarks.common.race_groups` runs it in a process
    of its own): at each sample count of the grid, ``numpy`` on 1 worker and the
    strategy at 1 and 2 workers, warmed up, then timed in rounds
    (:func:`benchmarks.common.race`)."""
    def make(name: str, samples: int, workers: int) -> Callable[[], montecarlo.PiEstimate]:
        _check_runs(name, samples, workers)
        return _warmed_call(name, samples, workers)

    raced: dict = {"times": {}, "failed": {}}
    for samples in SAMPLES:
        keys = [(name, samples, w) for name, w in race_members(label)]
        race_point(keys, make, raced)
    return raced


def _race(self: object) -> dict:
    """The ``setup_cache`` of :class:`VersusNumpy` and :class:`Scaling` (asv runs it once
    for both): every strategy's :func:`race_group` but numpy's (one core only: it has no
    ratio of its own)."""
    return race_groups(__name__, [label for label in LABELS if label != "numpy"])


_race.timeout = 3600  # every group's process, one after another


class VersusNumpy(RaceRatio):
    """How many times faster than ``numpy`` on 1 worker each strategy runs (x), the two
    timed in the same rounds of the suite's race (median of 12 per-round ratios and its
    interval): the report's "speedup vs numpy@1", where ``TimeEstimatePi`` divides two
    medians timed minutes apart.
    """

    params = ([label for label in LABELS if label != "numpy"], SAMPLES, WORKERS)
    param_names = ["strategy", "samples", "workers"]
    setup_cache = _race

    def sides(self, label: str, samples: int, workers: int) -> tuple:
        return label, ("numpy", samples, 1), (label, samples, workers)

    def track_speedup_over_numpy(self, raced: dict, label: str, samples: int,
                                 workers: int) -> dict:
        return self.ratio()


class Scaling(RaceRatio):
    """Speed-up of 2 workers over 1 (x), both timed in the same rounds of the race
    (``TimeEstimatePi`` times them minutes apart, and on a drifting machine their ratio
    is partly the drift). Parallel efficiency = this / the workers that ran.
    """

    params = ([label for label in LABELS if label not in montecarlo.SPEC.serial], SAMPLES)
    param_names = ["strategy", "samples"]
    setup_cache = _race

    def sides(self, label: str, samples: int) -> tuple:
        return label, (label, samples, 1), (label, samples, 2)

    def track_speedup_2_workers(self, raced: dict, label: str, samples: int) -> dict:
        return self.ratio()


class ColdStart(ColdStartBase):
    """A fresh interpreter: import, JIT, pool start and a 2**22-sample estimate (seconds)."""

    params = (LABELS, WORKERS)

    def setup(self, label: str, workers: int) -> None:
        _skip_serial_at_many_workers(label, workers)

    def body(self, label: str, workers: int) -> str:
        kwargs = _kwargs(label, workers)
        samples = 10_000 if (kwargs["inner"] or kwargs["strategy"]) == "python" else 1 << 22
        return f"from kernels.montecarlo import estimate_pi\nestimate_pi({samples}, **{kwargs!r})\n"

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
    """Peak resident memory of the process running one estimate (bytes)."""

    params = (["numpy", "numba"], [10**6, 10**8])
    param_names = ["strategy", "samples"]
    # The regression gate's points: each sample is a fresh process (about 1-2 s).
    gate_params = (["numpy", "numba"], [10**6])
    timeout = 120

    def setup(self, label: str, samples: int) -> None:
        self.kwargs = _kwargs(label, 1)
        _warm_up(self.kwargs)

    def peakmem_estimate_pi(self, label: str, samples: int) -> None:
        montecarlo.estimate_pi(samples, **self.kwargs)


class Statistics:
    """The estimate's error in standard errors, seed 0 (about N(0, 1) when all is well)."""

    params = (["python", "numpy", "numba"],)
    param_names = ["strategy"]
    samples = {"python": 10**5, "numpy": 10**6, "numba": 10**7}

    def track_error_in_stderr(self, label: str) -> float:
        result = montecarlo.estimate_pi(self.samples[label], strategy=label, workers=1, seed=0)
        return result.error_in_stderr

    track_error_in_stderr.unit = "stderr"
