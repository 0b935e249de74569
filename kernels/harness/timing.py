"""The one timing loop: warm-up calls, timed repeats, and callables timed in alternation,
all with ``time.perf_counter`` and all giving seconds per call.

Used by the quick runner (:func:`kernels.harness.runner.time_call`, ``kernelrace run``),
the machine's probes (:mod:`kernels.harness.probes`, ``kernelrace machine``) and the asv
suite's paired ratios (``benchmarks/common.alternating_speedup``). Statistics (median,
ratios) stay with the callers: this module only reads the clock.

:mod:`kernels.harness.gate_worker` keeps a loop of its own on purpose: it runs inside
the environment of the commit under test, which may be older than this module.

Kernels never import this module (timing lives in the harness and in ``benchmarks/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any


def time_once(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """Call ``fn(*args)`` once; returns (its result, seconds it took)."""
    t0 = perf_counter()
    result = fn(*args)
    return result, perf_counter() - t0


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> tuple[Any, list[float]]:
    """Call ``fn`` ``warmup`` times untimed (JIT compile, pool start, first touch of
    memory), then ``repeat`` times timed; returns (the last result, seconds per timed
    call)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeat):
        t0 = perf_counter()
        result = fn()
        times.append(perf_counter() - t0)
    return result, times


def alternate(fns: Sequence[Callable[[], Any]], rounds: int,
              warmup: int = 0) -> list[list[float]]:
    """Time two or more callables in alternation, A, B, A, B, ...: each of ``rounds``
    rounds calls every callable once, in order, back to back; returns, per callable,
    its seconds per call (one list per callable, one entry per round).

    The clock is read once between two calls: one call's end is the next one's start.
    ``warmup`` untimed rounds come first. On a machine whose speed drifts, the ratio of
    two callables' times in the same round cancels what drifts slower than a round.
    """
    if not fns:
        raise ValueError("alternate needs at least one callable, got none")
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        t = perf_counter()
        for own, fn in zip(times, fns, strict=True):
            fn()
            now = perf_counter()
            own.append(now - t)
            t = now
    return times
