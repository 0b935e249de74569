"""Registry: every (kernel, strategy), whether it runs here, and the shape kernels share.

A kernel package ``kernels.<name>`` provides:

- ``STRATEGIES``: every strategy name, available here or not;
- ``unavailable_reason(strategy) -> str | None``: why a strategy cannot run here
  (a missing optional package), or ``None``;
- ``make_case(size, *, strategy, inner, workers, **options) -> Case``: inputs built,
  nothing timed; the harness CLI and the asv suite time ``case.run``;
- ``check_case(size, *, strategy, inner, workers, **options) -> None``: raises what
  ``make_case`` would, builds nothing (``kernelrace run`` checks its whole grid first);
- ``verify_cases() -> list[tuple[str, dict]]`` and ``verify(strategy, inner, workers)
  -> list[Check]``: small inputs checked against the kernel's reference.

Strategies ``threaded`` and ``multiprocess`` take an ``inner`` chunk kernel
(``python``, ``numpy`` or ``numba``); the others do not.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

KERNELS = ("sieve", "montecarlo", "attention")
INNERS = ("python", "numpy", "numba")
INNER_STRATEGIES = ("threaded", "multiprocess")
DEFAULT_INNER = "numba"


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
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    return importlib.import_module(f"kernels.{kernel}")


def check_strategy(
    strategies: tuple[str, ...], strategy: str, inner: str | None
) -> tuple[str, str | None]:
    """Validate a (strategy, inner) pair; returns it with the default inner filled in.

    Raises ValueError listing the valid names. ``inner`` is only meaningful for
    ``threaded`` and ``multiprocess``; given elsewhere it is refused rather than ignored.
    """
    if not isinstance(strategy, str) or strategy not in strategies:
        raise ValueError(f"strategy must be one of {', '.join(strategies)}; got {strategy!r}")
    if strategy in INNER_STRATEGIES:
        inner = DEFAULT_INNER if inner is None else inner
        if not isinstance(inner, str) or inner not in INNERS:
            raise ValueError(f"inner must be one of {', '.join(INNERS)}; got {inner!r}")
        return strategy, inner
    if inner is not None:
        raise ValueError(
            f"inner applies only to {' and '.join(INNER_STRATEGIES)}; "
            f"strategy {strategy!r} got inner={inner!r}"
        )
    return strategy, None


def require_available(module: ModuleType, strategy: str) -> None:
    """Raise RuntimeError naming the missing package when ``strategy`` cannot run here."""
    reason = module.unavailable_reason(strategy)
    if reason:
        raise RuntimeError(f"strategy {strategy!r} is unavailable here: {reason}")


def _inners(strategy: str) -> tuple[str, ...]:
    """The chunk kernels ``strategy`` takes as ``inner`` (none for most strategies)."""
    return INNERS if strategy in INNER_STRATEGIES else ()


def strategies(kernel: str) -> list[StrategyInfo]:
    """Every strategy of ``kernel`` with its availability on this machine."""
    module = kernel_module(kernel)
    out = []
    for name in module.STRATEGIES:
        reason = module.unavailable_reason(name)
        out.append(StrategyInfo(kernel, name, _inners(name), reason is None, reason))
    return out


def variants(kernel: str, *, available_only: bool = True) -> list[tuple[str, str | None]]:
    """Every (strategy, inner) pair of ``kernel``: one per inner for threaded/multiprocess."""
    # Availability is asked only when it matters: asking may import an anchor (torch
    # takes about a second), and the asv suites list every variant in each process.
    module = kernel_module(kernel)
    out: list[tuple[str, str | None]] = []
    for name in module.STRATEGIES:
        if available_only and module.unavailable_reason(name):
            continue
        out.extend([(name, inner) for inner in _inners(name)] or [(name, None)])
    return out


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
