"""Mandelbrot: every strategy, chunk kernel, schedule and worker count against the
pure-Python reference, pixel for pixel; known points; the plan's bands and tiles; bad
input refused before any pool; the harness hooks and the registry's discovery."""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from kernels import executors, mandelbrot, memory, registry
from kernels.mandelbrot import reference

ROOT = Path(__file__).resolve().parents[1]

# Heights that are not multiples of the tile (8) nor of 2 or 3 workers: ragged bands.
VIEWS = [("full", 48, 35, 100), ("seahorse", 40, 29, 200)]
VARIANTS = registry.variants("mandelbrot")


def _ref(view: str, w: int, h: int, m: int) -> np.ndarray:
    return mandelbrot.reference_image(w, h, m, mandelbrot.VIEWS[view])


# ---------------------------------------------------------------------------
# Every strategy equals the reference exactly
# ---------------------------------------------------------------------------


def _grid():
    for strategy, inner in VARIANTS:
        for schedule in mandelbrot.SCHEDULES:
            for workers in (1, 2, 3):
                if strategy in mandelbrot.SPEC.serial and (workers > 1 or schedule == "static"):
                    continue
                yield pytest.param(strategy, inner, schedule, workers,
                                   id=f"{registry.label(strategy, inner)}-{schedule}-w{workers}")


@pytest.mark.parametrize("strategy,inner,schedule,workers", list(_grid()))
def test_every_strategy_equals_the_reference(strategy, inner, schedule, workers) -> None:
    for view, w, h, m in VIEWS:
        got = mandelbrot.render(w, h, max_iter=m, region=mandelbrot.VIEWS[view],
                                strategy=strategy, inner=inner, workers=workers,
                                schedule=schedule)
        want = _ref(view, w, h, m)
        assert got.dtype == np.int32 and got.shape == (h, w)
        # Exact: the same float operations in the same order in every chunk kernel.
        assert np.array_equal(got, want), (view, int(np.count_nonzero(got != want)))


@pytest.mark.parametrize("label", ["numba", "threaded:numba", "threaded:numpy",
                                   "multiprocess:python"])
@pytest.mark.parametrize("schedule", mandelbrot.SCHEDULES)
def test_small_task_caps_still_equal(monkeypatch, label, schedule) -> None:
    # Tiny task caps: tiles of 1-3 rows, numba's dynamic tiles in several prange calls;
    # rows must still land where they belong.
    monkeypatch.setattr(mandelbrot, "MAX_TASK_ITERATIONS",
                        {"numba": 3 * 48 * 100, "numpy": 2 * 48 * 100, "python": 48 * 100})
    strategy, inner = registry.parse_label(label)
    got = mandelbrot.render(48, 35, max_iter=100, strategy=strategy, inner=inner, workers=2,
                            schedule=schedule)
    assert np.array_equal(got, _ref("full", 48, 35, 100))


def test_chunk_kernels_agree_on_every_pixel_of_a_larger_image() -> None:
    # 2**16 pixels: many more values of c than the small views, each kernel alone.
    x0, dx, y0, dy = mandelbrot.pixel_steps(mandelbrot.VIEWS["full"], 256, 256)
    from kernels.mandelbrot import jit, vectorized

    a = np.empty((256, 256), dtype=np.int32)
    jit.render_rows(a, x0, dx, y0, dy, 0, 256)
    b = vectorized.render_rows(x0, dx, y0, dy, 0, 256, 256, 256)
    assert np.array_equal(a, b)
    assert mandelbrot.checksum(a) == mandelbrot.KNOWN_CHECKSUMS[(256, 256, "full")]


@pytest.mark.parametrize("width", [1, 15, 16, 17, 31, 33])
def test_numba_lanes_at_ragged_widths(width: int) -> None:
    # The numba kernel iterates 16 pixels side by side; a row's last group is partial.
    region = (-1.0, 0.5, -0.2, 0.6)
    got = mandelbrot.render(width, 3, max_iter=150, region=region, strategy="numba", workers=1)
    assert np.array_equal(got, reference.render(width, 3, 150, region))


def test_known_checksum_from_the_reference() -> None:
    # The 256x256 entry of KNOWN_CHECKSUMS, recomputed by pure Python (~0.6 s).
    image = reference.render(256, 256, 256, mandelbrot.VIEWS["full"])
    assert mandelbrot.checksum(image) == mandelbrot.KNOWN_CHECKSUMS[(256, 256, "full")]


