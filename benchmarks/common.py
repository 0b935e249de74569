"""Shared pieces of the asv suite: the worker counts every kernel is raced at.

asv imports this suite from the installed ``kernels`` package (under
``--python=same`` PYTHONPATH is dropped), so everything here imports ``kernels``.
"""

import atexit
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernels import executors, registry


def exit_cleanly_after_fork(argv: list[str] | None = None) -> bool:
    """In asv's forkserver, make each forked benchmark process end as a spawned one does.

    ``make bench`` runs asv with ``--launch-method forkserver``: one server process
    imports the suite once and forks a process per benchmark point, instead of starting
    a fresh interpreter that imports numba and the kernels again (0.5-0.7 s a point,
    about 2,400 points). But the forked process ends with ``os._exit``, which skips the
    ``atexit`` callbacks: the cached pools (:func:`kernels.executors.shutdown_pools`,
    Dask clusters) would be left for their deaths-with-parent and multiprocessing's
    resource tracker, which warns of "leaked semaphore objects". So in that server
    (``argv[1] == "run_server"``, asv's own command line for it) this registers a fork
    hook under which the forked benchmark process, and no process it forks in turn,
    runs its ``atexit`` callbacks before ``os._exit``. Returns whether it did.
    """
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or argv[1] != "run_server":
        return False
    server = os.getpid()

    def in_child() -> None:
        if os.getppid() != server:
            return
        child, real_exit = os.getpid(), os._exit

        def _exit(status: int) -> None:
            try:
                if os.getpid() == child:
                    atexit._run_exitfuncs()
            finally:
                real_exit(status)

        os._exit = _exit

    os.register_at_fork(after_in_child=in_child)
    return True


exit_cleanly_after_fork()

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


# ---------------------------------------------------------------------------
# One race per suite: every ratio of a size's row paired from the same rounds
# ---------------------------------------------------------------------------

# As Paired.ROUNDS: the fewest whose 99% interval is order statistics alone. `make bench
# QUICK=1` sets 3 (asv's --quick cannot shorten a setup_cache).
RACE_ROUNDS = int(os.environ.get("KERNELRACE_RACE_ROUNDS", "12"))
RACE_SAMPLE_S = 0.005  # a sample repeats a call this long at least (short calls jitter)
RACE_WARM_S = 0.05  # a call shorter than this gets one untimed call before its sample


def race(calls: dict[Any, Callable[[], Any]], rounds: int = RACE_ROUNDS,
         sample_s: float = RACE_SAMPLE_S, warm_s: float = RACE_WARM_S,
         ) -> dict[Any, list[float]]:
    """Seconds per call of every callable in ``calls``, one figure per round.

    Each round times one sample of every callable, one after another: ``number`` calls
    back to back (enough for ``sample_s``, sized on one untimed call each), divided by
    ``number``. Two callables' figures of the same round were taken within one round of
    each other: their ratio, round by round, cancels the machine's drift slower than a
    round, as :func:`paired_ratios` does for one pair, and a whole grid of ratios costs
    one pass over it per round instead of one baseline call per ratio.

    What one call leaves behind must not be charged to the next: another pool's threads
    still spinning, this pool's threads asleep, its data out of cache. A call shorter
    than ``warm_s`` (where that costs a large share) gets one untimed call just before
    its sample: a sample of 1k-context MQA steps with numba at 2 workers, timed right
    after other strategies' calls, took 3-4x as long as after one call of its own
    (``python -m benchmarks.race_company``). And the
    order changes every round, turned by one place and, every other round, reversed,
    so that no callable always follows the same neighbour or always comes before its
    pair's other side. A callable with a ``settle_s`` attribute (a BLAS matmul,
    :class:`kernels.harness.probes.MatmulStream`) is followed by that many seconds of
    sleep, untimed, so that its threads' spinning is not charged to the next one.
    """
    # Imported here for the reason paired_ratios gives.
    from kernels.harness.timing import perf_counter

    keys = list(calls)
    number, warm = {}, {}
    settle = {key: getattr(calls[key], "settle_s", 0.0) for key in keys}
    for key in keys:
        t0 = perf_counter()
        calls[key]()
        once = max(perf_counter() - t0, 1e-9)
        number[key] = max(1, math.ceil(sample_s / once))
        warm[key] = once < warm_s
        if settle[key]:
            time.sleep(settle[key])
    times: dict[Any, list[float]] = {key: [] for key in keys}
    for r in range(rounds):
        turn = r % len(keys) if keys else 0
        order = keys[turn:] + keys[:turn]
        for key in order[::-1] if r % 2 else order:
            fn, n = calls[key], number[key]
            if warm[key]:
                fn()
            t0 = perf_counter()
            for _ in range(n):
                fn()
            times[key].append((perf_counter() - t0) / n)
            if settle[key]:
                time.sleep(settle[key])
    return times


def gather(keys: Any, make: Callable[..., Callable[[], Any]],
           failed: dict[Any, str]) -> dict[Any, Callable[[], Any]]:
    """``{key: make(*key)}`` for the keys a suite races: a key whose ``make`` skips
    (NotImplementedError: not raced there) is left out, and one whose ``make`` fails is
    left out and its error kept in ``failed``, so that its ratios fail, not the race."""
    calls = {}
    for key in keys:
        try:
            calls[key] = make(*key)
        except NotImplementedError:
            continue
        except Exception as exc:  # noqa: BLE001 - reported by the ratios that need it
            failed[key] = f"{type(exc).__name__}: {exc}"
    return calls


