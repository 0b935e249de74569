"""Registry: every kernel, found by discovery, its declared spec, and the shape kernels share.

A kernel is a package ``kernels/<name>/`` whose ``__init__`` defines ``SPEC``, a
:class:`KernelSpec`: its name, its size parameter and the unit of one item, default sizes,
its strategies (which run on one core, which need an optional package, which take an
``inner`` chunk kernel) and its extra options with types and help. Nothing shared lists
kernels: :func:`kernel_names` finds them, and the CLI builds its flags from the specs.

The package also provides these functions (the spec documents the data, these the work):

- ``unavailable_reason(strategy) -> str | None``: why a strategy cannot run here
  (a missing optional package), or ``None``;
- ``make_case(size, *, strategy, inner, workers, **options) -> Case``: inputs built,
  nothing timed; the harness CLI and the asv suite time ``case.run``;
- ``check_case(size, *, strategy, inner, workers, **options) -> None``: raises what
  ``make_case`` would, builds nothing (``kernelrace run`` checks its whole grid first);
- ``verify(strategy, inner, workers) -> list[Check]``: small inputs checked against the
  kernel's reference (``kernelrace verify`` and the tests).

Strategies that run on an executor (:data:`kernels.executors.POOL_STRATEGIES`, today
``threaded``, ``multiprocess`` and ``distributed``) take an ``inner`` chunk kernel
(``python``, ``numpy`` or ``numba``); the others do not. A pool strategy whose executor
needs an optional package (``distributed``: Dask) is unavailable where it is missing,
whatever the kernel's own ``unavailable_reason`` says (:func:`unavailable_reason`).
"""

from __future__ import annotations

import importlib
import operator
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from types import ModuleType
from typing import Any

from kernels.executors import POOL_STRATEGIES, pool_unavailable_reason

INNERS = ("python", "numpy", "numba")
DEFAULT_INNER = "numba"


def with_pools(strategies: tuple[str, ...]) -> tuple[str, ...]:
    """A kernel's strategies plus every pool strategy registered since it was imported
    (:func:`kernels.executors.register_executor`), in that order."""
    return tuple(strategies) + tuple(s for s in POOL_STRATEGIES if s not in strategies)


@dataclass(frozen=True)
class Option:
    """An extra argument of a kernel's cases (``--name`` on ``kernelrace run``).

    A whole number when ``low``/``high`` are set (its accepted range), one of
    ``choices`` when those are set, else free text that the kernel checks itself.
    Declarative, so that kernels need no parser (the harness has one).
    """

    name: str
    help: str
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] | None = None

    @property
    def is_int(self) -> bool:
        return self.low is not None or self.high is not None


@dataclass(frozen=True)
class Arithmetic:
    """An analytic count of a kernel's arithmetic, for a kernel without a FLOP track: the
    report sets the rate it gives against the machine's FMA probe (``kernelrace
    machine``). The probe counts 2 FLOP per FMA per vector lane, so an unfused multiply
    or add is worth 1 FLOP (a kernel of those alone tops out at half the probe), and a
    64-bit integer operation takes a 64-bit lane slot, as a float64 FMA does (worth 2).

    - ``unit``: what is counted (``FLOP``, ``int64 op``); ``per``: one unit of work
      (``sample``, ``iteration``); ``ops_per_unit``: operations per unit of work.
    - ``probe_flop_per_op``: the probe's FLOP one operation is worth; ``probe_dtype``:
      the probe it is set against (``float32`` or ``float64``).
    - ``units_of(size)``: units of work in one call at the asv size parameter (None
      where the size says nothing); ``explain``: what is counted and why, for the report.
    """

    unit: str
    per: str
    ops_per_unit: float
    probe_flop_per_op: float
    probe_dtype: str
    units_of: Callable[[Any], float | None]
    explain: str

    def ops(self, size: Any) -> float | None:
        """Operations in one call at ``size``."""
        units = self.units_of(size)
        return None if units is None else units * self.ops_per_unit


def size_units(size: Any) -> float | None:
    """The size itself as units of work (a positive number), else None."""
    ok = isinstance(size, int | float) and not isinstance(size, bool) and size > 0
    return float(size) if ok else None


