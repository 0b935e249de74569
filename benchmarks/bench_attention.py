"""asv benchmarks for attention decode: preset x context length x strategy x workers.

- ``TimeDecode.time_decode``: warm time of one decode step, batch 1 (MLA presets use the
  absorbed path). ``setup`` builds the cache (random, seeded) and runs one step, so
  numba compilation (or its cache load), pool start and first touch are not timed.
- ``TimeDecodeBatch8``: the same at batch 8, context 8192.
- ``TimeMLA``: MLA naive (latent cache up-projected every step) vs absorbed.
- ``ColdStart.timeraw_first_step``: a fresh interpreter imports kernels, builds a 1k
  GQA cache and runs one step: import + JIT (numba's on-disk cache as a previous run
  left it) + pool start + the step, apart from the warm figures.
- ``Sizes.track_kv_bytes_per_token``: bytes per token per layer from the cache arrays.
- ``Bandwidth.track_share_of_read_bw``: the step's cache-read GB/s as a share of the
  machine's read bandwidth, the two timed in alternation in one process;
  ``Bandwidth.track_gbps``: the step's cache-read GB/s alone.
- The race (``_race``, the ``setup_cache`` of the two ratio classes below): for each
  strategy, a process of its own times a step of numpy on 1 worker and of the strategy
  at 1 and 2 workers on the same cache, one sample of each per round, 12 rounds, for
  every preset and context of the grid (:func:`race_group`):
  - ``VersusNumpy.track_speedup_over_numpy``: numpy's step on 1 worker over each
    strategy's: the report's "speedup vs numpy@1", with its interval;
  - ``Scaling.track_speedup_2_workers``: 1 worker / 2 workers (parallel efficiency).
- ``PeakMemory.peakmem_decode``: resident set of a process holding the cache and
  running a step; repeating K/V per query head would show up here.
- ``TimeDecodeDtype.time_decode_dtype``: the warm step with the cache stored in float32,
  bfloat16, float16 or int8 (per token-head scales), computed in float32 (issue 15);
  ``benchmarks/dtype_speedup.py`` gives the speed-ups over float32 paired in alternation.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

from kernels import attention, registry
from kernels.harness.machine import ReadStream

from .common import (
    COLD_START_LABELS,
    WORKERS,
    ColdStartBase,
    RaceRatio,
    WarmTime,
    race_groups,
    race_members,
    race_point,
    rounds_result,
    skip,
    skip_unless_raced,
)

# The grid is sized so that `make bench` stays near 15 minutes on 2 cores: building a
# cache costs seconds at 32k (1 GiB for MHA) in every benchmark process, so the inner
# kernels that cannot win (python inside pools, numpy inside processes) and mla-v3
# (the same cache as mla; its compute is raced in TimeMLA) are left out of TimeDecode.
# `kernelrace run --kernel attention` races any of them.
ALL_LABELS = [
    registry.label(s, i) for s, i in registry.variants("attention", available_only=False)
]
LABELS = ["python", "numpy", "numba", "threaded:numpy", "threaded:numba",
          "multiprocess:numba", "distributed:numba", "torch"]
assert set(LABELS) <= set(ALL_LABELS)
PRESETS = ["mha", "gqa", "mqa", "mla"]
CONTEXTS = [1024, 8192, 32768]
# The longest context timed per chunk kernel is the spec's (attention.SPEC.size_limits).
# MLA naive up-projects the whole cache every step: ~34 GFLOP per step for mla at 8k.
MAX_NAIVE_CONTEXT = {"mla": 8192, "mla-v3": 1024}
SERIAL = ("python",)
FAST_LABELS = ["numpy", "numba", "threaded:numba", "multiprocess:numba", "torch"]


# The filled cache of this process's benchmark point: asv re-runs setup (and teardown)
# before every sample, and filling a 32k MHA cache (1 GiB) takes seconds. When
# DATA_DIR_VAR names a folder (`make bench` sets it, and empties it after the run), the
# first process that needs a cache also saves its arrays there and later processes
# (every strategy x workers point of the same preset and context) load them instead.
DATA_DIR_VAR = "KERNELRACE_BENCH_DATA"
_SOURCES: dict[tuple[str, int, int, str], attention.Cache] = {}


def _source(preset: str, context: int, batch: int, dtype: str = "float32") -> attention.Cache:
    key = (preset, context, batch, dtype)
    if key not in _SOURCES:
        _SOURCES.clear()  # one at a time: a process times one point
        _SOURCES[key] = _load_or_build(preset, context, batch, dtype)
    return _SOURCES[key]


def _load_or_build(preset: str, context: int, batch: int,
                   dtype: str = "float32") -> attention.Cache:
    cache = attention.make_cache(attention.PRESETS[preset], capacity=context, batch=batch,
                                 dtype=dtype)
    root = os.environ.get(DATA_DIR_VAR)
    folder = pathlib.Path(root, f"{preset}-T{context}-B{batch}-{dtype}-seed0") if root else None
    if folder is not None and folder.is_dir():
        # Paths, read straight into the cache: a copy from np.load's memory map would
        # map the file into this process as well, and PeakMemory would count it.
        cache.load({name: folder / f"{name}.npy" for name in cache.arrays()}, context)
        return cache
    attention.fill_random(cache, context, seed=0)
    if folder is not None:  # write aside, then rename: a folder that exists is complete
        folder.parent.mkdir(parents=True, exist_ok=True)
        part = pathlib.Path(tempfile.mkdtemp(prefix=folder.name, dir=folder.parent))
        for name, array in cache.arrays().items():
            np.save(part / f"{name}.npy", array)
        try:
            part.rename(folder)
        except OSError:  # another process saved it first
            shutil.rmtree(part, ignore_errors=True)
    return cache


def _case(label: str, context: int, workers: int, preset: str, batch: int = 1,
          mla_impl: str | None = None, dtype: str = "float32") -> registry.Case:
    strategy, inner = skip_unless_raced("attention", label, context, workers)
    # The Python reference is also too slow as an inner kernel at more than one worker.
    if (inner or strategy) in SERIAL and workers > 1:
        skip(f"{label} runs on one core whatever workers is")
    if mla_impl == "naive" and context > MAX_NAIVE_CONTEXT[preset]:
        skip(f"MLA naive on {preset} is too slow at context {context}")
    case = attention.make_case(context, strategy=strategy, inner=inner, workers=workers,
                               preset=preset, batch=batch, mla_impl=mla_impl, dtype=dtype,
                               source=_source(preset, context, batch, dtype))
    try:
        case.run()  # JIT / pool start / first touch, untimed
    except BaseException:
        case.close()
        raise
    return case


def _close(benchmark: object) -> None:
    """Teardown: close the case if setup made one (asv tears down skipped points too)."""
    case = getattr(benchmark, "case", None)
    if case is not None:
        case.close()


class TimeDecode(WarmTime):
    """Warm time of one decode step at batch 1 (seconds)."""

    params = (PRESETS, CONTEXTS, LABELS, WORKERS)
    param_names = ["preset", "context", "strategy", "workers"]
    # The regression gate's points (kernelrace compare --run): a bandwidth-bound and a
    # compute-bound preset, each strategy that can win, at 1 and 2 workers.
    gate_params = [(["gqa", "mla"], [8192],
                    ["numpy", "numba", "threaded:numba", "multiprocess:numba"], WORKERS)]
    timeout = 300

    def setup(self, preset: str, context: int, label: str, workers: int) -> None:
        self.case = _case(label, context, workers, preset)

    def teardown(self, *args: object) -> None:
        _close(self)

    def time_decode(self, preset: str, context: int, label: str, workers: int) -> None:
        self.case.run()


class TimeDecodeBatch8(WarmTime):
    """Warm time of one decode step for 8 sequences at context 8192 (seconds)."""

    params = (["gqa", "mla"], FAST_LABELS, WORKERS)
    param_names = ["preset", "strategy", "workers"]
    timeout = 300

    def setup(self, preset: str, label: str, workers: int) -> None:
        self.case = _case(label, 8192, workers, preset, batch=8)

    def teardown(self, *args: object) -> None:
        _close(self)

    def time_decode_batch8(self, preset: str, label: str, workers: int) -> None:
        self.case.run()


class TimeMLA:
    """MLA naive vs absorbed, one decode step (seconds)."""

    params = (["mla", "mla-v3"], ["naive", "absorbed"], [1024, 8192],
              ["numpy", "numba", "torch"], WORKERS)
    param_names = ["preset", "mla_impl", "context", "strategy", "workers"]
    number = 1
    repeat = (1, 3, 20.0)
    warmup_time = 0.0
    timeout = 300

    def setup(self, preset: str, impl: str, context: int, label: str, workers: int) -> None:
        self.case = _case(label, context, workers, preset, mla_impl=impl)

    def teardown(self, *args: object) -> None:
        _close(self)

    def time_mla(self, preset: str, impl: str, context: int, label: str, workers: int) -> None:
        self.case.run()


class ColdStart(ColdStartBase):
    """A fresh interpreter: import, cache build (1k GQA), JIT load, pool start, one step (s)."""

    params = (COLD_START_LABELS, WORKERS)

    def body(self, label: str, workers: int) -> str:
        strategy, inner = registry.parse_label(label)
        return (
            "from kernels import attention\n"
            f"case = attention.make_case(1024, strategy={strategy!r}, inner={inner!r}, "
            f"workers={workers}, preset='gqa')\n"
            "case.run()\n"
            "case.close()\n"
        )

    def timeraw_first_step(self, label: str, workers: int) -> str:
        return self.code(label, workers)


class Sizes:
    """KV-cache bytes per token per layer, measured on a real cache's arrays."""

    params = (list(attention.PRESETS), ["float32", "float64"])
    param_names = ["preset", "dtype"]
    unit = "bytes/token"

    def track_kv_bytes_per_token(self, preset: str, dtype: str) -> int:
        cache = attention.make_cache(attention.PRESETS[preset], capacity=8, dtype=dtype)
        before = cache.used_nbytes
        attention.fill_random(cache, 8)
        return (cache.used_nbytes - before) // 8

    def track_kv_bytes_ratio_to_mha(self, preset: str, dtype: str) -> float:
        mha = attention.kv_bytes_per_token(attention.PRESETS["mha"], np.dtype(dtype))
        return attention.kv_bytes_per_token(attention.PRESETS[preset], np.dtype(dtype)) / mha

    track_kv_bytes_ratio_to_mha.unit = "ratio"