def race_point(keys: Any, make: Callable[..., Callable[[], Any]],
               raced: dict[str, Any], needs: Any = None) -> None:
    """Gather one size's keys (:func:`gather`, errors into ``raced["failed"]``) and race
    them into ``raced["times"]``, unless fewer than two could be made, or none of
    ``needs`` (the group's own strategy's keys, when given): where a group's strategy is
    not raced (past its size limit) its baseline alone has no ratio, and timing it 12
    times cost the sieve's pure-Python groups numpy's 1.6 s call at 10^9."""
    calls = gather(keys, make, raced["failed"])
    if len(calls) >= 2 and (needs is None or any(key in calls for key in needs)):
        raced["times"].update(race(calls))


BASELINE = ("numpy", 1)  # every speed-up's denominator: numpy on 1 worker


def race_members(label: str, anchors: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """The (strategy, workers) a strategy's race times: numpy on 1 worker, the strategy
    at every worker count, and any anchor at every worker count. numpy at 2 workers is
    in numpy's own race only: its BLAS threads spin on after each call, and beside it a
    32k GQA step with numba at 2 workers took 19-24 ms (2.2-2.7x numpy's speed on 1
    worker), against 10.8-14.7 ms (4.4-4.6x) beside numpy on 1 worker alone
    (``python -m benchmarks.race_company``, four processes each)."""
    members = [BASELINE] + [(name, w) for name in (label, *anchors) for w in WORKERS]
    return list(dict.fromkeys(members))


RACE_GROUP_TIMEOUT = 1200.0


def race_groups(module: str, groups: list[str]) -> dict[str, Any]:
    """Each group's race in a fresh interpreter of its own, one after another:
    ``module.race_group(group)`` (``{"times": {key: seconds per round}, "failed": {key:
    error}}``) for every group, as ``{"groups": {group: that}, "failed": {group: why its
    process failed}}``.

    A group is one strategy with its baseline (and its anchor, :func:`race_members`):
    with every strategy in one process, a 32k GQA or MLA step with numba at 2 workers
    ran 20-40% slower than beside numpy alone, from what the other pools leave running.
    The child finds this package by a path appended to ``sys.path``, so that the
    ``kernels`` it imports is the environment's, the commit asv is measuring.
    """
    root = str(Path(__file__).resolve().parents[1])
    raced: dict[str, Any] = {"groups": {}, "failed": {}}
    for group in groups:
        with tempfile.TemporaryDirectory(prefix="kernelrace-race-") as tmp:
            out = Path(tmp, "raced.pickle")
            code = ("import pickle, sys\n"
                    f"sys.path.append({root!r})\n"
                    f"import {module} as suite\n"
                    f"raced = suite.race_group({group!r})\n"
                    f"open({str(out)!r}, 'wb').write(pickle.dumps(raced))\n")
            try:
                done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, timeout=RACE_GROUP_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                raced["failed"][group] = f"no answer in {RACE_GROUP_TIMEOUT:.0f} s"
                continue
            if done.returncode != 0 or not out.exists():
                tail = "\n".join(done.stderr.strip().splitlines()[-5:])
                raced["failed"][group] = f"exit {done.returncode}: {tail}"
                continue
            raced["groups"][group] = pickle.loads(out.read_bytes())
    return raced


class RaceRatio:
    """Base of the ratio benchmarks a suite reads from its race: the suite's
    ``setup_cache`` (one function, shared by every such class of the suite, so asv runs
    it once) returns :func:`race_groups`'s result, keys in the time benchmark's
    parameter order. A subclass names its group and the two keys of its ratio
    (:meth:`sides`: the group, the numerator's key, the denominator's;
    NotImplementedError skips the point) and its ``track_`` returns :meth:`ratio`, the
    quotient per round of two figures of the same group's rounds, as
    :func:`rounds_result`. Not a benchmark itself."""

    unit = "x"
    timeout = 120  # the track only divides; the race's own limit is its function's

    def sides(self, *params: Any) -> tuple[str, Any, Any]:
        raise NotImplementedError

    def setup(self, raced: dict[str, Any], *params: Any) -> None:
        group, *keys = self.sides(*params)
        if group in raced["failed"]:
            raise RuntimeError(f"the race of {group} failed: {raced['failed'][group]}")
        if group not in raced["groups"]:
            skip(f"{group} is not raced")
        self.raced = mine = raced["groups"][group]
        for key in keys:
            if key in mine["failed"]:
                raise RuntimeError(f"{key} failed in the race: {mine['failed'][key]}")
            if key not in mine["times"]:
                skip(f"{key} is not raced")
        self.keys = keys
        self.base, self.other = (mine["times"][key] for key in keys)

    def ratio(self, scale: float = 1.0) -> dict[str, Any]:
        """``scale`` x the base's time over the other's, per round."""
        return rounds_result([scale * b / o
                              for b, o in zip(self.base, self.other, strict=True)])