@pytest.mark.slow
@pytest.mark.parametrize("side", [512, 1024])
def test_known_checksums_slow(side: int) -> None:
    image = reference.render(side, side, 256, mandelbrot.VIEWS["full"])
    assert mandelbrot.checksum(image) == mandelbrot.KNOWN_CHECKSUMS[(side, 256, "full")]


# ---------------------------------------------------------------------------
# Known properties
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["python", "numba"])
def test_known_points(kernel: str) -> None:
    if kernel == "numba":
        from kernels.mandelbrot.jit import escape_count
    else:
        escape_count = reference.escape_count
    assert escape_count(0.0, 0.0, 77) == 77  # in the set
    assert escape_count(-2.0, 0.0, 77) == 77  # |z|^2 reaches 4 exactly, never exceeds it
    assert escape_count(0.25, 0.0, 77) == 77  # the cusp: converges (slowly) to 0.5
    assert escape_count(2.0, 0.0, 77) == 2  # z: 0, 2, 6
    assert escape_count(1.0, 0.0, 77) == 3  # z: 0, 1, 2, 5
    assert escape_count(3.0, 0.0, 77) == 1  # z: 0, 3
    assert escape_count(2.0, 0.0, 1) == 1  # capped at max_iter


def test_inside_and_outside_views() -> None:
    inside = mandelbrot.render(24, 17, max_iter=300, region=mandelbrot.VIEWS["inside"],
                               strategy="numpy")
    assert (inside == 300).all()  # the main cardioid
    outside = mandelbrot.render(32, 23, max_iter=300, region=mandelbrot.VIEWS["outside"],
                                strategy="numpy")
    assert 1 <= outside.min() and outside.max() <= 5


def test_full_view_is_symmetric_about_the_real_axis() -> None:
    # Height 32: dy = 2.5/32 is exact, so row i and row 32 - i have ci of opposite sign
    # exactly, and the iteration for conj(c) is the mirror of that for c, bit for bit.
    image = mandelbrot.render(48, 32, max_iter=200, strategy="numba", workers=1)
    assert np.array_equal(image[1:], image[1:][::-1])


def test_count_is_the_pixel_formula() -> None:
    # One pixel per call at the region's corner: c is exactly (x0, y0).
    region = (-0.75, 0.25, 0.1, 0.6)
    image = mandelbrot.render(4, 4, max_iter=500, region=region, strategy="numba", workers=1)
    x0, dx, y0, dy = mandelbrot.pixel_steps(region, 4, 4)
    for i in range(4):
        for j in range(4):
            assert image[i, j] == reference.escape_count(x0 + j * dx, y0 + i * dy, 500)


