"""asv benchmarks for the prime sieve: strategy x n x workers, warm and cold apart.

- ``TimeCountPrimes.time_count_primes``: warm steady state of ``count_primes(n)``.
  ``setup`` runs a small count first, so numba compilation (or its cache load) and the
  pool's start are out of the timing. ``primesieve`` (when installed) is the anchor.
- The race (``_race``, the ``setup_cache`` of the three ratio classes below): for
  each strategy, a process of its own times numpy on 1 worker, the strategy at 1 and 2
  workers (and primesieve, for the numba strategies) at every n of the grid, one sample
  of each per round, 12 rounds (:func:`race_group`), so that every ratio of a table
  row comes from calls taken in the same rounds and the machine's drift cancels:
  - ``VersusNumpy.track_speedup_over_numpy``: numpy's time on 1 worker over each
    strategy's: the report's "speedup vs numpy@1", with its interval;
  - ``Scaling.track_speedup_2_workers``: 1 worker / 2 workers (parallel efficiency);
  - ``Anchor.track_time_over_primesieve``: each numba strategy's time in primesieve's
    at the same workers.
- ``TimePipeline.time_count_primes``: the Go-style thread chain at the small n it
  accepts, to show what that pattern costs next to the segmented sieves.
- ``ColdStart.timeraw_cold_start``: a fresh interpreter imports kernels and counts the
  primes below 10**7: import + JIT (numba's on-disk cache as a previous run left it) +
  pool start + the run. ``ColdStartCompiling`` does the same with an empty JIT cache.
- ``PeakMemory.peakmem_count_primes``: resident set of the process; it must stay
  O(sqrt(n) + segment), so 10**9 may not need more than 10**7 does.
"""

from __future__ import annotations

from collections.abc import Callable

from kernels import registry, sieve

from .common import (
    COLD_START_LABELS,
    WORKERS,
    ColdStartBase,
    RaceRatio,
    WarmTime,
    race_groups,
    race_members,
    race_point,
    skip_unless_raced,
)

LABELS = [registry.label(s, i) for s, i in registry.variants("sieve", available_only=False)]
LABELS = [label for label in LABELS if label != "pipeline"]
SIZES = [10**6, 10**7, 10**8, 10**9]
# The largest n timed per strategy or chunk kernel is the spec's (sieve.SPEC.size_limits).


def _kwargs(label: str, workers: int) -> dict:
    strategy, inner = registry.parse_label(label)
    return {"strategy": strategy, "inner": inner, "workers": workers}


def _check_runs(label: str, n: int, workers: int) -> dict:
    """The call's keyword arguments, or skip (NotImplementedError) if it is not raced."""
    skip_unless_raced("sieve", label, n, workers)
    return _kwargs(label, workers)


def _checked_call(kwargs: dict, n: int) -> Callable[[], int]:
    """``count_primes(n, **kwargs)`` as a call, run once first, untimed (JIT compile or
    load, pool start with every worker filled) and checked against the known count, so
    that a wrong result never passes as a fast one."""
    got = sieve.count_primes(n, **kwargs)
    if got != sieve.KNOWN_PI[n]:
        raise AssertionError(f"count_primes({n}, **{kwargs}) gave {got}")
    return lambda: sieve.count_primes(n, **kwargs)


class TimeCountPrimes(WarmTime):
    """Warm time of one ``count_primes(n)`` call (seconds)."""

    params = (LABELS, SIZES, WORKERS)
    param_names = ["strategy", "n", "workers"]
    # The regression gate's points (kernelrace compare --run): calls of 2-20 ms (numpy
    # at 10^7, not 10^8: 10 or more pairs a round in 0.3 s, against 3 in 0.7 s).
    gate_params = [(["python"], [10**6], [1]), (["numpy"], [10**7], [1]),
                   (["numba", "threaded:numba", "multiprocess:numba"], [10**8], WORKERS)]
    timeout = 300

    def setup(self, label: str, n: int, workers: int) -> None:
        self.kwargs = _check_runs(label, n, workers)
        _checked_call(self.kwargs, min(n, 10**7))

    def time_count_primes(self, label: str, n: int, workers: int) -> None:
        sieve.count_primes(n, **self.kwargs)


ANCHORED = ["numba", "threaded:numba", "multiprocess:numba"]  # timed against primesieve


def race_group(label: str) -> dict:
    """One strategy's race (:func:`benchmarks.common.race_groups` runs it in a process
    of its own): at each n of the grid, ``numpy`` on 1 worker, the strategy at 1 and 2
    workers and, for the numba strategies, primesieve at 1 and 2, each checked once,
    then timed in rounds (:func:`benchmarks.common.race`)."""
    members = race_members(label, ("primesieve",) if label in ANCHORED else ())
    raced: dict = {"times": {}, "failed": {}}
    for n in SIZES:
        keys = [(name, n, w) for name, w in members]
        race_point(keys, lambda name, n, w: _checked_call(_check_runs(name, n, w), n), raced)
    return raced


