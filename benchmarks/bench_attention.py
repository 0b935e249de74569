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
- ``Bandwidth.track_gbps`` / ``track_gflops``: the step's cache-read GB/s and GFLOP/s,
  timed again in a process of its own (the report checks them against ``TimeDecode``).
- The race (``_race``, the ``setup_cache`` of every ratio class below): for each
  strategy, a process of its own times a step of numpy on 1 worker and of the strategy
  at 1 and 2 workers on the same cache, a read pass over 1 GiB on 1 and 2 threads and,
  where a step can be compute-bound (MQA and MLA at the longest context), a float32
  2048 x 2048 BLAS matmul on 1 and 2 threads,
  one sample of each per round, 12 rounds, at every point of ``TimeDecode``,
  ``TimeDecodeBatch8``, ``TimeMLA`` and ``TimeDecodeDtype`` the strategy runs in
  (:func:`race_group`):
  - ``VersusNumpy*.track_speedup_over_numpy``: numpy's step on 1 worker over each
    strategy's: the report's "speedup vs numpy@1", with its interval;
  - ``Scaling*.track_speedup_2_workers``: 1 worker / 2 workers (parallel efficiency);
  - ``ShareOfReadBw*.track_share_of_read_bw``: the step's GB/s over the read pass's;
  - ``ShareOfMatmul*.track_share_of_matmul``: the step's GFLOP/s over the matmul's;
  - ``DtypeSpeedup.track_speedup_over_float32``: float32's step over bf16's, fp16's,
    int8's.
- ``PeakMemory.peakmem_decode``: resident set of a process holding the cache and
  running a step; repeating K/V per query head would show up here.
- ``TimeDecodeDtype.time_decode_dtype``: the warm step with the cache stored in float32,
  bfloat16, float16 or int8 (per token-head scales), computed in float32.
