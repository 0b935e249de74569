"""Read asv 0.6 result files into flat points, for the report and for compare.

asv writes ``<results>/<machine>/<commit[:8]>-<env>.json`` (one per commit and
environment), ``<results>/<machine>/machine.json`` and ``<results>/benchmarks.json``.
A result file lists ``result_columns`` and, per benchmark, one row of columns; a
parameterised benchmark's columns hold one entry per combination of its ``params``
(the cartesian product, first parameter varying slowest). Parameter values are
stored as Python reprs (``"'numba'"``, ``"1000000"``).

This module only reads: nothing here writes, moves or deletes asv's files.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ResultsError(Exception):
    """A results file is missing, unreadable or not in asv's format; the message names it."""


@dataclass(frozen=True)
class BenchmarkResult:
    """One benchmark's row in one result file, unrolled per parameter combination.

    ``values[i]`` is seconds for ``time_``, bytes for ``peakmem_``, the benchmark's
    unit for ``track_``; ``None`` when it failed, NaN when it was skipped.
    """

    name: str
    param_names: tuple[str, ...]
    params: tuple[tuple[str, ...], ...]
    values: tuple[float | None, ...]
    stats: tuple[dict[str, float] | None, ...]
    samples: tuple[list[float] | None, ...]
    version: str | None
    type: str
    unit: str

    def combos(self) -> list[tuple[str, ...]]:
        """Parameter combinations (reprs), in the order of ``values``."""
        return list(itertools.product(*self.params)) if self.params else [()]

    def points(self) -> Iterator[Point]:
        """Every combination as a :class:`Point` with decoded parameter values."""
        for i, combo in enumerate(self.combos()):
            if i >= len(self.values):
                break
            yield Point(
                benchmark=self.name,
                params={n: decode_param(v) for n, v in zip(self.param_names, combo, strict=False)},
                key=combo,
                value=self.values[i],
                stats=self.stats[i] if i < len(self.stats) else None,
                samples=self.samples[i] if i < len(self.samples) else None,
            )


@dataclass(frozen=True)
class Point:
    """One measured value: a benchmark at one parameter combination."""

    benchmark: str
    params: dict[str, Any]
    key: tuple[str, ...]
    value: float | None
    stats: dict[str, float] | None = None
    samples: list[float] | None = None

    @property
    def ok(self) -> bool:
        """True when the value is a finite number (not failed, not skipped)."""
        return self.value is not None and math.isfinite(self.value)

    def label(self) -> str:
        """``name(p1, p2)`` as asv prints it."""
        if not self.key:
            return self.benchmark
        return f"{self.benchmark}({', '.join(self.key)})"


@dataclass
class ResultFile:
    """One asv result file: a machine, a commit, an environment and its benchmarks."""

    path: Path
    machine: str
    commit_hash: str
    env_name: str
    date_ms: int | None
    python: str | None
    requirements: dict[str, Any]
    env_vars: dict[str, Any]
    started_at_ms: int | None
    benchmarks: dict[str, BenchmarkResult] = field(default_factory=dict)


def decode_param(text: str) -> Any:
    """asv stores parameter values as reprs: ``"'numba'"`` -> ``'numba'``, ``"2"`` -> 2."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path}: file not found") from None
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            f"{path}: corrupt JSON at line {exc.lineno} column {exc.colno} ({exc.msg})"
        ) from None


def load_benchmarks(results_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``benchmarks.json``: benchmark name -> asv's description (type, unit, param_names...).

    Missing is not an error (returns ``{}``): names and types then come from the
    result files and the benchmark's name prefix.
    """
    path = Path(results_dir) / "benchmarks.json"
    if not path.exists():
        return {}
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object of benchmarks")
    return {k: v for k, v in data.items() if isinstance(v, dict) and k != "version"}


