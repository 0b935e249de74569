"""Module-level task functions for executor tests.

Process-pool workers are forked by a forkserver and receive tasks pickled by
reference, so the functions they run must live in an importable module, not in a
test body (pytest puts tests/ on sys.path, and the pool copies sys.path to workers).
"""

from __future__ import annotations

import os
import time


class TaskFailed(Exception):
    """Raised by :func:`fail_on`; a custom type, to check the caller sees the worker's type."""


def square(x: int) -> int:
    """x*x, slower for small x so that tasks finish out of order on a pool."""
    time.sleep(0.002 * (x % 3 == 0))
    return x * x


def pid_of(_task: object) -> int:
    """The id of the process that ran the task."""
    time.sleep(0.01)  # long enough that one worker cannot take every task
    return os.getpid()


def fail_on(x: int) -> int:
    """Raise TaskFailed for x == 3, else return x."""
    if x == 3:
        raise TaskFailed(f"task {x} failed on purpose")
    return x


def value_error_on(x: int) -> int:
    """Raise ValueError for x == 2, else return x."""
    if x == 2:
        raise ValueError(f"bad task {x}")
    return x