@dataclass(frozen=True)
class KernelSpec:
    """What a kernel declares: the data the CLI, the report and the asv suites read.

    - ``size_name``: what the size is called, as the asv suite's parameter (``n``,
      ``samples``, ``context``, ...);
      ``unit``: what one item of size is, plural (``numbers``, ``samples``, ``tokens``,
      ``pixels``), for per-item figures; ``max_size``: the largest size accepted.
    - ``default_sizes``: what ``kernelrace run`` uses without ``--size``.
    - ``strategies``: every strategy name, available here or not, in the order shown;
      ``serial``: those that run on one core (``workers`` must be 1);
      ``requires``: strategy -> the optional package it needs.
    - ``size_limits``: chunk kernel (or strategy) -> the largest size it is raced at by
      default (slower ones would take minutes); the others go up to ``max_size``.
    - ``anchors``: strategies that run another project's implementation (the report
      gives every strategy's speed against the first one in a table);
      ``per_item``: items of size are independent work, so a time per item is a figure.
    - ``picture``: a function returning a small 2-D array that shows what the kernel
      computes (the report draws it as an image), or None.
    - ``options``: extra case arguments, with their types and help.
    - ``arithmetic``: an analytic :class:`Arithmetic` count, for a kernel whose suite
      has no FLOP track (the report sets it against the FMA probe).
    - ``workers_used(size, strategy, inner, workers, **options)``: the workers a call
      really runs on (fewer than asked below the kernel's minimum grain); options it
      does not know are ignored. The report's parallel efficiency divides by it.
    - ``order``: where the kernel sorts in listings and reports.
    """

    name: str
    title: str
    size_name: str
    unit: str
    max_size: int
    default_sizes: tuple[int, ...]
    strategies: tuple[str, ...]
    serial: tuple[str, ...] = ()
    requires: dict[str, str] = field(default_factory=dict)
    size_limits: dict[str, int] = field(default_factory=dict)
    options: tuple[Option, ...] = ()
    anchors: tuple[str, ...] = ()
    per_item: bool = False
    picture: Callable[[], Any] | None = None
    arithmetic: Arithmetic | None = None
    workers_used: Callable[..., int] | None = None
    order: int = 100

    def inners(self, strategy: str) -> tuple[str, ...]:
        """The chunk kernels ``strategy`` takes as ``inner`` (none for most strategies)."""
        return INNERS if strategy in POOL_STRATEGIES else ()

    def strategy_names(self) -> tuple[str, ...]:
        """Every strategy, the pool strategies registered after import included."""
        return with_pools(self.strategies)

    def size_limit(self, strategy: str, inner: str | None = None) -> int:
        """The largest size ``strategy`` (with ``inner``) is raced at by default."""
        limits = [self.size_limits.get(k) for k in (strategy, inner) if k is not None]
        return min([x for x in limits if x is not None], default=self.max_size)


def _is_kernel_package(name: str) -> bool:
    return name not in ("harness",) and not name.startswith("_")


@cache
def kernel_names() -> tuple[str, ...]:
    """Every kernel package under ``kernels/`` (a package that defines ``SPEC``), in the
    specs' order. Found by discovery: adding a kernel edits no list."""
    import kernels

    found = []
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.ispkg and _is_kernel_package(info.name):
            module = importlib.import_module(f"kernels.{info.name}")
            spec = getattr(module, "SPEC", None)
            if isinstance(spec, KernelSpec):
                found.append((spec.order, spec.name))
    return tuple(name for _, name in sorted(found))


def spec(kernel: str) -> KernelSpec:
    """The :class:`KernelSpec` of ``kernel``."""
    return kernel_module(kernel).SPEC


def __getattr__(name: str) -> Any:
    # ``registry.KERNELS`` reads as it did when it was a tuple, found by discovery now.
    if name == "KERNELS":
        return kernel_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Case:
    """One prepared run of a kernel: ``run()`` is what gets timed.

    ``describe(result, seconds)`` returns the kernel's own row fields (the count, the
    estimate, bytes read and GB/s...) for a result and its median time in seconds.
    ``close()`` releases what the case holds (shared memory, pools it owns).
    """

    run: Callable[[], Any]
    describe: Callable[[Any, float], dict[str, Any]] = lambda result, seconds: {}
    close: Callable[[], None] = lambda: None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Check:
    """One verification: a named small input, whether the strategy matched the reference."""

    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class StrategyInfo:
    kernel: str
    name: str
    inners: tuple[str, ...]
    available: bool
    reason: str | None


def kernel_module(kernel: str) -> ModuleType:
    """Import ``kernels.<kernel>``; a ValueError lists the kernels when the name is unknown."""
    names = kernel_names()
    if kernel not in names:
        raise ValueError(f"kernel must be one of {', '.join(names)}; got {kernel!r}")
    return importlib.import_module(f"kernels.{kernel}")


def check_strategy(
    strategies: tuple[str, ...], strategy: str, inner: str | None
) -> tuple[str, str | None]:
    """Validate a (strategy, inner) pair; returns it with the default inner filled in.

    Raises ValueError listing the valid names. ``inner`` is only meaningful for
    ``threaded`` and ``multiprocess``; given elsewhere it is refused rather than ignored.
    """
    strategies = with_pools(strategies)
    if not isinstance(strategy, str) or strategy not in strategies:
        raise ValueError(f"strategy must be one of {', '.join(strategies)}; got {strategy!r}")
    if strategy in POOL_STRATEGIES:
        inner = DEFAULT_INNER if inner is None else inner
        if not isinstance(inner, str) or inner not in INNERS:
            raise ValueError(f"inner must be one of {', '.join(INNERS)}; got {inner!r}")
        return strategy, inner
    if inner is not None:
        raise ValueError(
            f"inner applies only to {' and '.join(POOL_STRATEGIES)}; "
            f"strategy {strategy!r} got inner={inner!r}"
        )
    return strategy, None


