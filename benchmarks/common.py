"""Shared pieces of the asv suite: the worker counts every kernel is raced at.

asv imports this suite from the installed ``kernels`` package (under
``--python=same`` PYTHONPATH is dropped), so everything here imports ``kernels``.
"""

from collections.abc import Callable
from typing import Any

from kernels import executors, registry

WORKERS = [1, 2]
# Strategies whose cold start (import, JIT load, pool start) the suites time.
COLD_START_LABELS = ["numpy", "numba", "threaded:numba", "multiprocess:numba"]
# A Dask LocalCluster's start (about 2 s) is a cold start too, where Dask is installed
# (asv's per-commit environments do not install the distributed extra).
if executors.pool_unavailable_reason("distributed") is None:
    COLD_START_LABELS.append("distributed:numba")


class WarmTime:
    """Base of the warm ``time_`` benchmarks: one call per sample (``number = 1``), up to
    five samples in ten seconds, no asv warm-up (``setup`` warms the JIT and the pool
    itself, and checks the answer). Subclasses set ``params`` and may raise ``timeout``.
    Not a benchmark itself."""

    number = 1
    repeat = (1, 5, 10.0)
    warmup_time = 0.0
    timeout = 180


def skip(reason: str) -> None:
    """Tell asv to skip this parameter combination (asv treats NotImplementedError so)."""
    raise NotImplementedError(reason)


def skip_unless_raced(kernel: str, label: str, size: int, workers: int) -> tuple[str, str | None]:
    """The one skip rule of every suite, fed by the kernel's spec: skip (asv's
    NotImplementedError) a strategy unavailable here, a size past the spec's limit for
    that strategy or chunk kernel, and a one-core strategy at more than one worker.
    Returns (strategy, inner) otherwise."""
    strategy, inner = registry.parse_label(label)
    spec = registry.spec(kernel)
    reason = registry.unavailable_reason(registry.kernel_module(kernel), strategy)
    if reason:
        skip(reason)
    if size > spec.size_limit(strategy, inner):
        skip(f"{label} is too slow at {spec.size_name} = {size}")
    if strategy in spec.serial and workers > 1:
        skip(f"{label} runs on one core whatever workers is")
    return strategy, inner


def cold_start_code(body: str, *, fresh_jit_cache: bool) -> str:
    """Code for a ``timeraw_`` benchmark: ``body`` in a fresh interpreter.

    With ``fresh_jit_cache`` numba gets an empty cache directory, set before numba is
    imported (pool workers inherit it), so it compiles everything from scratch;
    otherwise it loads what a previous run left in its on-disk cache.
    """
    prelude = ""
    if fresh_jit_cache:
        prelude = (
            "import os, tempfile\n"
            "os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp(prefix='kernelrace-jit-')\n"
        )
    return prelude + body


class ColdStartBase:
    """Base of the cold-start benchmarks: a fresh interpreter runs :meth:`body` for each
    (strategy, workers), and asv times it (``timeraw_``), apart from the warm figures.

    Subclasses set ``params`` and ``body`` and name their ``timeraw_`` method; ``code``
    gives its source, with numba's on-disk cache as a previous run left it, or an empty
    one where ``fresh_jit_cache`` is set. Not a benchmark itself.
    """

    param_names = ["strategy", "workers"]
    number = 1
    repeat = 3
    timeout = 180
    fresh_jit_cache = False

    def body(self, label: str, workers: int) -> str:
        raise NotImplementedError

    def code(self, label: str, workers: int) -> str:
        return cold_start_code(self.body(label, workers), fresh_jit_cache=self.fresh_jit_cache)


def paired_ratios(baseline: Callable[[], Any], other: Callable[[], Any],
                  rounds: int) -> list[float]:
    """How many times faster ``other`` runs than ``baseline`` in each of ``rounds``
    rounds, timed in alternation.

    Each round times one call of each, back to back, and gives baseline time / other
    time. On a shared machine whose speed drifts by tens of percent within minutes, two
    benchmarks timed minutes apart (asv runs every point in its own process) give a
    ratio of the drift as much as of the code; pairing the calls cancels what drifts
    slower than a round. The clock is read as it always was: once before the baseline,
    once between the two calls, once after the other
    (:func:`kernels.harness.timing.alternate`).
    """
    # Imported here, not at the top: asv runs this suite against the kernels package of
    # every commit it benchmarks, and one older than kernels/harness/timing.py should
    # lose only the paired figures, not the whole suite.
    from kernels.harness.timing import alternate

    base_times, other_times = alternate([baseline, other], rounds)
    return [b / o for b, o in zip(base_times, other_times, strict=True)]


def rounds_result(values: list[float]) -> dict[str, Any]:
    """A ``track_`` benchmark's value with its rounds, as asv stores a timing.

    asv takes a result of the form ``{"samples": [...], "number": n}`` from any
    benchmark as a sampled one: the stored value is the samples' median, and its
    ``stats`` keep the interquartile range and a 99% interval for that median
    (``stats_ci_99_a`` / ``_b``, from the order statistics, widened by asv's Laplace
    posterior when there are too few rounds for them). So a paired ratio reaches the
    report with the spread of its own rounds, not as one bare number. Twelve rounds is
    the fewest whose 99% interval is the order statistics' alone (the 2nd smallest to
    the 2nd largest round, 99.4%); with 7, one odd round can widen it several-fold.
    """
    return {"samples": [float(v) for v in values], "number": 1}


class Paired:
    """Base of the ratio benchmarks: ``setup`` warms both sides (JIT, pool start) and
    sets ``pair`` to the two calls (baseline, other); ``ratio()`` is the per-round
    :func:`paired_ratios` over ``ROUNDS`` rounds, returned as :func:`rounds_result`
    (asv stores their median and its interval). Not a benchmark itself."""

    unit = "x"
    timeout = 300
    ROUNDS = 12
    pair: list[Callable[[], Any]]

    def ratio(self) -> dict[str, Any]:
        baseline, other = self.pair
        return rounds_result(paired_ratios(baseline, other, self.ROUNDS))
