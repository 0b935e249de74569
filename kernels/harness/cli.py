"""The ``kernelrace`` command: list, verify, run, machine, report, compare.

Tables and progress go to stderr when ``--json`` sends rows to stdout, so the JSON
can be piped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from typing import Any

from kernels import executors, registry
from kernels.harness import termination
from kernels.harness.argtypes import listed, whole_number

# Subcommands that live in their own harness module: name -> (module, help).
# Each module provides add_arguments(parser) and run(args) -> exit code.
_MODULE_COMMANDS = {
    "machine": (
        "kernels.harness.machine", "measure this machine's limits; write results/machine.json"
    ),
    "report": ("kernels.harness.report", "write results/report.md and plots from asv results"),
    "compare": (
        "kernels.harness.compare", "compare two commits' asv results; exit 1 on a slowdown"
    ),
}


def max_size() -> int:
    """The ceiling of ``--size``: the largest any kernel's spec accepts; each kernel then
    checks its own range."""
    return max(registry.spec(k).max_size for k in registry.kernel_names())


def _table(headers: list[str], rows: list[list[Any]], out=None) -> None:
    out = out or sys.stdout
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for k, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _seconds(value: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} s"


# ---------------------------------------------------------------------------
# list / verify
# ---------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    kernels = [args.kernel] if args.kernel else list(registry.kernel_names())
    rows = []
    for kernel in kernels:
        for info in registry.strategies(kernel):
            rows.append(
                [
                    kernel,
                    info.name,
                    ",".join(info.inners) or "-",
                    "yes" if info.available else "no",
                    info.reason or "",
                ]
            )
    _table(["kernel", "strategy", "inner", "available", "why not"], rows)
    for kernel in kernels:
        extra = getattr(registry.kernel_module(kernel), "list_extra", None)
        if extra is not None:
            print()
            print(extra())
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    kernels = [args.kernel] if args.kernel else list(registry.kernel_names())
    # Asked first: asking whether torch is there loads it, which has to happen before
    # numba's parallel kernels start their OpenMP threads (the kernel using torch warns).
    unavailable = [
        f"{i.kernel}:{i.name} ({i.reason})"
        for k in kernels
        for i in registry.strategies(k)
        if not i.available
    ]
    rows = []
    failed = 0
    for kernel in kernels:
        module = registry.kernel_module(kernel)
        for strategy, inner in registry.variants(kernel):
            for workers in (1, 2):
                try:
                    checks = module.verify(strategy, inner, workers)
                except Exception as exc:  # a crash is a failure, reported like one
                    checks = [registry.Check("crash", False, f"{type(exc).__name__}: {exc}")]
                bad = [c for c in checks if not c.ok]
                failed += bool(bad)
                rows.append(
                    [
                        kernel,
                        registry.label(strategy, inner),
                        workers,
                        len(checks),
                        "ok" if not bad else "MISMATCH",
                        "; ".join(f"{c.name}: {c.detail}" for c in bad)[:200],
                    ]
                )
                print(f"  {kernel} {registry.label(strategy, inner)} w={workers}", file=sys.stderr)
    _table(["kernel", "strategy", "workers", "checks", "result", "detail"], rows)
    if unavailable:
        print("not checked, unavailable here: " + "; ".join(unavailable))
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


class _Progress:
    """A progress bar on stderr (rich when installed, plain lines otherwise)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self._rich = None
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            console = Console(stderr=True)
            if console.is_terminal:
                self._rich = Progress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    console=console, transient=True,
                )
        except ImportError:
            pass

    def __enter__(self) -> _Progress:
        if self._rich is not None:
            self._rich.start()
            self._task = self._rich.add_task("running", total=self.total)
        return self

    def step(self, point: Any) -> None:
        from kernels.harness.runner import describe_point

        text = describe_point(point)
        if self._rich is not None:
            if self.done:
                self._rich.advance(self._task)
            self._rich.update(self._task, description=text)
        else:
            print(f"[{self.done + 1}/{self.total}] {text}", file=sys.stderr, flush=True)
        self.done += 1

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _case_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, each checked to belong to ``--kernel``."""
    declared = {o.name for o in registry.spec(args.kernel).options}
    options = {}
    for name in sorted(_all_options()):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in declared:
            owners = [k for k in registry.kernel_names()
                      if name in {o.name for o in registry.spec(k).options}]
            raise ValueError(f"{_flag(name)} applies to {', '.join(owners)}, not to "
                             f"{args.kernel}")
        options[name] = value
    return options


def _all_options() -> dict[str, list[tuple[str, registry.Option]]]:
    """Every option any kernel declares: name -> [(kernel, option)]."""
    found: dict[str, list[tuple[str, registry.Option]]] = {}
    for kernel in registry.kernel_names():
        for option in registry.spec(kernel).options:
            found.setdefault(option.name, []).append((kernel, option))
    return found


def _add_option_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option the kernels' specs declare, typed and bounded from the spec.

    An option two kernels share (``seed``) is one flag; its range is the union of
    theirs (each kernel checks its own) and its help names each kernel's use."""
    for name, owners in _all_options().items():
        options = [o for _, o in owners]
        helps = "; ".join(f"{k}: {o.help}" for k, o in owners)
        kwargs: dict[str, Any] = {"dest": name, "help": helps}
        if all(o.is_int for o in options):
            low = min(o.low if o.low is not None else 0 for o in options)
            high = max(o.high if o.high is not None else max_size() for o in options)
            kwargs["type"] = whole_number(low, high)
            kwargs["help"] += f" ({low} to {_power_text(high)})"
        elif all(o.choices for o in options):
            kwargs["choices"] = sorted({c for o in options for c in o.choices or ()})
        p.add_argument(_flag(name), **kwargs)


