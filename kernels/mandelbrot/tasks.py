"""Mandelbrot's tasks: what a chunk task carries, and the functions pool workers run.

Module-level functions, so that process and Dask workers find them by import; kept apart
from the plan (:mod:`kernels.mandelbrot`), which decides which rows each task holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels import executors

#: (chunk kernel, region, width, height, first row, end row (exclusive), max_iter)
Task = tuple[str, tuple[float, float, float, float], int, int, int, int, int]


def pixel_steps(
    region: tuple[float, float, float, float], width: int, height: int
) -> tuple[float, float, float, float]:
    """``(x0, dx, y0, dy)``: pixel ``(i, j)`` is ``(x0 + j*dx) + (y0 + i*dy)i``.

    The one place the steps are computed, so every kernel and every task uses the same
    doubles (a step computed as ``x1 / width - x0 / width`` would differ in the last bit).
    """
    x0, x1, y0, y1 = region
    return x0, (x1 - x0) / width, y0, (y1 - y0) / height


def _render_into(rows: np.ndarray, kernel: str, region: tuple[float, float, float, float],
                 width: int, height: int, first: int, max_iter: int) -> None:
    x0, dx, y0, dy = pixel_steps(region, width, height)
    if kernel == "numba":
        from kernels.mandelbrot import jit

        jit.render_rows(rows, x0, dx, y0, dy, first, max_iter)
        return
    if kernel == "numpy":
        from kernels.mandelbrot.vectorized import render_rows
    else:
        from kernels.mandelbrot.reference import render_rows
    rows[...] = render_rows(x0, dx, y0, dy, first, rows.shape[0], width, max_iter)


def run_task(task: Task) -> np.ndarray:
    """Counts of one task's rows (int32, ``(rows, width)``), with its chunk kernel.

    Module-level so that process-pool workers find it by import.
    """
    kernel, region, width, height, first, end, max_iter = task
    rows = np.empty((end - first, width), dtype=np.int32)
    _render_into(rows, kernel, region, width, height, first, max_iter)
    return rows


def run_task_into(task: tuple[dict[str, Any], *Task]) -> int:
    """The pool strategies' task: ``(handle, *Task)``. Renders its rows into the shared
    image that ``handle`` stands for (:func:`kernels.executors.shared_arrays`) and
    returns their checksum, which the caller compares with what it finds in the image.

    Why not return the rows: a process pool sends results through a pipe that holds
    64 KiB, and a row band of a megapixel image (128 KiB to 2 MiB) then crosses in many
    hand-offs, each waiting for the parent's result thread to be scheduled: 2-worker
    renders took 5-10x the 1-worker time on the shared 2-core VM (docs/mandelbrot.md).
    """
    handle, kernel, region, width, height, first, end, max_iter = task
    rows = executors.shared_arrays(handle)["image"][first:end]
    _render_into(rows, kernel, region, width, height, first, max_iter)
    return int(rows.sum(dtype=np.int64))


def run_tasks(tasks: list[Task]) -> list[np.ndarray]:
    """:func:`run_task` of several tasks, one after another: the one task per worker used
    below the grain, for an executor whose tasks return their rows."""
    return [run_task(task) for task in tasks]


def run_tasks_into(tasks: list[tuple[dict[str, Any], *Task]]) -> list[int]:
    """:func:`run_task_into` of several tasks, one after another: the one task per worker
    used below the grain; their checksums in order."""
    return [run_task_into(task) for task in tasks]


def _batches(tasks: list[Any], parts: int) -> list[list[Any]]:
    """``tasks`` cut into ``parts`` contiguous runs (one per worker used)."""
    return [tasks[k * len(tasks) // parts : (k + 1) * len(tasks) // parts] for k in range(parts)]
