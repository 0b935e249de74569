"""The report's data model: a time benchmark's points as rows with their parameters sorted
into roles (strategy, size, workers, preset) and the ``track_`` values joined to them.

Reads asv results through :mod:`kernels.harness.asvresults`; knows no kernel by name: the
size parameter's name comes from the kernels' specs (:mod:`kernels.registry`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from kernels.harness import asvresults
from kernels.harness.asvresults import BenchmarkResult, Point

# Parameter names with a role; the size's names also come from the kernels' specs.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "strategy": ("strategy",),
    "inner": ("inner",),
    "size": ("size",),
    "workers": ("workers",),
    "preset": ("preset",),
}


@cache
def role_names() -> dict[str, tuple[str, ...]]:
    """:data:`ROLE_NAMES` with every kernel spec's ``size_name`` added to the size role."""
    from kernels import registry

    sizes = [registry.spec(k).size_name for k in registry.kernel_names()]
    names = dict(ROLE_NAMES)
    names["size"] = tuple(dict.fromkeys((*ROLE_NAMES["size"], *sizes)))
    return names


def param_roles(param_names: Iterable[str]) -> dict[str, str]:
    """param name -> role (strategy, inner, size, workers, preset, or the name itself)."""
    roles: dict[str, str] = {}
    taken: set[str] = set()
    for name in param_names:
        low = name.lower()
        role = next((r for r, names in role_names().items() if low in names and r not in taken),
                    None)
        roles[name] = role or name
        if role:
            taken.add(role)
    return roles


@dataclass
class Row:
    """A time benchmark at one parameter combination (seconds)."""

    strategy: str
    size: Any
    workers: int | None
    facet: tuple[tuple[str, Any], ...]  # preset and other parameters
    params: dict[str, Any]
    seconds: float
    q25: float | None
    q75: float | None
    repeat: int | None = None  # samples behind the median (1 with asv --quick)
    ci_lo: float | None = None  # asv's 99% interval of the median (stats_ci_99_a / _b)
    ci_hi: float | None = None
    extra: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Table:
    """All rows of one time benchmark, and the joined track values."""

    kernel: str
    benchmark: BenchmarkResult
    roles: dict[str, str]
    rows: list[Row]
    failed: list[str]
    skipped: int
    size_name: str | None
    # kind (a value of TRACK_KINDS: bytes, per_token, weight_bytes, ...) -> track
    tracks: dict[str, BenchmarkResult]
    # A Derived field (PAIRED_RATIOS) -> {row key (Table.lookup's): the paired figure}
    paired: dict[str, dict[tuple[Any, ...], PairedFigure]] = field(default_factory=dict)
    # The paired tracks (benchmark names) whose points joined these rows
    paired_tracks: set[str] = field(default_factory=set)

    def lookup(self) -> dict[tuple[Any, ...], Row]:
        return {(r.strategy, r.size, r.workers, r.facet): r for r in self.rows}

    @property
    def has_workers(self) -> bool:
        return "workers" in self.roles.values()

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r.strategy for r in self.rows))

    @property
    def sizes(self) -> list[Any]:
        return sorted({r.size for r in self.rows if r.size is not None}, key=sort_key)

    @property
    def workers(self) -> list[int | None]:
        return sorted({r.workers for r in self.rows}, key=lambda w: (w is None, w or 0))

    @property
    def facets(self) -> list[tuple[tuple[str, Any], ...]]:
        return list(dict.fromkeys(r.facet for r in self.rows))


def sort_key(x: Any) -> tuple[int, Any]:
    """Numbers first, in order, then anything else by its text."""
    return (0, x) if isinstance(x, int | float) else (1, str(x))