def _power_text(x: int) -> str:
    """``x`` as ``2**k`` or ``2**k - 1`` when it is one (the usual ceilings), else digits."""
    for text, k in ((f"2**{x.bit_length() - 1}", x), (f"2**{x.bit_length()} - 1", x + 1)):
        if x > 1 << 16 and k & (k - 1) == 0:
            return text
    return str(x)


def _size_help() -> str:
    parts = [f"{registry.spec(k).size_name} ({registry.spec(k).unit}) for {k}"
             for k in registry.kernel_names()]
    return ("problem size: " + ", ".join(parts) + " (repeatable, or several separated by commas; a "
            "whole number, 1e8 style accepted; default: the kernel's default sizes)")


def _scheduler_address(text: str) -> str:
    """``--scheduler``: a Dask scheduler address, ``tcp://HOST:PORT`` (or ``HOST:PORT``)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host.strip("/:") or not port.isdigit():
        raise argparse.ArgumentTypeError(
            f"a scheduler address is tcp://HOST:PORT (for example tcp://10.0.0.5:8786), "
            f"got {text!r}")
    return text.strip()


def cmd_run(args: argparse.Namespace) -> int:
    from kernels.harness import runner

    if args.scheduler:
        # The distributed strategy's executor reads it when it connects (it never starts
        # or stops a cluster at an address); set before any executor is made.
        from kernels.distributed import SCHEDULER_ENV

        os.environ[SCHEDULER_ENV] = args.scheduler
    module = registry.kernel_module(args.kernel)
    options = _case_options(args)
    labels = args.strategy or [registry.label(s, i) for s, i in registry.variants(args.kernel)]
    # Check every name before anything runs.
    for text in labels:
        strategy, inner = registry.parse_label(text)
        strategy, inner = registry.check_strategy(module.STRATEGIES, strategy, inner)
        registry.require_available(module, strategy)
    sizes = args.size or list(module.SPEC.default_sizes)
    workers = args.workers or [1]
    points = runner.grid(labels, sizes, workers)
    if not args.strategy:
        # Every strategy by default: the one-core ones only at one worker (as the asv
        # suites do); named with --strategy, a one-core strategy at 2 workers is an error.
        serial = module.SPEC.serial
        points = [p for p in points if not (p.strategy in serial and p.workers > 1)]
    # Every point is checked before the first is timed (run_grid does it too, for
    # API callers); a bad one is refused here with nothing run and nothing written.
    runner.check_points(args.kernel, points, options)
    rows: list[dict[str, Any]] = []
    failure: BaseException | None = None
    with _Progress(len(points)) as progress:
        grid = runner.run_grid(
            args.kernel, points, repeat=args.repeat, warmup=args.warmup,
            options=options, progress=progress.step,
        )
        try:
            for row in grid:
                rows.append(row)
        except (Exception, KeyboardInterrupt) as exc:
            # Keep the points that finished and record the one that did not.
            failure = exc
            point = points[len(rows)]
            rows.append({
                "kernel": args.kernel, "strategy": point.strategy, "inner": point.inner,
                "size": point.size, "workers": point.workers,
                "error": termination.stopped_by(exc) or f"{type(exc).__name__}: {exc}",
            })
    runner.add_speedups(rows)
    _write_rows(args, rows, labels)
    if isinstance(failure, KeyboardInterrupt):
        raise failure
    if failure is not None:
        done = len(rows) - 1
        print(f"kernelrace run: error at point {done + 1} of {len(points)} "
              f"({runner.describe_point(points[done])}): {type(failure).__name__}: {failure}; "
              f"the {done} finished point(s) are written above", file=sys.stderr)
        return 2
    return 0


def _write_rows(args: argparse.Namespace, rows: list[dict[str, Any]], labels: list[str]) -> None:
    """The rows as JSON (``--json``) or as a table; a failed point's row has ``error``."""
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        print()
        return
    timed = [r for r in rows if "error" not in r]
    extra = [k for k in timed[0] if k not in _COMMON_FIELDS] if timed else []
    headers = ["strategy", "size", "workers", "median", "min..max", "speedup"] + extra
    table = []
    for r in rows:
        if "error" in r:
            stopped = r["error"] if r["error"] in termination.STOPPED else "failed"
            table.append([registry.label(r["strategy"], r["inner"]), r["size"], r["workers"],
                          stopped, "-", "-"] + [None] * len(extra))
            continue
        table.append(
            [
                registry.label(r["strategy"], r["inner"]),
                r["size"],
                r["workers"],
                _seconds(r["median_s"]),
                f"{_seconds(r['min_s'])}..{_seconds(r['max_s'])}",
                f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
            ]
            + [r.get(k) for k in extra]
        )
    _table(headers, table)
    print(f"median of {args.repeat} runs after {args.warmup} warm-up; speedup vs {labels[0]}")