class StepCost:
    """What one decode step (batch 1, absorbed MLA) costs, by count, not by clock: its
    FLOPs and the weight bytes it reads (:func:`kernels.attention.step_cost`; the cache
    bytes are the rows' own). The report's roofline takes its arithmetic intensity from
    these, the same for every strategy of a preset and context."""

    params = (PRESETS, CONTEXTS)
    param_names = ["preset", "context"]

    def track_step_flops(self, preset: str, context: int) -> int:
        return attention.step_cost(attention.PRESETS[preset], context).flops

    track_step_flops.unit = "FLOP"

    def track_weight_bytes(self, preset: str, context: int) -> int:
        return attention.step_cost(attention.PRESETS[preset], context).weight_bytes

    track_weight_bytes.unit = "weight bytes"


class Bandwidth:
    """Share of the machine's read bandwidth one decode step reaches (%), its GB/s and its
    GFLOP/s (MQA and MLA are compute-bound: issue 15).

    Each of 12 rounds times one step, then one read pass over a 1 GiB array on the same
    number of threads (:class:`kernels.harness.machine.ReadStream`, what ``kernelrace
    machine`` measures); each round gives the step's GB/s (cache bytes / time) over the
    read's, and asv stores the rounds' median with its interval
    (:func:`benchmarks.common.rounds_result`). Calibrating once and benchmarking minutes
    later lets the machine's drift (tens of percent here) pass for the kernel's.
    """

    params = (["gqa", "mqa", "mla"], [32768], FAST_LABELS, WORKERS)
    param_names = ["preset", "context", "strategy", "workers"]
    unit = "%"
    timeout = 300
    ROUNDS = 12

    def setup(self, preset: str, context: int, label: str, workers: int) -> None:
        self.case = _case(label, context, workers, preset)
        self.stream = ReadStream(workers=workers)

    def teardown(self, *args: object) -> None:
        _close(self)

    def _step_seconds(self) -> float:
        t0 = time.perf_counter()
        self.case.run()
        return time.perf_counter() - t0

    def _step_gbps(self) -> float:
        return self.case.fields["cache_bytes"] / self._step_seconds() / 1e9

    def track_share_of_read_bw(self, preset: str, context: int, label: str,
                               workers: int) -> dict:
        return rounds_result([100 * self._step_gbps() / self.stream.gbps()
                              for _ in range(self.ROUNDS)])

    def track_gbps(self, preset: str, context: int, label: str, workers: int) -> dict:
        """The step's achieved cache-read bandwidth alone: GB/s of ROUNDS steps (asv
        stores their median and its interval)."""
        return rounds_result([self._step_gbps() for _ in range(self.ROUNDS)])

    track_gbps.unit = "GB/s"

    def track_gflops(self, preset: str, context: int, label: str, workers: int) -> dict:
        """The step's arithmetic rate: analytic FLOPs (``attention.step_cost``, in the
        case's fields) over each of ROUNDS steps' time, in GFLOP/s."""
        flops = self.case.fields["flops"]
        return rounds_result([flops / self._step_seconds() / 1e9 for _ in range(self.ROUNDS)])

    track_gflops.unit = "GFLOP/s"