def _type_from_name(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    for prefix, kind in (("timeraw_", "time"), ("time_", "time"), ("peakmem_", "memory"),
                         ("mem_", "memory"), ("track_", "track")):
        if last.startswith(prefix):
            return kind
    return "unknown"


def _default_unit(kind: str) -> str:
    return {"time": "seconds", "memory": "bytes"}.get(kind, "unit")


def _as_float(x: Any) -> float | None:
    if x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def load_result_file(path: str | os.PathLike[str],
                     benchmarks: dict[str, dict[str, Any]] | None = None) -> ResultFile:
    """Parse one asv result file; :class:`ResultsError` naming the file if it is broken."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object (an asv result file)")
    missing = [k for k in ("commit_hash", "params", "results") if k not in data]
    if missing:
        raise ResultsError(f"{path}: not an asv result file (missing {', '.join(missing)})")
    columns = data.get("result_columns")
    if columns is None:
        raise ResultsError(
            f"{path}: no 'result_columns' (an asv result file older than 0.5?); "
            "run `asv update` on a copy"
        )
    benchmarks = benchmarks or {}
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise ResultsError(f"{path}: 'params' is not an object (got {type(params).__name__})")
    for key in ("date",):
        if data.get(key) is not None and (isinstance(data[key], bool)
                                          or not isinstance(data[key], int | float)):
            raise ResultsError(f"{path}: {key!r} is not a number of milliseconds")
    for key in ("requirements", "env_vars"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ResultsError(f"{path}: {key!r} is not an object")
    machine = str(params.get("machine") or path.parent.name)
    out = ResultFile(
        path=path,
        machine=machine,
        commit_hash=str(data["commit_hash"]),
        env_name=str(data.get("env_name") or ""),
        date_ms=data.get("date"),
        python=None if data.get("python") is None else str(data["python"]),
        requirements=data.get("requirements") or {},
        env_vars=data.get("env_vars") or {},
        started_at_ms=None,
    )
    started: list[int] = []
    if not isinstance(data["results"], dict):
        raise ResultsError(f"{path}: 'results' is not an object")
    for name, row in data["results"].items():
        if not isinstance(row, list):
            raise ResultsError(f"{path}: benchmark {name!r} has a malformed row")
        col = dict(zip(columns, row, strict=False))
        try:
            out.benchmarks[name] = _benchmark_result(name, col, benchmarks.get(name, {}))
        except (TypeError, ValueError) as exc:
            raise ResultsError(f"{path}: benchmark {name!r} is malformed ({exc})") from None
        if isinstance(col.get("started_at"), int | float):
            started.append(int(col["started_at"]))
    out.started_at_ms = max(started) if started else None
    return out


def _benchmark_result(name: str, col: dict[str, Any], info: dict[str, Any]) -> BenchmarkResult:
    params_raw = col.get("params") or []
    params = tuple(tuple(str(v) for v in p) for p in params_raw)
    n = 1
    for p in params:
        n *= len(p)
    raw = col.get("result")
    if raw is None:
        values: list[float | None] = [None] * n
    elif isinstance(raw, list):
        values = [_as_float(v) for v in raw]
    else:
        values = [_as_float(raw)]
    stats: list[dict[str, float] | None] = [None] * len(values)
    for key, column in col.items():
        if not key.startswith("stats_") or not isinstance(column, list):
            continue
        for j, v in enumerate(column[: len(values)]):
            if v is None:
                continue
            if stats[j] is None:
                stats[j] = {}
            stats[j][key[6:]] = float(v)
    raw_samples = col.get("samples")
    samples: list[list[float] | None] = [None] * len(values)
    if isinstance(raw_samples, list):
        for j, s in enumerate(raw_samples[: len(values)]):
            if isinstance(s, list):
                samples[j] = [float(x) for x in s if x is not None]
    names = info.get("param_names") or []
    if len(names) != len(params):
        names = [f"param{i + 1}" for i in range(len(params))]
    kind = info.get("type") or _type_from_name(name)
    return BenchmarkResult(
        name=name,
        param_names=tuple(names),
        params=params,
        values=tuple(values),
        stats=tuple(stats),
        samples=tuple(samples),
        version=col.get("version"),
        type=kind,
        unit=info.get("unit") or _default_unit(kind),
    )


def iter_result_paths(results_dir: str | os.PathLike[str], machine: str | None = None
                      ) -> Iterator[Path]:
    """Result files under ``results_dir`` (all machines, or one), sorted by path."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ResultsError(f"{root}: results folder not found (run `asv run` or `make bench`)")
    machines = [root / machine] if machine else sorted(p for p in root.iterdir() if p.is_dir())
    for mdir in machines:
        if not mdir.is_dir():
            raise ResultsError(f"{mdir}: no results for machine {machine!r}")
        for p in sorted(mdir.glob("*.json")):
            if p.name != "machine.json":
                yield p


_HEX = re.compile(r"^[0-9a-fA-F]{4,40}$")


def find_results(results_dir: str | os.PathLike[str], *, machine: str | None = None,
                 commit: str | None = None,
                 benchmarks: dict[str, dict[str, Any]] | None = None,
                 broken: list[tuple[Path, ResultsError]] | None = None) -> list[ResultFile]:
    """Load every result file matching ``machine`` and the commit hash prefix ``commit``.

    A file that cannot be read raises :class:`ResultsError`, unless ``broken`` is a list:
    then ``(path, error)`` is appended to it and the file is left out.
    """
    benchmarks = load_benchmarks(results_dir) if benchmarks is None else benchmarks
    out = []
    for path in iter_result_paths(results_dir, machine):
        if commit is not None:
            stem = path.name.split("-", 1)[0].lower()
            prefix = commit.lower()
            if not (stem.startswith(prefix[:8]) or prefix.startswith(stem)):
                continue
        try:
            result = load_result_file(path, benchmarks)
        except ResultsError as exc:
            if broken is None:
                raise
            broken.append((path, exc))
            continue
        if commit is not None and not result.commit_hash.lower().startswith(commit.lower()):
            continue
        out.append(result)
    return out


def merge(results: Iterable[ResultFile]) -> dict[str, BenchmarkResult]:
    """Benchmarks of several files (e.g. several environments) in one dict; later files win."""
    merged: dict[str, BenchmarkResult] = {}
    for r in results:
        merged.update(r.benchmarks)
    return merged


def kernel_of(benchmark: str) -> str:
    """The kernel a benchmark belongs to: its module name without a ``bench_`` prefix.

    ``bench_k.TimeRun.time_run`` -> ``k``; ``benchmarks.bench_x.f`` -> ``x``.
    """
    parts = benchmark.split(".")
    module = next((p for p in parts if p.startswith("bench_")), parts[0])
    return module.removeprefix("bench_")


def group_of(benchmark: str) -> str:
    """The benchmark's class (or module) path: everything before the function name."""
    return benchmark.rsplit(".", 1)[0] if "." in benchmark else benchmark


def function_of(benchmark: str) -> str:
    """The benchmark's function name: ``time_count``."""
    return benchmark.rsplit(".", 1)[-1]


def is_hex_prefix(text: str) -> bool:
    """True when ``text`` looks like a commit hash prefix (4 to 40 hex digits)."""
    return bool(_HEX.match(text))