_COMMON_FIELDS = {
    "kernel", "strategy", "inner", "size", "workers", "median_s", "min_s", "max_s",
    "repeat", "speedup",
}


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def runner_max_repeat() -> int:
    """The ceiling of --repeat and --warmup (the runner's, so both say the same)."""
    from kernels.harness.runner import MAX_REPEAT

    return MAX_REPEAT


def build_parser() -> argparse.ArgumentParser:
    kernels = registry.kernel_names()
    parser = argparse.ArgumentParser(
        prog="kernelrace",
        description="Race implementations of hot kernels: "
        + "; ".join(registry.spec(k).title for k in kernels) + ".",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="kernels, strategies and whether they run here")
    p.add_argument("--kernel", choices=kernels)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("verify", help="check every available strategy against the reference")
    p.add_argument("--kernel", choices=kernels)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("run", help="time a grid of strategy x size x workers in this process")
    p.add_argument("--kernel", required=True, choices=kernels)
    p.add_argument(
        "--strategy", action="extend", type=listed(str),
        help="strategy, or strategy:inner for threaded/multiprocess (repeatable, or "
        "several separated by commas; "
        "default: every available one). Speedups are against the first.",
    )
    p.add_argument("--size", action="extend", type=listed(whole_number(0, max_size())),
                   help=_size_help())
    p.add_argument(
        "--workers", action="extend", type=listed(whole_number(1, executors.max_workers())),
        help=f"worker count (repeatable, or several separated by commas; at most "
        f"{executors.max_workers()}: {executors.MAX_WORKERS_PER_CORE} x the usable cores, at least "
        f"{executors.MIN_MAX_WORKERS})",
    )
    p.add_argument("--repeat", type=whole_number(1, runner_max_repeat()), default=5,
                   help="timed runs per point (default 5)")
    p.add_argument("--warmup", type=whole_number(0, runner_max_repeat()), default=1,
                   help="untimed runs first (default 1)")
    p.add_argument("--json", action="store_true", help="write rows as JSON to stdout")
    p.add_argument(
        "--scheduler", type=_scheduler_address, metavar="tcp://HOST:PORT",
        help="run the distributed strategy on the Dask cluster at this scheduler address "
        "(sets KERNELRACE_SCHEDULER) instead of starting a local cluster",
    )
    _add_option_flags(p)
    p.set_defaults(func=cmd_run)

    for name, (module_name, help_text) in _MODULE_COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(module=module_name)
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            p.set_defaults(missing=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_sigterm = termination.sigterm_raises()  # SIGTERM unwinds like Ctrl-C
    try:
        if getattr(args, "module", None):
            if getattr(args, "missing", False):
                print(f"kernelrace {args.command}: not built yet", file=sys.stderr)
                return 2
            return int(importlib.import_module(args.module).run(args) or 0)
        return int(args.func(args) or 0)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"kernelrace {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return termination.interrupted(exc)
    finally:
        termination.restore(previous_sigterm)