def race_group(label: str) -> dict:
    """One strategy's race (:func:`benchmarks.common.race_groups` runs it in a process
    of its own): for each preset and context of the grid, a case of ``numpy`` on 1
    worker and of the strategy at 1 and 2 workers on the same cache, each run once,
    then one step of each timed in rounds (:func:`benchmarks.common.race`); the cases
    are closed before the next context's are built."""
    raced: dict = {"times": {}, "failed": {}}
    for preset in PRESETS:
        for context in CONTEXTS:
            cases: dict = {}

            def make(preset: str, context: int, name: str, workers: int,
                     cases: dict = cases) -> object:
                case = cases[name, workers] = _case(name, context, workers, preset)
                return case.run

            # The strategy's cases first: torch loaded after numba's OpenMP threads
            # start runs on numba's libgomp, 5-8x slower (numpy's step no longer starts
            # them; building torch first keeps it so whatever the numpy side does).
            members = sorted(race_members(label), key=lambda m: m[0] == "numpy")
            keys = [(preset, context, name, w) for name, w in members]
            try:
                race_point(keys, make, raced)
            finally:
                for case in cases.values():
                    case.close()
    return raced


def _race(self: object) -> dict:
    """The ``setup_cache`` of :class:`VersusNumpy` and :class:`Scaling` (asv runs it once
    for both): every strategy's :func:`race_group`."""
    return race_groups(__name__, LABELS)