def _race(self: object) -> dict:
    """The ``setup_cache`` of :class:`VersusNumpy`, :class:`Scaling` and :class:`Anchor`
    (asv runs it once for all three): every strategy's :func:`race_group` but numpy's
    (one core only: it has no ratio of its own)."""
    return race_groups(__name__, [label for label in LABELS if label != "numpy"])


_race.timeout = 3600  # every group's process, one after another


class VersusNumpy(RaceRatio):
    """How many times faster than ``numpy`` on 1 worker each strategy runs (x), the two
    timed in the same rounds of the suite's race (median of 12 per-round ratios and its
    interval): the report's "speedup vs numpy@1", where ``TimeCountPrimes`` divides two
    medians timed minutes apart.
    """

    params = ([label for label in LABELS if label != "numpy"], SIZES, WORKERS)
    param_names = ["strategy", "n", "workers"]
    setup_cache = _race

    def sides(self, label: str, n: int, workers: int) -> tuple:
        return label, ("numpy", n, 1), (label, n, workers)

    def track_speedup_over_numpy(self, raced: dict, label: str, n: int, workers: int) -> dict:
        return self.ratio()


class Scaling(RaceRatio):
    """Speed-up of 2 workers over 1 (x), both timed in the same rounds of the race: the
    parallel efficiency the machine's drift cannot fake (``TimeCountPrimes`` times 1 and
    2 workers in separate processes, minutes apart). Parallel efficiency = this / the
    workers that ran.
    """

    params = ([label for label in LABELS if label not in sieve.SPEC.serial], SIZES)
    param_names = ["strategy", "n"]
    setup_cache = _race

    def sides(self, label: str, n: int) -> tuple:
        return label, (label, n, 1), (label, n, 2)

    def track_speedup_2_workers(self, raced: dict, label: str, n: int) -> dict:
        return self.ratio()


class Anchor(RaceRatio):
    """Each numba strategy's time in ``primesieve``'s at the same workers (x), the two
    timed in the same rounds of the race, so that the machine's drift between two asv
    points cannot move it.
    """

    params = (ANCHORED, SIZES, WORKERS)
    param_names = ["strategy", "n", "workers"]
    setup_cache = _race

    def sides(self, label: str, n: int, workers: int) -> tuple:
        return label, (label, n, workers), ("primesieve", n, workers)

    def track_time_over_primesieve(self, raced: dict, label: str, n: int,
                                   workers: int) -> dict:
        return self.ratio()


class TimePipeline:
    """Warm time of the Go-style pipeline of filter threads (seconds)."""

    params = ([1000, sieve.PIPELINE_MAX_N],)
    param_names = ["n"]
    number = 1
    repeat = (1, 5, 10.0)
    timeout = 120

    def time_count_primes(self, n: int) -> None:
        sieve.count_primes(n, strategy="pipeline", workers=1)


class ColdStart(ColdStartBase):
    """A fresh interpreter: import, JIT, pool start and pi(10**7) (seconds)."""

    params = (COLD_START_LABELS, WORKERS)

    def setup(self, label: str, workers: int) -> None:
        _check_runs(label, 10**7, workers)

    def body(self, label: str, workers: int) -> str:
        return (
            "from kernels.sieve import count_primes\n"
            f"assert count_primes(10**7, **{_kwargs(label, workers)!r}) == 664579\n"
        )

    def timeraw_cold_start(self, label: str, workers: int) -> str:
        """Cold start: numba's on-disk cache as a previous run left it, or empty where
        the class sets ``fresh_jit_cache`` (the compiling variant inherits this)."""
        return self.code(label, workers)


class ColdStartCompiling(ColdStart):
    """As :class:`ColdStart`, but numba compiles the kernels from scratch (seconds)."""

    params = (["numba", "multiprocess:numba"], WORKERS)
    fresh_jit_cache = True


class PeakMemory:
    """Peak resident memory of the process running one count (bytes)."""

    params = (["numpy", "numba"], [10**7, 10**9])
    param_names = ["strategy", "n"]
    # The regression gate's points: each sample is a fresh process (about 1-2 s).
    gate_params = (["numpy", "numba"], [10**7])
    timeout = 120

    def setup(self, label: str, n: int) -> None:
        self.kwargs = _check_runs(label, n, 1)
        sieve.count_primes(10**6, **self.kwargs)

    def peakmem_count_primes(self, label: str, n: int) -> None:
        sieve.count_primes(n, **self.kwargs)
