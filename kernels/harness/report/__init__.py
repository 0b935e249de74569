"""The report: asv results + machine calibration -> results/report.md and results/plots/*.png.

Reads, never writes, asv's results (see :mod:`kernels.harness.asvresults`). Nothing
here knows a kernel's benchmarks by name; it finds them by convention and by asv's
metadata:

- the kernel is the benchmark's module name without ``bench_``
  (``bench_k.TimeRun.time_run`` -> ``k``); known kernels come
  in their specs' order (:func:`kernels.registry.kernel_names`), others after;
- parameters are found by their ``param_names``: ``strategy`` (a label such as
  ``numba`` or ``threaded:numba``; an ``inner`` parameter is joined to it), the
  problem size (``size``, or a kernel spec's ``size_name``: ``n``, ``samples``,
  ``context``...), ``workers`` and ``preset``; any other parameter is kept as a column
  of its own;
- ``time_*``/``timeraw_*`` benchmarks give the tables; a ``track_*`` benchmark declares
  what it measures by its asv ``unit`` (:data:`.model.TRACK_KINDS`: ``bytes`` one call
  reads, ``bytes/token``, ``weight bytes``, ``FLOP``, ``GB/s``, ``GFLOP/s``) and is
  joined by it to the time benchmarks whose parameters it shares; results stored before
  units were declared are read through :data:`.model.LEGACY_TRACK_UNITS`;
- ``numpy`` on 1 worker is the speedup baseline; ``primesieve`` or ``torch``
  strategies are anchors that every strategy is compared with.

The package, by role: :mod:`.model` (rows, parameter roles, track joins),
:mod:`.derived` (speedup, efficiencies, rates, FLOP per byte), :mod:`.arithmetic`
(operation counts of kernels without FLOP tracks), :mod:`.tables` (formatting, markdown),
:mod:`.plots`, :mod:`.build` (the page, :func:`build_report`) and :mod:`.cli` (options,
writing all or nothing).
"""

from kernels.harness.report.build import build_report, kernel_order, pick_run
from kernels.harness.report.cli import add_arguments, main, run
from kernels.harness.report.derived import (
    BASELINE,
    Derived,
    anchor_names,
    baseline_size,
    cache_bytes,
    derive,
)
from kernels.harness.report.model import (
    LEGACY_TRACK_UNITS,
    TRACK_KINDS,
    Row,
    Table,
    build_table,
    classify_track,
    declared_unit,
    param_roles,
)
from kernels.harness.report.plots import (
    plot_bandwidth,
    plot_kv_bytes,
    plot_roofline,
    plot_scaling,
    plot_speedup,
    plot_time_vs_size,
)
from kernels.harness.report.tables import (
    fmt_bytes,
    fmt_seconds,
    fmt_size,
    markdown_table,
    render_table,
)

__all__ = [
    "anchor_names", "BASELINE", "Derived", "LEGACY_TRACK_UNITS", "Row", "Table", "TRACK_KINDS",
    "add_arguments", "baseline_size", "build_report", "build_table", "cache_bytes",
    "classify_track", "declared_unit", "derive", "fmt_bytes", "fmt_seconds", "fmt_size",
    "kernel_order", "main", "markdown_table", "param_roles", "pick_run", "plot_bandwidth",
    "plot_kv_bytes", "plot_roofline", "plot_scaling", "plot_speedup", "plot_time_vs_size",
    "render_table", "run",
]