def test_no_fma_in_numba_kernels() -> None:
    # Fused multiply-adds round once instead of twice and would change counts near the
    # boundary. numba's fastmath=False forbids LLVM to contract; check the machine code
    # (compiled fresh: numba cannot show the code of cached functions).
    code = (
        "import numpy as np\n"
        "from kernels.mandelbrot import jit\n"
        "img = np.zeros((4, 8), np.int32)\n"
        "s, e = np.array([0, 2]), np.array([2, 4])\n"
        "jit.render_static(img, -2.0, 0.3, -1.0, 0.5, s, e, 20)\n"
        "jit.render_dynamic(img, -2.0, 0.3, -1.0, 0.5, s, e, 20, 2)\n"
        "jit.render_rows(img, -2.0, 0.3, -1.0, 0.5, 0, 20)\n"
        "for f in (jit.render_rows, jit.render_static, jit.render_dynamic):\n"
        "    asm = f.inspect_asm(f.signatures[0])\n"
        "    assert 'vmulpd' in asm or 'mulsd' in asm, f\n"
        "    assert not any(k in asm for k in ('vfmadd', 'vfmsub', 'vfnmadd', 'vfnmsub')), f\n"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


def _plan(**kw):
    args = dict(width=512, height=300, max_iter=256, region=mandelbrot.DEFAULT_REGION,
                strategy="threaded", inner="numba", workers=2, schedule="static")
    args.update(kw)
    return mandelbrot._plan(**args)


def _covers_once(ranges, height: int) -> None:
    rows = sorted(r for first, end in ranges for r in range(first, end))
    assert rows == list(range(height))


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_static_is_one_band_per_worker(workers: int) -> None:
    plan = _plan(workers=workers)
    ranges = mandelbrot.plan_rows(plan)
    assert len(ranges) == workers
    sizes = [end - first for first, end in ranges]
    assert max(sizes) - min(sizes) <= 1
    _covers_once(ranges, plan.height)


def test_static_stays_one_band_per_worker_past_the_task_cap() -> None:
    # Pieces in rounds would pair unequal pieces in every round (a worse schedule), so a
    # static band is never cut, however long it takes.
    plan = _plan(width=4096, height=1000, strategy="numba", inner=None, workers=2)
    assert mandelbrot.rows_per_task(plan) < 500
    assert mandelbrot.plan_rows(plan) == [(0, 500), (500, 1000)]


@pytest.mark.parametrize("height,workers,tile", [(300, 2, 9), (64, 2, 8), (1024, 2, 32),
                                                 (1024, 3, 21)])
def test_dynamic_is_many_small_tiles(height: int, workers: int, tile: int) -> None:
    plan = _plan(height=height, workers=workers, schedule="dynamic")
    assert mandelbrot.tile_rows(plan) == tile
    tiles = mandelbrot.plan_rows(plan)
    assert len(tiles) == -(-height // tile)
    assert all(end - first <= tile for first, end in tiles)
    _covers_once(tiles, height)
    assert [t[4:6] for t in mandelbrot.plan_tasks(plan)] == tiles


def test_one_core_plans_are_few_bands_within_the_cap() -> None:
    plan = _plan(width=1024, height=1024, strategy="numpy", inner=None, workers=1)
    ranges = mandelbrot.plan_rows(plan)
    cap = mandelbrot.rows_per_task(plan)
    assert len(ranges) == -(-1024 // cap)
    _covers_once(ranges, 1024)


def test_more_workers_than_rows() -> None:
    got = mandelbrot.render(40, 2, max_iter=50, strategy="threaded", workers=5,
                            schedule="static")
    assert np.array_equal(got, reference.render(40, 2, 50, mandelbrot.DEFAULT_REGION))


@pytest.mark.parametrize("kernel", ["python", "numpy", "numba"])
def test_no_dynamic_task_exceeds_its_cap(kernel: str) -> None:
    # What bounds the wait for Ctrl-C: a task's worst case (every pixel at max_iter).
    for strategy, inner in (("threaded", kernel), (kernel, None)):
        plan = _plan(width=1024, height=1024, strategy=strategy, inner=inner,
                     workers=1 if kernel != "numba" and inner is None else 2,
                     schedule="dynamic")
        for first, end in mandelbrot.plan_rows(plan):
            assert (end - first) * 1024 * 256 <= mandelbrot.MAX_TASK_ITERATIONS[kernel]


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the parameter, before any pool starts
# ---------------------------------------------------------------------------

BAD = [
    (dict(width=0), ValueError, "width must be an int in"),
    (dict(width=-3), ValueError, "width"),
    (dict(width=1.5), TypeError, "width must be an int"),
    (dict(width=True), TypeError, "width"),
    (dict(width="48"), TypeError, "width"),
    (dict(height=0), ValueError, "height must be an int in"),
    (dict(height=False), TypeError, "height"),
    (dict(height=2**21), ValueError, "height"),
    (dict(max_iter=0), ValueError, r"max_iter must be an int in \[1, "),
    (dict(max_iter=10.0), TypeError, "max_iter"),
    (dict(max_iter=True), TypeError, "max_iter"),
    (dict(region=(0.0, 1.0, 0.0)), ValueError, "region must be 4 finite"),
    (dict(region="abcd"), TypeError, "region"),
    (dict(region=None), TypeError, "region"),
    (dict(region=(0.0, float("nan"), 0.0, 1.0)), ValueError, "x1"),
    (dict(region=(0.0, 1.0, float("-inf"), 1.0)), ValueError, "y0"),
    (dict(region=(1.0, 0.0, 0.0, 1.0)), ValueError, "x0 < x1"),
    (dict(region=(0.0, 1.0, 1.0, 1.0)), ValueError, "y0 < y1"),
    (dict(region=(0.0, 1.0, True, 1.0)), TypeError, "y0"),
    (dict(region=(-1e308, 1e308, 0.0, 1.0)), ValueError, "overflows"),
    (dict(schedule="guided"), ValueError, "schedule must be one of static, dynamic"),
    (dict(schedule=None), ValueError, "schedule"),
    (dict(strategy="cuda"), ValueError, "strategy must be one of"),
    (dict(strategy="numba", inner="numpy"), ValueError, "inner applies only to"),
    (dict(strategy="threaded", inner="fortran"), ValueError, "inner must be one of"),
    (dict(strategy="python", workers=2), ValueError, "runs on one core"),
    (dict(strategy="numpy", workers=3), ValueError, "runs on one core"),
    (dict(strategy="multiprocess", workers=0), ValueError, "workers must be >= 1"),
    (dict(strategy="threaded", workers=10**6), ValueError, "workers must be <="),
    (dict(strategy="threaded", workers=2.0), TypeError, "workers"),
]


@pytest.fixture
def no_pool(monkeypatch):
    """Any pool start (or thread cap) fails the test: errors must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("a pool was started before the arguments were checked")

    monkeypatch.setattr(executors, "get_executor", refuse)
    monkeypatch.setattr(executors, "limit_threads", refuse)


@pytest.mark.parametrize("kwargs,exc,match", BAD)
def test_bad_input_is_refused_before_any_pool(no_pool, kwargs, exc, match) -> None:
    args = dict(width=48, height=32, strategy="multiprocess", workers=2)
    args.update(kwargs)
    w, h = args.pop("width"), args.pop("height")
    with pytest.raises(exc, match=match):
        mandelbrot.render(w, h, **args)


def test_memory_budget_is_checked_before_any_pool(no_pool, monkeypatch) -> None:
    monkeypatch.setenv(memory.ENV_VAR, str(1 << 20))
    with pytest.raises(memory.MemoryBudgetError, match="mandelbrot 1024x1024"):
        mandelbrot.render(1024, 1024, strategy="multiprocess", workers=2)
    # 1024x512 int32 is 2 MiB: the image alone is over the budget, whatever the strategy.
    with pytest.raises(memory.MemoryBudgetError, match="lower width and height"):
        mandelbrot.render(1024, 512, strategy="numba", workers=1)


def test_bytes_needed_counts_what_a_pool_holds() -> None:
    serial = mandelbrot.bytes_needed(_plan(strategy="numba", inner=None))
    assert serial == 4 * 512 * 300
    assert mandelbrot.shared_bytes(_plan(strategy="numba", inner=None)) == 0
    for strategy in executors.POOL_STRATEGIES:
        # The shared image the tasks write, and the copy returned.
        assert mandelbrot.bytes_needed(_plan(strategy=strategy)) == 2 * serial
        assert mandelbrot.shared_bytes(_plan(strategy=strategy)) == serial
    assert mandelbrot.bytes_needed(_plan(inner="numpy")) > 2 * serial


def test_pool_rows_that_do_not_come_back_are_refused(monkeypatch) -> None:
    # An executor that gives tasks a copy of the image (as one scattering it to remote
    # workers would) loses the rows: the per-task checksums catch it.
    def run_shared_on_a_copy(kind, fn, arrays, make_tasks, workers, **kwargs):
        copy = {name: array.copy() for name, array in arrays.items()}
        return [fn(task) for task in make_tasks(copy)]

    monkeypatch.setattr(executors, "run_shared", run_shared_on_a_copy)
    with pytest.raises(RuntimeError, match="did not come back from the threaded executor"):
        mandelbrot.render(48, 32, max_iter=50, strategy="threaded", workers=2)


def test_no_shared_segment_left_behind() -> None:
    from kernels import shared_memory

    before = shared_memory.live_segments()
    mandelbrot.render(48, 32, max_iter=50, strategy="multiprocess", workers=2)
    with pytest.raises(ValueError):
        mandelbrot.render(48, 32, max_iter=50, strategy="multiprocess", workers=2,
                          region=(1.0, 0.0, 0.0, 1.0))
    assert shared_memory.live_segments() == before


# ---------------------------------------------------------------------------
# Harness hooks and the registry
# ---------------------------------------------------------------------------


def test_registry_discovers_mandelbrot() -> None:
    assert "mandelbrot" in registry.kernel_names()
    assert registry.kernel_module("mandelbrot") is mandelbrot
    assert [i.name for i in registry.strategies("mandelbrot")] == list(mandelbrot.STRATEGIES)


def test_spec_is_consistent() -> None:
    spec = registry.spec("mandelbrot")
    assert spec is mandelbrot.SPEC
    assert spec.strategies == mandelbrot.STRATEGIES
    assert spec.strategies[:3] == ("python", "numpy", "numba")
    assert set(spec.strategies[3:]) == set(executors.POOL_STRATEGIES)
    assert set(spec.serial) <= set(spec.strategies)
    assert set(spec.size_limits) <= set(spec.strategies) | set(registry.INNERS)
    assert spec.default_sizes == mandelbrot.DEFAULT_SIZES
    assert all(1 <= s <= spec.max_size for s in spec.default_sizes)
    assert {o.name for o in spec.options} == set(mandelbrot._CASE_OPTIONS)
    options = {o.name: o for o in spec.options}
    assert options["max_iter"].is_int and options["max_iter"].low == 1
    assert options["schedule"].choices == mandelbrot.SCHEDULES
    assert options["view"].choices == tuple(mandelbrot.VIEWS)
    assert spec.size_limit("threaded", "python") == spec.size_limits["python"]
    assert spec.inners("multiprocess") == registry.INNERS and spec.inners("numba") == ()


def test_make_case_runs_and_describes() -> None:
    case = mandelbrot.make_case(1 << 16, strategy="numba", workers=1)
    counts = case.run()
    assert counts.shape == (256, 256)
    row = case.describe(counts, 0.01)
    assert row["checksum"] == mandelbrot.KNOWN_CHECKSUMS[(256, 256, "full")]
    assert row["correct"] is True
    assert row["ns_per_iteration_per_core"] == pytest.approx(0.01 / row["checksum"] * 1e9)
    assert case.fields == {"width": 256, "height": 256, "max_iter": 256,
                           "schedule": "dynamic", "view": "full", "workers_used": 1}


def test_make_case_options() -> None:
    # 10**4 pixels is not a square: the side is isqrt(10**4 + 7) = 100.
    case = mandelbrot.make_case(10**4 + 7, strategy="threaded", inner="numpy", workers=2,
                                max_iter=64, schedule="static", view="seahorse")
    counts = case.run()
    assert counts.shape == (100, 100)
    assert np.array_equal(counts, reference.render(100, 100, 64, mandelbrot.VIEWS["seahorse"]))
    row = case.describe(counts, 0.5)
    assert row["correct"] is None  # not a size of KNOWN_CHECKSUMS
    # threaded:numpy never splits (MIN_GRAIN: the GIL), so one core ran it.
    assert case.fields["workers_used"] == 1
    assert row["ns_per_iteration_per_core"] == pytest.approx(0.5 / row["checksum"] * 1e9)


@pytest.mark.parametrize("options,match", [
    (dict(seed=1), "mandelbrot takes no option seed"),
    (dict(view="nope"), "view must be one of full"),
    (dict(max_iter=0), "max_iter"),
    (dict(schedule="guided"), "schedule"),
])
def test_check_case_refuses_what_make_case_would(no_pool, options, match) -> None:
    with pytest.raises(ValueError, match=match):
        mandelbrot.check_case(1 << 16, strategy="multiprocess", workers=2, **options)
    with pytest.raises(ValueError, match=match):
        mandelbrot.make_case(1 << 16, strategy="multiprocess", workers=2, **options)


@pytest.mark.parametrize("size,exc", [(0, ValueError), (2**36 + 1, ValueError),
                                      (1.5, TypeError), (True, TypeError)])
def test_check_case_size(size, exc) -> None:
    with pytest.raises(exc, match=r"size \(pixels\)"):
        mandelbrot.check_case(size, strategy="numba", workers=1)


def test_check_case_builds_nothing(no_pool) -> None:
    mandelbrot.check_case(1 << 18, strategy="multiprocess", inner="numpy", workers=2,
                          max_iter=1000, schedule="static", view="upper")


@pytest.mark.parametrize("label,workers", [("numba", 2), ("threaded:numpy", 3),
                                           ("python", 2), ("multiprocess:numba", 2)])
def test_verify_passes(label: str, workers: int) -> None:
    strategy, inner = registry.parse_label(label)
    checks = mandelbrot.verify(strategy, inner, workers)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]
    names = {c.name.split()[0] for c in checks}
    assert {"full", "seahorse", "inside", "outside"} <= names


def test_verify_cases_are_small() -> None:
    for _name, case in mandelbrot.verify_cases():
        assert case["width"] * case["height"] <= 48 * 36


# ---------------------------------------------------------------------------
# The asv suite: imports, its cold-start code runs
# ---------------------------------------------------------------------------


def _suite():
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("benchmarks.bench_mandelbrot")


def test_suite_cold_start_code_runs() -> None:
    code = _suite().ColdStart().timeraw_cold_start("numba", 1)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def test_suite_gate_params_are_in_params_and_not_skipped() -> None:
    bench = _suite().TimeRender
    for grid in bench.gate_params:
        for values, allowed in zip(grid, bench.params, strict=True):
            assert set(values) <= set(allowed)
        for combo in itertools.product(*grid):
            assert bench().skip_reason(*combo) is None, combo


def test_suite_imbalance_setup_and_track() -> None:
    bench = _suite().StaticImbalance()
    bench.setup("upper", 2)
    ratio = bench.track_static_imbalance("upper", 2)
    assert ratio >= 1.0


# ---------------------------------------------------------------------------
# The minimum grain (issue 15): a second worker only above MIN_GRAIN worst-case
# pixel-iterations per worker
# ---------------------------------------------------------------------------

GRAIN_LABELS = [("numba", None), ("threaded", "numba"), ("threaded", "numpy"),
                ("multiprocess", "numba")]


@pytest.mark.parametrize("schedule", mandelbrot.SCHEDULES)
@pytest.mark.parametrize(("strategy", "inner"), GRAIN_LABELS)
def test_below_the_grain_two_workers_run_one_with_the_same_image(
        monkeypatch, strategy, inner, schedule) -> None:
    label = registry.label(strategy, inner)
    width, height, max_iter = 48, 36, 100
    want = reference.render(width, height, max_iter, mandelbrot.DEFAULT_REGION)
    kw = dict(max_iter=max_iter, strategy=strategy, inner=inner, schedule=schedule)
    work = width * height * max_iter
    monkeypatch.setitem(mandelbrot.MIN_GRAIN, label, work)  # one grain: below two workers'
    assert mandelbrot.workers_used(width, height, workers=2, **kw) == 1
    assert np.array_equal(mandelbrot.render(width, height, workers=2, **kw), want)
    monkeypatch.setitem(mandelbrot.MIN_GRAIN, label, work // 2)
    assert mandelbrot.workers_used(width, height, workers=2, **kw) == 2
    assert np.array_equal(mandelbrot.render(width, height, workers=2, **kw), want)


def test_below_the_grain_a_pool_gets_one_task_per_worker_used(monkeypatch) -> None:
    calls = []
    real = executors.run_shared

    def spy(kind, fn, arrays, make_tasks, workers, **kw):
        def counted(handle):
            tasks = make_tasks(handle)
            calls.append((fn.__name__, len(tasks), workers))
            return tasks
        return real(kind, fn, arrays, counted, workers, **kw)

    monkeypatch.setattr(executors, "run_shared", spy)
    args = dict(max_iter=100, strategy="threaded", inner="numba", workers=2)
    monkeypatch.setitem(mandelbrot.MIN_GRAIN, "threaded:numba", 64 * 64 * 100)
    image = mandelbrot.render(64, 64, **args)
    monkeypatch.setitem(mandelbrot.MIN_GRAIN, "threaded:numba", 1)
    assert np.array_equal(mandelbrot.render(64, 64, **args), image)
    tiles = -(-64 // mandelbrot.DYNAMIC_TILE_ROWS)
    assert calls == [("run_tasks_into", 1, 2), ("run_task_into", tiles, 2)]


def test_make_case_records_the_workers_used() -> None:
    small = mandelbrot.make_case(1 << 14, strategy="numba", workers=2)
    assert small.fields["workers_used"] == 1  # 128x128: below numba's grain
    big = mandelbrot.make_case(1 << 20, strategy="numba", workers=2)
    assert big.fields["workers_used"] == 2
    assert mandelbrot.make_case(1 << 14, strategy="numpy", workers=1).fields["workers_used"] == 1
    row = big.describe(big.run(), 1e-2)
    assert row["correct"] is True
    assert row["ns_per_iteration_per_core"] == pytest.approx(2 * 1e-2 / row["checksum"] * 1e9)
