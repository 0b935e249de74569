"""A suite module for tests/test_benchmarks.py: benchmarks.common.race_groups imports it
in a fresh interpreter and calls race_group there."""

import os


def race_group(group: str) -> dict:
    if group == "boom":
        raise RuntimeError("this group cannot be raced")
    if group == "crash":
        os._exit(3)
    return {"times": {(group, "pid"): [float(os.getpid())]}, "failed": {}}