# What a ``track_`` benchmark measures is declared by the suite in asv's own metadata: the
# benchmark's ``unit`` (asv stores it in benchmarks.json). The one table from unit to the
# kind the report joins to a time benchmark's rows; a unit not listed ("x", "%",
# "ratio", "seconds", "stderr"...) is a figure of its own, listed under "Other
# measurements" and joined to nothing. docs/report.md explains each kind.
TRACK_KINDS: dict[str, str] = {
    "bytes": "bytes",  # bytes one call reads (its cache): GB/s = bytes / the row's time
    "bytes/token": "per_token",  # KV-cache bytes per token: x context (x batch) = bytes
    "weight bytes": "weight_bytes",  # weight bytes one call reads (roofline intensity)
    "FLOP": "flops",  # FLOPs of one call: GFLOP/s = FLOP / the row's time
    "GB/s": "gbps",  # a rate timed by the track itself
    "GFLOP/s": "gflops",  # likewise
}

# Units whose values are byte counts (the report writes them in KiB, MiB, GiB), and those
# of a bare number.
BYTE_UNITS = ("bytes", "bytes/token", "weight bytes")
UNITLESS = ("ratio",)

# Results stored before the suites declared their kinds (issue 13): their benchmarks.json
# (results/asv/benchmarks.json of the reference runs, and runs of that time) gave these
# tracks unit "bytes", which TRACK_KINDS reads as bytes one call reads. Each maps
# (benchmark name, the unit it was stored with) to the unit its benchmark declares now,
# so an entry applies to those stored results only: a benchmarks.json written since
# carries the declared unit itself. Add nothing here; a new track declares its unit.
LEGACY_TRACK_UNITS: dict[tuple[str, str], str] = {
    ("bench_attention.Sizes.track_kv_bytes_per_token", "bytes"): "bytes/token",
    ("bench_attention.Sizes.track_kv_bytes_ratio_to_mha", "bytes"): "ratio",
    ("bench_attention.StepCost.track_weight_bytes", "bytes"): "weight bytes",
}


@dataclass(frozen=True)
class PairedRatio:
    """How a paired ``track_`` (both sides timed in alternation, its rounds stored) gives a
    table's ratio column its figure: the Derived field it stands in for, the worker
    count of the rows it belongs to when the track has no ``workers`` parameter, and the
    map from its value to the field's (``value / scale``, or ``scale / value`` when
    ``inverse``: a time over the anchor's is the inverse of a speed against it)."""

    field: str
    workers: int | None = None
    scale: float = 1.0
    inverse: bool = False

    def convert(self, v: float) -> float:
        return self.scale / v if self.inverse else v / self.scale


# The paired tracks that stand in for a table's ratio columns, by function name (the suites
# name them alike in every kernel): the report puts their median and 99% interval in the
# rows they belong to, in place of the ratio of two medians timed minutes apart. A track
# belongs to a time benchmark's rows when its parameters are the benchmark's, less at most
# the workers (then ``workers`` says which rows).
PAIRED_RATIOS: dict[str, PairedRatio] = {
    "track_speedup_over_numpy": PairedRatio("speedup"),
    "track_speedup_2_workers": PairedRatio("efficiency", workers=2, scale=2.0),
    "track_time_over_primesieve": PairedRatio("anchor", workers=1, inverse=True),
    "track_share_of_read_bw": PairedRatio("bw_fraction", scale=100.0),
    "track_share_of_matmul": PairedRatio("flops_fraction", scale=100.0),
}


@dataclass(frozen=True)
class PairedFigure:
    """A paired ratio in a table's terms: median, 99% interval, and the rounds behind it."""

    value: float
    lo: float
    hi: float
    rounds: int


#: Fewest rounds with a distribution-free 99% interval of their median: the lowest and
#: highest of n rounds cover it with probability 1 - 2 * 0.5**n, 0.992 at 8. Below that,
#: asv assumes exponential noise and can reach past the rounds: with ``make bench
#: QUICK=1``'s 3 rounds a speed-up read 0.157x [-0.0548, 0.408].
MIN_CI_ROUNDS = 8


