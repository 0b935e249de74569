"""One side of the regression gate: a long-lived process that times one commit's asv suite.

:mod:`kernels.harness.gate` starts two of these, one in each commit's checkout, and
asks them in turn for short rounds of samples, so that both commits are timed within
the same seconds. This file runs as a script by path, from the checkout that runs the
gate, and imports nothing of kernelrace itself: the commit under test may be older
than the gate (or not have it at all), so the worker takes ``benchmarks`` and
``kernels`` from ``--root`` alone and checks that it did. For the same reason its
timing loop (``TIMER``, the ``sample`` command) stays here, written out, and does not
use :mod:`kernels.harness.timing`, the loop the rest of the harness shares: a commit
from before that module would not have it. Keep the two alike (``perf_counter``, one
call per reading unless ``number`` says more).

The benchmarks are asv's: module ``benchmarks.bench_*``, classes or functions with
``time_*`` and ``peakmem_*`` methods, ``params`` / ``param_names``, ``setup`` /
``teardown`` (asv skips a point whose setup raises ``NotImplementedError``; so does the
gate). A class may
declare ``gate_params``, a grid (or list of grids) of values from its ``params``: the
points of the gate's default regression set. asv ignores the attribute.

Protocol: one JSON object per line on stdin, one reply per line on the original
stdout (the benchmarks' own prints go to stderr). Commands: ``list``, ``setup``,
``sample``, ``teardown``, ``quit``. A reply is ``{"ok": true, ...}``,
``{"skip": reason}`` or ``{"error": text}``.

A ``peakmem_*`` point is measured as asv measures it, in a process of its own: with
``--peakmem NAME --key JSON`` this script imports only that benchmark's module, runs
``setup`` and the method once, and replies once with the process's peak resident set
(``{"ok": true, "bytes": ...}``, the memory map's high-water mark), then exits. The
long-lived worker never runs one: its pools and earlier points would be in its peak.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import itertools
import json
import os
import pathlib
import re
import resource
import sys
import time
import traceback

# Standalone on purpose (see the docstring): not kernels.harness.timing.
TIMER = time.perf_counter


def _grids(spec):
    """``params`` or ``gate_params`` as a list of grids (each a tuple of value lists)."""
    if spec is None:
        return []
    if isinstance(spec, list) and spec and all(isinstance(g, tuple) for g in spec):
        return spec  # a list of grids
    if isinstance(spec, tuple) or (isinstance(spec, list) and spec
                                   and all(isinstance(v, list) for v in spec)):
        return [tuple(spec)]
    return [(list(spec),)]  # one parameter, a list of values


GATED = ("time_", "peakmem_")  # the benchmark kinds the gate judges


def _module_benchmarks(stem: str):
    """(name, owner, method name) of the gated benchmarks of ``benchmarks/<stem>.py``."""
    module = importlib.import_module(f"benchmarks.{stem}")
    for cls_name, cls in sorted(vars(module).items()):
        if not inspect.isclass(cls) or cls.__module__ != module.__name__:
            continue
        for attr in sorted(dir(cls)):
            if attr.startswith(GATED) and callable(getattr(cls, attr)):
                yield f"{stem}.{cls_name}.{attr}", cls, attr


def _benchmarks(root: pathlib.Path):
    """(name, owner, method name) of every gated benchmark in ``benchmarks/bench_*.py``."""
    for path in sorted((root / "benchmarks").glob("bench_*.py")):
        yield from _module_benchmarks(path.stem)


def _points(cls, grids_spec):
    """Parameter combinations of ``cls`` from a grid spec, as (values, repr key)."""
    grids = _grids(grids_spec)
    if not grids:
        yield (), []
        return
    for grid in grids:
        for combo in itertools.product(*grid):
            yield combo, [repr(v) for v in combo]


def _find(table: dict, name: str, key: list[str]):
    """(owner, method name, parameter values) of the point ``name(key)``."""
    cls, attr = table[name]
    for combo, k in _points(cls, getattr(cls, "params", None)):
        if k == key:
            return cls, attr, combo
    raise KeyError(f"{name}{tuple(key)} is not a point of this suite")


def peak_rss() -> int:
    """This process's peak resident set in bytes.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own
    memory map. Not ``ru_maxrss``: Linux carries that across ``execve`` from the parent
    the process was forked from, so a fresh process started by a large one (the gate,
    a test run) would report at least its parent's size. Elsewhere ``ru_maxrss`` (KiB on
    Linux and the BSDs, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory(name: str, key: list[str]) -> dict:
    """One ``peakmem_`` sample, as asv takes it: setup, one call, this process's peak
    resident set in bytes (:func:`peak_rss`). Only the benchmark's own module is
    imported, so the other suites' imports are not in the figure."""
    table = {n: (cls, attr) for n, cls, attr in _module_benchmarks(name.split(".")[0])}
    cls, attr, combo = _find(table, name, key)
    obj = cls()
    try:
        if hasattr(obj, "setup"):
            obj.setup(*combo)
    except NotImplementedError as exc:
        return {"skip": str(exc) or "setup raised NotImplementedError"}
    try:
        getattr(obj, attr)(*combo)
        peak = peak_rss()
    finally:
        if hasattr(obj, "teardown"):
            obj.teardown(*combo)
    return {"ok": True, "bytes": peak}


