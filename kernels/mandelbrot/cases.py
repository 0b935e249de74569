"""Mandelbrot's harness hooks: ``check_case``, ``make_case``, ``verify`` (no timing here).

What the registry's contract asks of a kernel beyond its spec (kernels/registry.py):
a case of ``size`` pixels for ``kernelrace run`` and the asv suite, and the checks of
every strategy against the pure-Python reference that ``kernelrace verify`` and the
tests run. Kept apart from the kernel itself (``kernels/mandelbrot/__init__.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from kernels import registry
from kernels.mandelbrot import (
    _SERIAL_STRATEGIES,
    DEFAULT_MAX_ITER,
    DEFAULT_SCHEDULE,
    DEFAULT_VIEW,
    MAX_PIXELS,
    SCHEDULES,
    STRATEGIES,
    VIEWS,
    _Plan,
    _plan,
    _run,
    checksum,
    render,
)

_CASE_OPTIONS = ("max_iter", "schedule", "view")

#: Checksums of the square images the harness renders, by (side, max_iter, view):
#: sides 256, 512 and 1024 computed by the pure-Python reference (and equal with numpy
#: and numba), 2048 by numpy and numba, which agree. ``test_known_checksums``
#: recomputes the 256 one with the reference.
KNOWN_CHECKSUMS: dict[tuple[int, int, str], int] = {
    (256, 256, "full"): 4_426_010,
    (512, 256, "full"): 17_696_972,
    (1024, 256, "full"): 70_742_812,
    (2048, 256, "full"): 282_893_053,
}


def side_for(size: int) -> int:
    """The side of the square image the harness renders for ``size`` pixels:
    ``isqrt(size)``, so the image holds ``side**2 <= size`` pixels (exactly ``size``
    for a perfect square such as 2**16 and 2**18)."""
    return math.isqrt(size)


def cores_used(strategy: str, workers: int) -> int:
    """Cores a strategy is given: ``workers`` for the parallel ones, 1 for python/numpy.
    What a render really runs on can be fewer (``_Plan.workers_used``)."""
    return 1 if strategy in _SERIAL_STRATEGIES else workers


def _case_plan(
    size: Any, strategy: str, inner: str | None, workers: Any, options: dict[str, Any]
) -> tuple[_Plan, str]:
    unknown = sorted(set(options) - set(_CASE_OPTIONS))
    if unknown:
        raise ValueError(
            f"mandelbrot takes no option {', '.join(unknown)}; options: {', '.join(_CASE_OPTIONS)}"
        )
    size = registry.check_int("size (pixels)", size, 1, MAX_PIXELS)
    view = options.get("view", DEFAULT_VIEW)
    if not isinstance(view, str) or view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}; got {view!r}")
    side = side_for(size)
    plan = _plan(side, side, options.get("max_iter", DEFAULT_MAX_ITER), VIEWS[view],
                 strategy, inner, workers, options.get("schedule", DEFAULT_SCHEDULE))
    return plan, view


def check_case(
    size: int, *, strategy: str, inner: str | None = None, workers: int = 1, **options: Any
) -> None:
    """Raise what :func:`make_case` would raise for these arguments; builds nothing."""
    _case_plan(size, strategy, inner, workers, options)


def make_case(
    size: int, *, strategy: str, inner: str | None = None, workers: int = 1, **options: Any
) -> registry.Case:
    """A prepared render of ``side_for(size)`` squared pixels for the harness; nothing
    runs until ``run()``.

    ``options``: ``max_iter``, ``schedule``, ``view`` (a name of :data:`VIEWS`); anything
    else is refused (ValueError). ``describe`` gives the checksum (total iterations),
    whether it matches :data:`KNOWN_CHECKSUMS` where known, the mean iterations per
    pixel, iterations per second and nanoseconds per iteration per core used.
    """
    plan, view = _case_plan(size, strategy, inner, workers, options)

    def run() -> np.ndarray:
        return _run(plan)

    def describe(counts: np.ndarray, seconds: float) -> dict[str, Any]:
        total = checksum(counts)
        known = KNOWN_CHECKSUMS.get((plan.width, plan.max_iter, view))
        cores = plan.workers_used
        return {
            "checksum": total,
            "correct": None if known is None else total == known,
            "iterations_per_pixel": total / plan.pixels,
            "iterations_per_s": total / seconds if seconds > 0 else math.nan,
            "ns_per_iteration_per_core": seconds * cores / total * 1e9,
        }

    # workers_used: the workers that really ran (fewer than asked below MIN_GRAIN).
    fields = {"width": plan.width, "height": plan.height, "max_iter": plan.max_iter,
              "schedule": plan.schedule, "view": view, "workers_used": plan.workers_used}
    return registry.Case(run=run, describe=describe, fields=fields)


def list_extra() -> str:
    """What ``kernelrace list`` prints after the strategies: the views and the options."""
    views = "; ".join(f"{name} {region}" for name, region in VIEWS.items())
    return (f"mandelbrot: size = pixels of a square image of side isqrt(size); views: {views}; "
            f"options max_iter (default {DEFAULT_MAX_ITER}), schedule ({', '.join(SCHEDULES)}; "
            f"default {DEFAULT_SCHEDULE}), view (default {DEFAULT_VIEW})")


# Small enough for the pure-Python kernel (~0.1 s for all four), with heights that are
# not multiples of the tile or of the worker counts, so bands and tiles are ragged.
_VERIFY_CASES = (
    ("full", 48, 36, 100),
    ("seahorse", 40, 30, 200),
    ("inside", 24, 17, 64),
    ("outside", 32, 23, 64),
)
# Single pixels with known counts: c = 0 and c = -2 never escape (|z|^2 stays 0, and
# reaches exactly 4 without exceeding it), c = 2 escapes after 2 iterations (z: 0, 2, 6),
# c = 1 after 3 (z: 0, 1, 2, 5), c = 0.25 converges slowly to 0.5 and never escapes.
_KNOWN_POINTS = ((0.0, 0.0, None), (-2.0, 0.0, None), (2.0, 0.0, 2), (1.0, 0.0, 3),
                 (0.25, 0.0, None))


def verify_cases() -> list[tuple[str, dict[str, Any]]]:
    """The small inputs :func:`verify` checks every strategy on (render's arguments)."""
    return [
        (f"{view} {w}x{h} max_iter={m}",
         {"width": w, "height": h, "max_iter": m, "region": VIEWS[view]})
        for view, w, h, m in _VERIFY_CASES
    ]


@lru_cache(maxsize=16)
def reference_image(
    width: int, height: int, max_iter: int, region: tuple[float, float, float, float]
) -> np.ndarray:
    """The pure-Python reference image (cached: verify compares many strategies with it)."""
    from kernels.mandelbrot import reference

    image = reference.render(width, height, max_iter, region)
    image.setflags(write=False)
    return image


def verify(strategy: str, inner: str | None, workers: int) -> list[registry.Check]:
    """Check a strategy on small views against the pure-Python reference, pixel for pixel.

    Every case of :func:`verify_cases` under both schedules (one for python and numpy,
    where the schedule changes nothing), and single pixels whose counts are known.
    """
    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    if strategy in _SERIAL_STRATEGIES:
        workers = 1  # as the other kernels' verify: one core whatever was asked
    schedules = (DEFAULT_SCHEDULE,) if strategy in _SERIAL_STRATEGIES else SCHEDULES
    kw = {"strategy": strategy, "inner": inner, "workers": workers}
    checks = []
    for name, case in verify_cases():
        want = reference_image(case["width"], case["height"], case["max_iter"], case["region"])
        for schedule in schedules:
            got = render(**case, schedule=schedule, **kw)
            differ = int(np.count_nonzero(got != want))
            checks.append(registry.Check(
                f"{name} {schedule}", differ == 0,
                f"checksum {checksum(got)} vs {checksum(want)}, {differ} pixels differ"))
    max_iter = 50
    for cr, ci, count in _KNOWN_POINTS:
        want = max_iter if count is None else count
        got = int(render(1, 1, max_iter=max_iter, region=(cr, cr + 1.0, ci, ci + 1.0), **kw)[0, 0])
        checks.append(registry.Check(f"c={complex(cr, ci)}", got == want, f"{got} vs {want}"))
    return checks


def render_iterations(size: Any) -> float | None:
    """Escape iterations of one render of the suite's image (the default view, max_iter
    256) at ``size`` pixels: the known checksum (the total iteration count) for that
    side, else the mean per pixel of the largest known side times the pixels (the mean
    is 67.3-67.5 at every side from 128 to 2048, measured)."""
    if registry.size_units(size) is None:
        return None
    side = side_for(int(size))
    known = {s: c for (s, it, v), c in KNOWN_CHECKSUMS.items()
             if it == DEFAULT_MAX_ITER and v == DEFAULT_VIEW}
    if side in known:
        return float(known[side])
    if not known:
        return None
    largest = max(known)
    return known[largest] / largest**2 * side**2


def workers_used_at(size: int, strategy: str, inner: str | None, workers: int,
                    **options: Any) -> int:
    """The workers a render of the harness's square image of ``size`` pixels runs on
    (:class:`kernels.registry.KernelSpec` ``workers_used``); options it does not know
    are ignored."""
    known = {k: v for k, v in options.items() if k in _CASE_OPTIONS}
    return _case_plan(int(size), strategy, inner, workers, known)[0].workers_used