_race.timeout = 3600  # every group's process, one after another


class VersusNumpy(RaceRatio):
    """How many times faster than ``numpy`` on 1 worker each strategy runs one decode
    step (x), the two timed in the same rounds of the suite's race on the same cache
    (median of 12 per-round ratios and its interval): the report's "speedup vs
    numpy@1", where ``TimeDecode`` divides two medians timed minutes apart.
    """

    params = (PRESETS, CONTEXTS, [label for label in LABELS if label != "numpy"], WORKERS)
    param_names = ["preset", "context", "strategy", "workers"]
    setup_cache = _race

    def sides(self, preset: str, context: int, label: str, workers: int) -> tuple:
        return label, (preset, context, "numpy", 1), (preset, context, label, workers)

    def track_speedup_over_numpy(self, raced: dict, preset: str, context: int, label: str,
                                 workers: int) -> dict:
        return self.ratio()


class Scaling(RaceRatio):
    """Speed-up of 2 workers over 1 for one decode step (x), both timed in the same
    rounds of the race (``TimeDecode`` times them minutes apart). Parallel efficiency =
    this / the workers that ran.
    """

    params = (PRESETS, CONTEXTS, [label for label in LABELS if label not in SERIAL])
    param_names = ["preset", "context", "strategy"]
    setup_cache = _race

    def sides(self, preset: str, context: int, label: str) -> tuple:
        return label, (preset, context, label, 1), (preset, context, label, 2)

    def track_speedup_2_workers(self, raced: dict, preset: str, context: int,
                                label: str) -> dict:
        return self.ratio()


class PeakMemory:
    """Peak resident memory of a process holding the cache and running steps (bytes)."""

    params = (["gqa", "mla"], [32768], ["numpy", "numba", "torch"])
    param_names = ["preset", "context", "strategy"]
    # The regression gate's points: each sample is a fresh process (about 3 s, the cache
    # loaded from the side's bench-data folder after the first).
    gate_params = (["gqa"], [32768], ["numpy", "numba"])
    timeout = 300

    def setup(self, preset: str, context: int, label: str) -> None:
        self.case = _case(label, context, 1, preset)

    def teardown(self, *args: object) -> None:
        _close(self)

    def peakmem_decode(self, preset: str, context: int, label: str) -> None:
        self.case.run()


class TimeDecodeDtype(WarmTime):
    """Warm time of one decode step at batch 1 with the cache stored in each element type
    (seconds): bf16 and fp16 halve the bytes a step reads, int8 (a float32 scale per token
    and head) takes them to about a quarter; every kernel computes in float32."""

    params = (["gqa", "mla"], [8192, 32768], ["float32", "bfloat16", "float16", "int8"],
              ["numba"], WORKERS)
    param_names = ["preset", "context", "dtype", "strategy", "workers"]
    timeout = 300

    def setup(self, preset: str, context: int, dtype: str, label: str, workers: int) -> None:
        self.case = _case(label, context, workers, preset, dtype=dtype)

    def teardown(self, *args: object) -> None:
        _close(self)

    def time_decode_dtype(self, preset: str, context: int, dtype: str, label: str,
                          workers: int) -> None:
        self.case.run()