def _workers(cls, key):
    """The point's ``workers`` parameter as an int, or None where it has none."""
    names = list(getattr(cls, "param_names", None) or [])
    if "workers" not in names or len(key) != len(names):
        return None
    value = key[names.index("workers")]
    return int(value) if value.isdigit() else None


class Worker:
    def __init__(self, root: pathlib.Path):
        self.root = root
        self.table = {name: (cls, attr) for name, cls, attr in _benchmarks(root)}
        self.current = None  # (instance, bound method, params) of the point set up

    def list(self, bench: str | None, gate_only: bool) -> dict:
        # bench: a regex searched in the label ``name(param reprs)``, over the full grid.
        regex = re.compile(bench) if bench else None
        points = []
        for name, (cls, attr) in self.table.items():
            all_keys = {tuple(k) for _, k in _points(cls, getattr(cls, "params", None))}
            spec = getattr(cls, "gate_params", None) if gate_only else getattr(
                cls, "params", None)
            if gate_only and spec is None:
                continue
            for _, key in _points(cls, spec):
                if tuple(key) not in all_keys:
                    return {"error": f"{name}: gate_params value {key} is not in its params"}
                label = f"{name}({', '.join(key)})" if key else name
                if regex is not None and not regex.search(label):
                    continue
                points.append({"name": name, "key": key,
                               "timeout": getattr(cls, "timeout", 60),
                               "workers": _workers(cls, key),
                               "kind": "peakmem" if attr.startswith("peakmem_") else "time"})
        return {"ok": True, "points": points}

    def _find(self, name: str, key: list[str]):
        return _find(self.table, name, key)

    def setup(self, name: str, key: list[str]) -> dict:
        self.teardown()
        cls, attr, combo = self._find(name, key)
        obj = cls()
        try:
            if hasattr(obj, "setup"):
                obj.setup(*combo)
        except NotImplementedError as exc:
            self._teardown_obj(obj, combo)
            return {"skip": str(exc) or "setup raised NotImplementedError"}
        self.current = (obj, getattr(obj, attr), combo)
        # Two untimed calls before the first sample: anything lazy (JIT dispatch, page
        # faults of fresh outputs) settles. The gate sizes the samples by a call it has
        # timed after both sides' setups (which run at once).
        self.current[1](*combo)
        self.current[1](*combo)
        return {"ok": True}

    def sample(self, count: int, number: int) -> dict:
        obj, fn, combo = self.current
        times = []
        gc_was = gc.isenabled()
        gc.disable()  # as timeit does: a collection is not the benchmark's time
        try:
            for _ in range(count):
                t0 = TIMER()
                for _ in range(number):
                    fn(*combo)
                times.append((TIMER() - t0) / number)
        finally:
            if gc_was:
                gc.enable()
        return {"ok": True, "times": times}

    @staticmethod
    def _teardown_obj(obj, combo) -> None:
        if hasattr(obj, "teardown"):
            obj.teardown(*combo)

    def teardown(self) -> dict:
        if self.current is not None:
            obj, _, combo = self.current
            self.current = None
            self._teardown_obj(obj, combo)
        return {"ok": True}


def _check_imports(root: pathlib.Path) -> None:
    """The suite and, where the commit has it, the kernels package come from ``root``."""
    for package in ("benchmarks", "kernels"):
        if not (root / package / "__init__.py").exists():
            continue
        module = importlib.import_module(package)
        where = pathlib.Path(module.__file__).resolve().parent
        if where != (root / package).resolve():
            raise RuntimeError(f"{package} was imported from {where}, not from {root}; "
                               "an installed copy shadows the commit under test")


def main() -> int:
    parser = argparse.ArgumentParser(description="one side of kernelrace's regression gate")
    parser.add_argument("--root", required=True, help="the commit's checkout")
    parser.add_argument("--peakmem", metavar="NAME",
                        help="measure this peakmem_ benchmark once and exit")
    parser.add_argument("--key", default="[]", help="its parameter reprs, a JSON list")
    args = parser.parse_args()
    root = pathlib.Path(args.root).resolve()
    # Replies go to the real stdout; anything the suite prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    sys.path[:] = [str(root)] + [p for p in sys.path
                                 if pathlib.Path(p or ".").resolve() != pathlib.Path(
                                     __file__).resolve().parent]
    os.chdir(root)

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")

    if args.peakmem:
        try:
            _check_imports(root)
            reply(peak_memory(args.peakmem, json.loads(args.key)))
        except BaseException as exc:  # noqa: BLE001 - reported to the gate, which decides
            reply({"error": "".join(traceback.format_exception(exc, limit=8))})
            return 1
        return 0
    try:
        _check_imports(root)
        worker = Worker(root)
    except BaseException as exc:  # noqa: BLE001 - reported to the gate, which decides
        reply({"error": f"cannot load the suite at {root}: "
                        + "".join(traceback.format_exception_only(exc)).strip()})
        return 1
    reply({"ok": True, "python": sys.executable, "pid": os.getpid()})
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            worker.teardown()
            reply({"ok": True})
            return 0
        try:
            reply(getattr(worker, cmd)(**msg))
        except Exception:  # noqa: BLE001 - the benchmark failed; the gate records it
            worker.current = None
            reply({"error": traceback.format_exc(limit=8)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