def rounds_interval(p: Point) -> tuple[float, float, int] | None:
    """(low, high, rounds) of a point asv stored with samples (a paired ``track_`` that
    returns its rounds, :func:`benchmarks.common.rounds_result`): the 99% interval of
    the median that asv computed from them. None for a single value or fewer than
    :data:`MIN_CI_ROUNDS` rounds (the row then shows the ratio of its medians)."""
    st = p.stats or {}
    lo, hi, n = st.get("ci_99_a"), st.get("ci_99_b"), st.get("repeat")
    if lo is None or hi is None or not n or n < MIN_CI_ROUNDS:
        return None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return float(lo), float(hi), int(n)


def declared_unit(bench: BenchmarkResult) -> str:
    """The unit a benchmark declares: the one asv stored for it, or, for results stored
    before units were declared, the one in :data:`LEGACY_TRACK_UNITS`."""
    unit = (bench.unit or "").strip()
    return LEGACY_TRACK_UNITS.get((bench.name, unit), unit)


def classify_track(track: BenchmarkResult) -> str | None:
    """What a ``track_`` benchmark measures, by its declared unit (:data:`TRACK_KINDS`,
    :func:`declared_unit`); None for a figure the report joins to nothing."""
    return TRACK_KINDS.get(declared_unit(track))


def build_table(kernel: str, bench: BenchmarkResult,
                tracks: list[BenchmarkResult]) -> Table:
    """Rows of a time benchmark with parameter roles, quartiles and joined track values."""
    roles = param_roles(bench.param_names)
    by_role = {role: name for name, role in roles.items()}
    chosen = _choose_tracks(bench, tracks)
    track_values = {kind: _index(t, bench.param_names) for kind, t in chosen.items()}
    rows: list[Row] = []
    failed: list[str] = []
    skipped = 0
    for p in bench.points():
        if p.value is None:
            failed.append(p.label())
            continue
        if not p.ok:
            skipped += 1
            continue
        extra = {kind: idx.get(_subkey(p.params, _shared(chosen[kind], bench.param_names)))
                 for kind, idx in track_values.items()}
        rows.append(_row(p, bench, roles, extra))
    table = Table(kernel, bench, roles, rows, failed, skipped, by_role.get("size"), chosen)
    table.paired = _paired_figures(bench, roles, tracks, table.paired_tracks)
    return table


def _paired_figures(bench: BenchmarkResult, roles: dict[str, str],
                    tracks: list[BenchmarkResult], joined: set[str],
                    ) -> dict[str, dict[tuple[Any, ...], PairedFigure]]:
    """Derived field -> {row key: figure} from the paired tracks (:data:`PAIRED_RATIOS`)
    that belong to ``bench``'s rows; the names of the tracks that gave any are added to
    ``joined``. Only points that stored their rounds count: a bare value has no
    interval, and is no better than the ratio of the table's medians."""
    out: dict[str, dict[tuple[Any, ...], PairedFigure]] = {}
    workers_name = next((n for n, role in roles.items() if role == "workers"), None)
    for track in tracks:
        how = PAIRED_RATIOS.get(asvresults.function_of(track.name))
        if how is None:
            continue
        missing = set(bench.param_names) - set(track.param_names)
        if (set(track.param_names) - set(bench.param_names) or missing - {workers_name}
                or (missing and how.workers is None)):
            continue
        for p in track.points():
            ci = rounds_interval(p)
            if not p.ok or ci is None or not p.value:
                continue
            lo, hi, n = ci
            params = dict(p.params)
            if missing:
                params[workers_name] = how.workers
            key = _row_key(params, bench, roles)
            lo, hi = sorted((how.convert(lo), how.convert(hi)))
            out.setdefault(how.field, {})[key] = PairedFigure(how.convert(p.value), lo, hi, n)
            joined.add(track.name)
    return out


