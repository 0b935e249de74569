"""The quick runner: time a grid of (strategy, size, workers) in this process.

This is what ``kernelrace run`` uses; asv is the tool for history. Each point is
prepared by the kernel's ``make_case`` (untimed), run ``warmup`` times (JIT compile,
pool start, first touch), then timed ``repeat`` times with ``perf_counter``
(:mod:`kernels.harness.timing`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kernels import executors, registry
from kernels.harness import timing


@dataclass(frozen=True)
class Point:
    strategy: str
    inner: str | None
    size: int
    workers: int


def grid(
    labels: Iterable[str], sizes: Iterable[int], workers: Iterable[int]
) -> list[Point]:
    """Every (strategy, size, workers) point, in the order given."""
    out = []
    for text in labels:
        strategy, inner = registry.parse_label(text)
        for size in sizes:
            for w in workers:
                out.append(Point(strategy, inner, int(size), int(w)))
    return out


def time_call(fn: Callable[[], Any], repeat: int, warmup: int) -> tuple[Any, list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times timed; seconds per run
    (the harness's one loop, :func:`kernels.harness.timing.time_calls`)."""
    return timing.time_calls(fn, repeat, warmup)


def run_point(
    kernel: str, point: Point, *, repeat: int, warmup: int, options: dict[str, Any]
) -> dict[str, Any]:
    """Time one point; returns a row with the common fields and the kernel's own."""
    module = registry.kernel_module(kernel)
    case = module.make_case(
        point.size, strategy=point.strategy, inner=point.inner, workers=point.workers, **options
    )
    try:
        result, times = time_call(case.run, repeat, warmup)
    finally:
        case.close()
    median = statistics.median(times)
    row: dict[str, Any] = {
        "kernel": kernel,
        "strategy": point.strategy,
        "inner": point.inner,
        "size": point.size,
        "workers": point.workers,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "repeat": repeat,
    }
    row.update(case.fields)
    row.update(case.describe(result, median))
    row.update(executors.describe_warm(point.strategy, point.workers))  # e.g. cluster size
    return row


MAX_REPEAT = 10**6


def check_points(kernel: str, points: list[Point], options: dict[str, Any]) -> None:
    """Raise what the first bad point's ``make_case`` would, before any point is timed.

    Uses the kernel's ``check_case`` (which builds nothing: a case may fill gigabytes
    of input); the error says which point it is.
    """
    module = registry.kernel_module(kernel)
    check = getattr(module, "check_case", None)
    for point in points:
        kwargs = dict(strategy=point.strategy, inner=point.inner, workers=point.workers)
        try:
            if check is not None:
                check(point.size, **kwargs, **options)
            else:  # a kernel without check_case: make_case must then be cheap
                module.make_case(point.size, **kwargs, **options).close()
        except (ValueError, TypeError, RuntimeError) as exc:
            kind = type(exc) if type(exc) in (ValueError, TypeError, RuntimeError) else ValueError
            raise kind(f"{describe_point(point)}: {exc}") from exc


def describe_point(point: Point) -> str:
    """``threaded:numba size=1000 workers=2``, as the progress line and errors write it."""
    label = registry.label(point.strategy, point.inner)
    return f"{label} size={point.size} workers={point.workers}"


def _check_counts(repeat: Any, warmup: Any) -> None:
    for name, value, low in (("repeat", repeat, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or not (
                low <= value <= MAX_REPEAT):
            raise ValueError(f"{name} must be an int in [{low}, {MAX_REPEAT}], got {value!r}")


def run_grid(
    kernel: str,
    points: list[Point],
    *,
    repeat: int,
    warmup: int,
    options: dict[str, Any],
    progress: Callable[[Point], Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Time every point in turn, yielding rows as they finish.

    Every point is checked (:func:`check_points`) before the first is timed.
    """
    _check_counts(repeat, warmup)
    check_points(kernel, points, options)
    for point in points:
        if progress is not None:
            progress(point)
        yield run_point(kernel, point, repeat=repeat, warmup=warmup, options=options)


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Set ``speedup`` on each row: the first strategy's time at the same size and workers,
    over the row's own."""
    rows = [r for r in rows if "median_s" in r]  # a failed point's row has no time
    if not rows:
        return
    first = (rows[0]["strategy"], rows[0]["inner"])
    base = {
        (r["size"], r["workers"]): r["median_s"]
        for r in rows
        if (r["strategy"], r["inner"]) == first
    }
    for r in rows:
        b = base.get((r["size"], r["workers"]))
        r["speedup"] = (b / r["median_s"]) if b and r["median_s"] > 0 else None