"""

from __future__ import annotations

import functools
import itertools
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

from kernels import attention, registry
from kernels.attention.config import StepCost as Cost
from kernels.harness.machine import MatmulStream, ReadStream

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

# The grid is kept to what `make bench` can time in about an hour on 2 cores (all four
# suites: 58 minutes at 57ab131, docs/report.md): building a cache costs seconds at 32k
# (1 GiB for MHA) in every benchmark process that needs one, so the inner
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

    params = (list(attention.PRESETS), ["float32", "float64", "bfloat16", "float16", "int8"])
    param_names = ["preset", "dtype"]
    unit = "bytes/token"

    def track_kv_bytes_per_token(self, preset: str, dtype: str) -> int:
        cache = attention.make_cache(attention.PRESETS[preset], capacity=8, dtype=dtype)
        before = cache.used_nbytes
        attention.fill_random(cache, 8)
        return (cache.used_nbytes - before) // 8

    def track_kv_bytes_ratio_to_mha(self, preset: str, dtype: str) -> float:
        mha = attention.kv_bytes_per_token(attention.PRESETS["mha"], dtype)
        return attention.kv_bytes_per_token(attention.PRESETS[preset], dtype) / mha

    track_kv_bytes_ratio_to_mha.unit = "ratio"


class _TableCost:
    """What one call of a time benchmark (``TIME``) costs, by count, not by clock: its
    FLOPs and the weight bytes it reads (:func:`kernels.attention.step_cost`; the cache
    bytes are the rows' own). Its parameters are ``TIME``'s less strategy and workers, so
    the report joins each table to the counts of its own calls (the subclass sharing
    the most parameters with it): a naive MLA step is counted as naive, a batch of 8 as
    8 sequences. The report's roofline takes its arithmetic intensity from these, the
    same for every strategy. Not a benchmark itself."""

    TIME: type

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        keep = [i for i, n in enumerate(cls.TIME.param_names) if n not in ("strategy", "workers")]
        cls.params = tuple(cls.TIME.params[i] for i in keep)
        cls.param_names = [cls.TIME.param_names[i] for i in keep]

    def cost(self, *params: object) -> Cost:
        raise NotImplementedError

    def track_step_flops(self, *params: object) -> int:
        return self.cost(*params).flops

    track_step_flops.unit = "FLOP"

    def track_weight_bytes(self, *params: object) -> int:
        return self.cost(*params).weight_bytes

    track_weight_bytes.unit = "weight bytes"


class StepCost(_TableCost):
    """:class:`_TableCost` of ``TimeDecode`` (batch 1, absorbed MLA); ``TimeDecodeDtype``
    joins it too (a narrower cache changes the bytes, not the FLOPs or the float32
    weights)."""

    TIME = TimeDecode

    def cost(self, preset: str, context: int) -> Cost:
        return attention.step_cost(attention.PRESETS[preset], context)


class StepCostMLA(_TableCost):
    """:class:`_TableCost` of ``TimeMLA``: naive and absorbed, both MLA presets."""

    TIME = TimeMLA

    def cost(self, preset: str, impl: str, context: int) -> Cost:
        return attention.step_cost(attention.PRESETS[preset], context, mla_impl=impl)


class StepCostBatch8(_TableCost):
    """:class:`_TableCost` of ``TimeDecodeBatch8``: 8 sequences at context 8192."""

    TIME = TimeDecodeBatch8

    def cost(self, preset: str) -> Cost:
        return attention.step_cost(attention.PRESETS[preset], 8192, batch=8)


class Bandwidth:
    """One decode step's GB/s and GFLOP/s, each over 12 steps in a process of its own
    (MQA and MLA are compute-bound: issue 15): the same quantity as ``TimeDecode``'s
    time, measured again, so that the report can check that the two agree ("One
    quantity, one answer" in docs/report.md). The step's share of the read bandwidth is
    :class:`ShareOfReadBw`'s, paired with a read pass in the race.
    """

    params = (["gqa", "mqa", "mla"], [32768], FAST_LABELS, WORKERS)
    param_names = ["preset", "context", "strategy", "workers"]
    timeout = 300
    ROUNDS = 12

    def setup(self, preset: str, context: int, label: str, workers: int) -> None:
        self.case = _case(label, context, workers, preset)

    def teardown(self, *args: object) -> None:
        _close(self)

    def _step_seconds(self) -> float:
        t0 = time.perf_counter()
        self.case.run()
        return time.perf_counter() - t0

    def _step_gbps(self) -> float:
        return self.case.fields["cache_bytes"] / self._step_seconds() / 1e9

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


# The race's keys: the name of the time benchmark's class whose row a figure belongs to,
# then that benchmark's parameters in its order (strategy and workers last, as in every
# suite); READ in the strategy's place is the read pass.
MLA_GRID = (TimeMLA.params[0], TimeMLA.params[1], TimeMLA.params[2])
DTYPE_GRID = (TimeDecodeDtype.params[0], TimeDecodeDtype.params[1], TimeDecodeDtype.params[2])
DTYPE_LABELS = TimeDecodeDtype.params[3]
BATCH8_PRESETS = TimeDecodeBatch8.params[0]
READ = "read"  # a race member: one read pass over 1 GiB (ReadStream) on `workers` threads
# A race member: one float32 2048 x 2048 matmul through BLAS (MatmulStream, the matmul
# `kernelrace machine` calibrates) on `workers` threads, followed by its settle time.
MATMUL = "matmul"
# The points that race the matmul pass as well: the longest context of TimeDecode and
# TimeMLA, at presets whose step does at least this many FLOP per byte it reads
# (cache and weights, analytic). Such a step can be compute-bound: a CPU's float32
# matmul rate is 8-10x its read bandwidth in GB/s here (209-252 GFLOP/s against 26-27
# GB/s). GQA and MHA (at most 2 FLOP per byte in float32) cannot. Each pass costs
# about 0.3 s a sample with its settle time, so it is not raced where it says nothing.
COMPUTE_INTENSITY = 4.0
# Strategies whose race has no read pass, as a precaution: torch's steps beside it (numba's
# OpenMP threads in the process, its libgomp beside torch's own) took 0.76-1.21x numpy's
# speed at GQA 32k on 2 workers, against 1.15-1.34x without it, in 4 races of 6 rounds
# each, alternated; 8 races of 12 rounds on a quieter machine did not repeat it (with:
# 1.18-1.33x, without: 1.16-1.29x). `python -m benchmarks.race_company` reruns it.
# Their share of read bandwidth is built from paired figures of their race and numpy's
# (the report's derived._share_via_baseline).
NO_READ_PASS = ("torch",)


def _race_case(key: tuple) -> registry.Case:
    """The case of a race key (:func:`race_group`'s layouts)."""
    table, *params, name, workers = key
    if table == "TimeDecode":
        preset, context = params
        return _case(name, context, workers, preset)
    if table == "TimeDecodeBatch8":
        (preset,) = params
        return _case(name, 8192, workers, preset, batch=8)
    if table == "TimeMLA":
        preset, impl, context = params
        return _case(name, context, workers, preset, mla_impl=impl)
    preset, context, dtype = params
    return _case(name, context, workers, preset, dtype=dtype)


def _compute_point(table: str, *params: object) -> bool:
    """Whether the race times the matmul pass at this point of ``table`` (a time
    benchmark's name, its parameters before strategy and workers): see
    :data:`COMPUTE_INTENSITY`."""
    if table == "TimeDecode":
        preset, context = params
        if context != max(CONTEXTS):
            return False
        cost = attention.step_cost(attention.PRESETS[preset], context)
    elif table == "TimeMLA":
        preset, impl, context = params
        if context != max(MLA_GRID[2]):
            return False
        cost = attention.step_cost(attention.PRESETS[preset], context, mla_impl=impl)
    else:
        return False
    return cost.intensity >= COMPUTE_INTENSITY


def _race_points(label: str) -> list[list[tuple]]:
    """The points of ``label``'s race, each as the keys raced together: every
    preset and context of ``TimeDecode``; ``TimeDecodeBatch8``'s and ``TimeMLA``'s points
    for their strategies; ``TimeDecodeDtype``'s for its. Each point races ``numpy`` on
    1 worker (where the table has it) and the strategy at 1 and 2 workers
    (:func:`race_members`), the read pass at 1 and 2 threads and, at the points of
    :func:`_compute_point`, the matmul pass at 1 and 2 threads (neither beside
    :data:`NO_READ_PASS`)."""
    members = sorted(race_members(label), key=lambda m: m[0] == "numpy")
    passes = [] if label in NO_READ_PASS else [(READ, w) for w in WORKERS]
    matmuls = [] if label in NO_READ_PASS else [(MATMUL, w) for w in WORKERS]

    def others(*point: object) -> list[tuple]:
        return passes + (matmuls if _compute_point(*point) else [])

    points = [[("TimeDecode", p, c, *m) for m in members + others("TimeDecode", p, c)]
              for p in PRESETS for c in CONTEXTS]
    if label in TimeDecodeBatch8.params[1]:
        points += [[("TimeDecodeBatch8", p, *m) for m in members + passes]
                   for p in BATCH8_PRESETS]
    if label in TimeMLA.params[3]:
        points += [[("TimeMLA", p, i, c, *m) for m in members + others("TimeMLA", p, i, c)]
                   for p in MLA_GRID[0] for i in MLA_GRID[1] for c in MLA_GRID[2]]
    if label in DTYPE_LABELS:
        points += [[("TimeDecodeDtype", p, c, d, label, w)
                    for d in DTYPE_GRID[2] for w in WORKERS]
                   + [("TimeDecodeDtype", p, c, "float32", *r) for r in passes]
                   for p in DTYPE_GRID[0] for c in DTYPE_GRID[1]]
    return points


def race_group(label: str) -> dict:
    """One strategy's race (:func:`benchmarks.common.race_groups` runs it in a process
    of its own): at each point of :func:`_race_points`, a case of every member on the
    same cache, each run once, then one step of each timed in rounds
    (:func:`benchmarks.common.race`); the cases are closed before the next point's are
    built. ``raced["bytes"]`` keeps each member's bytes per call (the cache's, or the
    read pass's array) for :class:`ShareOfReadBw`, ``raced["flops"]`` its FLOPs per
    call (the step's, analytic, or the matmul's) for :class:`ShareOfMatmul`."""
    raced: dict = {"times": {}, "failed": {}, "bytes": {}, "flops": {}}
    streams: dict = {}  # one read array and one matmul pair for the group, made when first raced
    for keys in _race_points(label):
        cases: dict = {}

        def make(*key: object, cases: dict = cases) -> object:
            *_, name, workers = key
            if name == READ:
                if READ not in streams:
                    streams[READ] = ReadStream(workers=max(WORKERS))
                raced["bytes"][key] = streams[READ].nbytes
                return lambda: streams[READ].gbps(workers)
            if name == MATMUL:
                if MATMUL not in streams:
                    streams[MATMUL] = MatmulStream(workers=max(WORKERS))
                mm = streams[MATMUL]
                raced["flops"][key] = mm.flops
                call = functools.partial(mm.seconds, workers)
                call.settle_s = mm.settle_s  # race() sleeps it off after each sample
                return call
            case = cases[key] = _race_case(key)
            raced["bytes"][key] = case.fields["cache_bytes"]
            raced["flops"][key] = case.fields["flops"]
            return case.run

        # The strategy's cases are built first (_race_points): torch loaded after
        # numba's OpenMP threads start runs on numba's libgomp, 5-8x slower.
        needs = [key for key in keys if key[-2] == label]
        try:
            race_point(keys, make, raced, needs=needs)
        finally:
            for case in cases.values():
                case.close()
    return raced


def _race(self: object) -> dict:
    """The ``setup_cache`` of every ratio class below (asv runs it once for all): every
    strategy's :func:`race_group`."""
    return race_groups(__name__, LABELS)


_race.timeout = 3600  # every group's process, one after another


class _TableRatio(RaceRatio):
    """A ratio of one time benchmark's rows (``TIME``): ``params`` and ``param_names``
    follow ``TIME``'s through :meth:`grid`, so the ratio classes of the four tables
    differ in ``TIME`` alone. Not a benchmark itself."""

    setup_cache = _race
    TIME: type

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        params, names = cls.grid(list(cls.TIME.params), list(cls.TIME.param_names))
        cls.params, cls.param_names = tuple(params), names

    @classmethod
    def grid(cls, params: list, names: list[str]) -> tuple[list, list[str]]:
        return params, names

    @classmethod
    def strategies(cls, params: list, names: list[str], drop: tuple[str, ...]) -> list:
        """``params`` with ``drop`` taken out of the strategy's values."""
        at = names.index("strategy")
        return [*params[:at], [s for s in params[at] if s not in drop], *params[at + 1:]]


class VersusNumpy(_TableRatio):
    """How many times faster than ``numpy`` on 1 worker each strategy runs one decode
    step (x), the two timed in the same rounds of the suite's race on the same cache
    (median of 12 per-round ratios and its interval): the report's "speedup vs
    numpy@1", where ``TimeDecode`` divides two medians timed minutes apart.
    """

    TIME = TimeDecode

    @classmethod
    def grid(cls, params: list, names: list[str]) -> tuple[list, list[str]]:
        return cls.strategies(params, names, ("numpy",)), names

    def sides(self, *params: object) -> tuple:
        *grid, label, workers = params
        table = self.TIME.__name__
        return label, (table, *grid, "numpy", 1), (table, *grid, label, workers)

    def track_speedup_over_numpy(self, raced: dict, *params: object) -> dict:
        return self.ratio()


class Scaling(_TableRatio):
    """Speed-up of 2 workers over 1 for one decode step (x), both timed in the same
    rounds of the race (``TimeDecode`` times them minutes apart). Parallel efficiency =
    this / the workers that ran.
    """

    TIME = TimeDecode

    @classmethod
    def grid(cls, params: list, names: list[str]) -> tuple[list, list[str]]:
        return cls.strategies(params, names, SERIAL)[:-1], names[:-1]  # workers is last

    def sides(self, *params: object) -> tuple:
        *grid, label = params
        table = self.TIME.__name__
        return label, (table, *grid, label, 1), (table, *grid, label, 2)

    def track_speedup_2_workers(self, raced: dict, *params: object) -> dict:
        return self.ratio()


class ShareOfReadBw(_TableRatio):
    """Share of the machine's read bandwidth one decode step reaches (%): in each round
    of the race, the step's cache bytes over its time, divided by the read pass's bytes
    over its time on as many threads (the read ``kernelrace machine`` measures), both
    timed in the same round. Calibrating once and benchmarking minutes later lets the
    machine's drift (tens of percent here) pass for the kernel's."""

    unit = "%"
    TIME = TimeDecode

    def sides(self, *params: object) -> tuple:
        *grid, label, workers = params
        table = self.TIME.__name__
        # One read pass per point: the dtype table's is keyed as its float32 member.
        read_grid = grid[:-1] + ["float32"] if self.TIME is TimeDecodeDtype else grid
        return label, (table, *read_grid, READ, workers), (table, *grid, label, workers)

    def track_share_of_read_bw(self, raced: dict, *params: object) -> dict:
        read, step = self.keys
        return self.ratio(100 * self.raced["bytes"][step] / self.raced["bytes"][read])


class ShareOfMatmul(_TableRatio):
    """Share of the machine's float32 matmul rate one decode step reaches (%): in each
    round of the race, the step's FLOPs (analytic, :class:`StepCost`) over its time,
    divided by a 2048 x 2048 BLAS matmul's FLOPs over its time on as many threads (the
    matmul ``kernelrace machine`` measures), both timed in the same round. Raced only
    where a step can be compute-bound (:func:`_compute_point`): MQA and MLA at the
    longest context. With :class:`ShareOfReadBw` it puts the row on its roofline."""

    unit = "%"
    TIME = TimeDecode

    @classmethod
    def grid(cls, params: list, names: list[str]) -> tuple[list, list[str]]:
        """The time benchmark's grid cut to the points :func:`_compute_point` races
        (a product of each parameter's values that reach one), less
        :data:`NO_READ_PASS`: asv starts a process for every point of a grid."""
        at = names.index("strategy")
        points = [p for p in itertools.product(*params[:at])
                  if _compute_point(cls.TIME.__name__, *p)]
        cut = [[v for v in values if any(p[i] == v for p in points)]
               for i, values in enumerate(params[:at])]
        return cls.strategies([*cut, *params[at:]], names, NO_READ_PASS), names

    def sides(self, *params: object) -> tuple:
        *grid, label, workers = params
        table = self.TIME.__name__
        return label, (table, *grid, MATMUL, workers), (table, *grid, label, workers)

    def track_share_of_matmul(self, raced: dict, *params: object) -> dict:
        matmul, step = self.keys
        return self.ratio(100 * self.raced["flops"][step] / self.raced["flops"][matmul])


class VersusNumpyBatch8(VersusNumpy):
    """As :class:`VersusNumpy`, for ``TimeDecodeBatch8`` (8 sequences, context 8192)."""

    TIME = TimeDecodeBatch8


class ScalingBatch8(Scaling):
    """As :class:`Scaling`, for ``TimeDecodeBatch8``."""

    TIME = TimeDecodeBatch8


class ShareOfReadBwBatch8(ShareOfReadBw):
    """As :class:`ShareOfReadBw`, for ``TimeDecodeBatch8``."""

    TIME = TimeDecodeBatch8


class VersusNumpyMLA(VersusNumpy):
    """As :class:`VersusNumpy`, for ``TimeMLA`` (naive and absorbed)."""

    TIME = TimeMLA


class ScalingMLA(Scaling):
    """As :class:`Scaling`, for ``TimeMLA``."""

    TIME = TimeMLA


class ShareOfReadBwMLA(ShareOfReadBw):
    """As :class:`ShareOfReadBw`, for ``TimeMLA``."""

    TIME = TimeMLA


class ShareOfMatmulMLA(ShareOfMatmul):
    """As :class:`ShareOfMatmul`, for ``TimeMLA`` (its longest context)."""

    TIME = TimeMLA


class ScalingDtype(Scaling):
    """As :class:`Scaling`, for ``TimeDecodeDtype``."""

    TIME = TimeDecodeDtype


class ShareOfReadBwDtype(ShareOfReadBw):
    """As :class:`ShareOfReadBw`, for ``TimeDecodeDtype``: the bytes are the cache's in
    its own element type (int8 with its scales)."""

    TIME = TimeDecodeDtype


class DtypeSpeedup(RaceRatio):
    """How many times faster one decode step runs with the cache in a narrower element
    type than in float32 (x), same strategy and workers, the two timed in the same
    rounds of the race: what a bf16, fp16 or 8-bit cache saves."""

    params = (DTYPE_GRID[0], DTYPE_GRID[1],
              [d for d in DTYPE_GRID[2] if d != "float32"], DTYPE_LABELS, WORKERS)
    param_names = TimeDecodeDtype.param_names
    unit = "x"
    setup_cache = _race

    def sides(self, preset: str, context: int, dtype: str, label: str,
              workers: int) -> tuple:
        return (label, ("TimeDecodeDtype", preset, context, "float32", label, workers),
                ("TimeDecodeDtype", preset, context, dtype, label, workers))

    def track_speedup_over_float32(self, raced: dict, *params: object) -> dict:
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