def _choose_tracks(bench: BenchmarkResult,
                   tracks: list[BenchmarkResult]) -> dict[str, BenchmarkResult]:
    """kind -> the track joined to ``bench``: tracks of the same class first, then those
    sharing most parameters."""
    group = asvresults.group_of(bench.name)

    def rank(t: BenchmarkResult) -> tuple[bool, int]:
        return (asvresults.group_of(t.name) != group,
                -len(set(t.param_names) & set(bench.param_names)))

    chosen: dict[str, BenchmarkResult] = {}
    for t in sorted(tracks, key=rank):
        kind = classify_track(t)
        if kind and kind not in chosen and _joinable(kind, t, bench):
            chosen[kind] = t
    return chosen


def _row(p: Point, bench: BenchmarkResult, roles: dict[str, str],
         extra: dict[str, float | None]) -> Row:
    """The row of one measured point."""
    strategy, size, workers, facet = _row_key(p.params, bench, roles)
    stats = p.stats or {}
    return Row(
        strategy=strategy,
        size=size,
        workers=workers,
        facet=facet,
        params=p.params,
        seconds=float(p.value),
        q25=stats.get("q_25"),
        q75=stats.get("q_75"),
        repeat=int(stats["repeat"]) if "repeat" in stats else None,
        ci_lo=stats.get("ci_99_a"),
        ci_hi=stats.get("ci_99_b"),
        extra=extra,
    )


def _row_key(params: dict[str, Any], bench: BenchmarkResult,
             roles: dict[str, str]) -> tuple[Any, ...]:
    """(strategy, size, workers, facet) of a point's parameters: a row's key in
    :meth:`Table.lookup`. The strategy joins its inner kernel (``threaded:numba``); the
    facet is every parameter without a role (preset and the like)."""
    by_role = {role: name for name, role in roles.items()}
    strategy = str(params.get(by_role.get("strategy", ""), bench.name.rsplit(".", 1)[-1]))
    inner = params.get(by_role.get("inner", ""))
    if inner not in (None, "", "-", "none"):
        strategy = f"{strategy}:{inner}"
    workers = params.get(by_role.get("workers", ""))
    facet = tuple((name, params[name]) for name in bench.param_names
                  if roles[name] not in ("strategy", "inner", "size", "workers"))
    return (strategy, params.get(by_role.get("size", "")),
            int(workers) if isinstance(workers, int | float) else None, facet)


def _subkey(params: dict[str, Any], names: Iterable[str]) -> tuple[Any, ...]:
    return tuple(params.get(n) for n in names)


def _joinable(kind: str, track: BenchmarkResult, bench: BenchmarkResult) -> bool:
    """Whether a track's values belong to the time benchmark's rows.

    Rates (GB/s, GFLOP/s) are of one configuration: same parameters exactly. Cache bytes,
    weight bytes and FLOPs per call do not depend on strategy or workers: a subset will
    do. Bytes per token is a property of the preset: any shared parameter, the others
    read at their first value.
    """
    mine, theirs = set(bench.param_names), set(track.param_names)
    if kind in ("gbps", "gflops"):
        return theirs == mine
    if kind in ("bytes", "weight_bytes", "flops"):
        return theirs <= mine
    return bool(theirs & mine)


def _shared(track: BenchmarkResult, names: Iterable[str]) -> list[str]:
    return [n for n in track.param_names if n in set(names)]


def _index(track: BenchmarkResult, names: Iterable[str]) -> dict[tuple[Any, ...], float]:
    """Track values keyed by the parameters it shares with a time benchmark.

    A parameter the time benchmark lacks (e.g. the track's ``dtype``) is read at its
    first listed value, which is where suites put the default.
    """
    shared = _shared(track, names)
    first = {n: asvresults.decode_param(v[0]) for n, v in zip(track.param_names, track.params,
                                                             strict=False) if v}
    out = {}
    for p in track.points():
        if not p.ok or any(p.params[n] != first[n] for n in track.param_names
                           if n not in shared):
            continue
        out[_subkey(p.params, shared)] = float(p.value)
    return out


def preset_of(r: Row, table: Table) -> Any:
    """The row's value of the preset parameter, None if the table has none."""
    name = next((n for n, role in table.roles.items() if role == "preset"), None)
    return r.params.get(name) if name else None