def unavailable_reason(module: ModuleType, strategy: str) -> str | None:
    """Why ``strategy`` of kernel package ``module`` cannot run here, or None: a pool
    strategy whose executor needs a missing package (:data:`kernels.executors.POOL_REQUIRES`),
    else what the kernel's own ``unavailable_reason`` says. The one availability check:
    kernels' own hooks need not know about executors."""
    return pool_unavailable_reason(strategy) or module.unavailable_reason(strategy)


def require_available(module: ModuleType, strategy: str) -> None:
    """Raise RuntimeError naming the missing package when ``strategy`` cannot run here."""
    reason = unavailable_reason(module, strategy)
    if reason:
        raise RuntimeError(f"strategy {strategy!r} is unavailable here: {reason}")


def _inners(strategy: str) -> tuple[str, ...]:
    """The chunk kernels ``strategy`` takes as ``inner`` (none for most strategies)."""
    return INNERS if strategy in POOL_STRATEGIES else ()


def strategies(kernel: str) -> list[StrategyInfo]:
    """Every strategy of ``kernel`` with its availability on this machine."""
    module = kernel_module(kernel)
    out = []
    for name in with_pools(module.STRATEGIES):
        reason = unavailable_reason(module, name)
        out.append(StrategyInfo(kernel, name, _inners(name), reason is None, reason))
    return out


def variants(kernel: str, *, available_only: bool = True) -> list[tuple[str, str | None]]:
    """Every (strategy, inner) pair of ``kernel``: one per inner for threaded/multiprocess."""
    # Availability is asked only when it matters: asking may import an anchor (torch
    # takes about a second), and the asv suites list every variant in each process.
    module = kernel_module(kernel)
    out: list[tuple[str, str | None]] = []
    for name in with_pools(module.STRATEGIES):
        if available_only and unavailable_reason(module, name):
            continue
        out.extend([(name, inner) for inner in _inners(name)] or [(name, None)])
    return out


def _bound_text(x: int) -> str:
    """``x`` as ``2**k`` or ``2**k - 1`` when it is one of those past 2**16, else digits."""
    if x > 1 << 16 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    if x > 1 << 16 and (x + 1) & x == 0:
        return f"2**{x.bit_length()} - 1"
    return str(x)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (no ceiling when ``high`` is None): the one
    integer check of every kernel. bool and float are refused (``True`` is not 1 worker,
    1.7 is not truncated), numpy integers accepted; the TypeError or ValueError names
    ``name`` and the accepted range."""
    accepted = (f"an int in [{_bound_text(low)}, {_bound_text(high)}]" if high is not None
                else f"an int >= {low}")
    if isinstance(value, (bool, float)):
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__} {value!r}")
    try:
        value = operator.index(value)  # int and numpy integers; not float, str, None
    except TypeError:
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}") from None
    if high is None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return int(value)


#: A minimum grain no input reaches: the strategy never splits (a chunk kernel that holds
#: the GIL on threads: a second thread only takes turns with the first).
NEVER_SPLIT = 1 << 62


def grain_workers(workers: int, work: int, grain: int | None, pieces: int) -> int:
    """The minimum-grain rule (each kernel's ``MIN_GRAIN``): ``workers`` cut to one per
    ``grain`` units of ``work`` and to one per piece the work can be cut into, at least
    one; without a grain, cut to the pieces only."""
    if grain is None:
        return max(1, min(workers, pieces))
    return max(1, min(workers, pieces, work // grain))


def below_grain(work: int, grain: int | None, workers: int) -> bool:
    """Whether ``work`` is under the grain of ``workers`` workers, so that a pool call
    sends one task per worker used (a round trip each). :data:`NEVER_SPLIT` means one
    worker, not a small input: such a call stays cut into tasks, Ctrl-C between them."""
    return grain is not None and grain < NEVER_SPLIT and work < grain * workers


def check_workers(strategy: str, workers: Any, serial: tuple[str, ...]) -> int:
    """``workers`` for ``strategy`` of a kernel whose one-core strategies are ``serial``:
    those take 1 or None; the others an int in [1, :func:`kernels.executors.max_workers`]
    or None (all cores). The one workers check of every kernel."""
    from kernels.executors import resolve_workers

    if strategy in serial:
        w = resolve_workers(1 if workers is None else workers)
        if w != 1:
            raise ValueError(
                f"strategy {strategy!r} runs on one core, so workers must be 1 or None, "
                f"got {w}; threaded or multiprocess with inner='python'/'numpy' spread it "
                "over cores"
            )
        return 1
    return resolve_workers(workers)


def label(strategy: str, inner: str | None) -> str:
    """How a (strategy, inner) pair is written in tables and on the command line."""
    return f"{strategy}:{inner}" if inner else strategy


def parse_label(text: str) -> tuple[str, str | None]:
    """Inverse of :func:`label`: ``"threaded:numpy"`` -> ``("threaded", "numpy")``."""
    strategy, _, inner = text.partition(":")
    return strategy, (inner or None)


def module_available(name: str) -> str | None:
    """``None`` when ``name`` imports, else a reason naming the package and how to get it."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # ImportError, or a broken native build
        return f"{name} is not installed ({type(exc).__name__}: {exc}); pip install '.[anchors]'"
    return None
