"""Machine calibration: what this computer is and the limits it reaches, measured.

``kernelrace machine`` writes results/machine.json beside the asv results; the report
turns kernel times into efficiencies against these figures (memory bandwidth for the
bandwidth-bound kernels; float32 matmul GFLOP/s and the FMA probe's peak for the
compute-bound ones). The probes themselves live in :mod:`kernels.harness.probes` and
are re-exported here, so that a benchmark can import e.g.
``measure_read_bandwidth(nbytes, workers)`` or :class:`ReadStream` from either.

This module: what the machine is (CPU, caches, BLAS, numba, anchors), the command that
runs the probes and writes the JSON, and the readers of that JSON (:func:`load_machine`,
:func:`bandwidth_gbps`, :func:`matmul_gflops`, :func:`fma_gflops`), which accept files
written before a figure existed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kernels.harness.argtypes import byte_size, whole_number
from kernels.harness.atomic import write_text_atomic
from kernels.harness.probes import (  # noqa: F401 - re-exported: benchmarks import them here
    BANDWIDTH_KINDS,
    DEFAULT_ARRAY_BYTES,
    DEFAULT_FMA_SECONDS,
    DEFAULT_MATMUL_N,
    FMA_DTYPES,
    FMA_METHOD,
    GiB,
    MatmulStream,
    MiB,
    ReadStream,
    _kernels,
    _np,
    fma_asm,
    fma_register,
    measure_bandwidth,
    measure_copy_bandwidth,
    measure_fma,
    measure_fma_gflops,
    measure_fma_widest,
    measure_matmul_gflops,
    measure_read_bandwidth,
    measure_triad_bandwidth,
)

SCHEMA = 1
QUICK_ARRAY_BYTES = 256 * MiB
QUICK_MATMUL_N = 1024
QUICK_FMA_SECONDS = 0.05


# ---------------------------------------------------------------------------
# What the machine is
# ---------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _parse_size(text: str) -> int | None:
    """'48K' / '2048 KiB' / '260M' -> bytes."""
    text = text.strip().replace("iB", "").replace("B", "").replace(" ", "")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1].upper() in scale:
            return int(float(text[:-1]) * scale[text[-1].upper()])
        return int(text)
    except (ValueError, OverflowError):  # "infK" from a broken sysfs or lscpu
        return None


def cache_info(cpu: int = 0) -> list[dict[str, Any]]:
    """Caches seen by ``cpu``: level, type, size in bytes, CPUs sharing it.

    Read from /sys/devices/system/cpu/cpuN/cache; falls back to ``lscpu`` sizes.
    """
    base = Path(f"/sys/devices/system/cpu/cpu{cpu}/cache")
    caches = []
    for index in sorted(base.glob("index*")):
        try:
            entry = {
                "level": int((index / "level").read_text()),
                "type": (index / "type").read_text().strip(),
                "size_bytes": _parse_size((index / "size").read_text()),
                "shared_cpu_list": (index / "shared_cpu_list").read_text().strip(),
            }
        except (OSError, ValueError):
            continue
        caches.append(entry)
    if caches:
        return caches
    lscpu = shutil.which("lscpu")
    if lscpu is None:
        return []
    try:
        out = subprocess.run([lscpu], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    for line in out.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name.startswith("L") and "cache" in name:
            level = int(name[1]) if name[1].isdigit() else 0
            kind = {"d": "Data", "i": "Instruction"}.get(name[2:3], "Unified")
            size = _parse_size(value.split("(")[0])
            caches.append({"level": level, "type": kind, "size_bytes": size, "total": True})
    return caches


def last_level_cache_bytes(caches: list[dict[str, Any]]) -> int | None:
    """Size in bytes of the highest-level data/unified cache."""
    usable = [c for c in caches if c.get("type") != "Instruction" and c.get("size_bytes")]
    if not usable:
        return None
    return max(usable, key=lambda c: (c["level"], c["size_bytes"]))["size_bytes"]


def memory_total_bytes() -> int | None:
    """Physical memory in bytes (MemTotal from /proc/meminfo)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def blas_info() -> list[dict[str, Any]]:
    """NumPy's BLAS/OpenMP thread pools as threadpoolctl reports them."""
    import numpy  # noqa: F401 - loads the BLAS so threadpoolctl can see it
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "prefix", "version", "threading_layer",
            "architecture", "num_threads", "filepath")
    return [{k: d.get(k) for k in keep if k in d} for d in threadpool_info()]


def int8_paths(nb: dict[str, Any]) -> str:
    """How a calibration's narrow-cache kernels ran, in words: int8 scores and values
    (calibrations from before the integer value pass record the scores only), and
    bfloat16 products where they were recorded."""
    values = nb.get("int8_values")
    if values is None:
        words = f"int8 keys scored in {nb['int8_scores']}"
    elif values == nb["int8_scores"]:
        words = f"int8 scores and values in {values}"
    else:
        words = f"int8 scores in {nb['int8_scores']}, values in {values}"
    bf16 = nb.get("bf16_products")
    return f"{words}, bfloat16 in {bf16}" if bf16 else words


def numba_info() -> dict[str, Any]:
    """numba's version, thread count and threading layer (after a parallel run), and how
    the register-tiled kernels compile here (:mod:`kernels.simd`): float32 lanes per
    vector, whether an int8 cache's scores and values are summed in integers (AVX-512
    VNNI, with the query in int8 or int16, or ``vpmaddwd``) or in float tiles, and
    whether a bfloat16 cache's are bfloat16 products (``vdpbf16ps``), which the narrow
    caches' figures depend on."""
    import numba

    from kernels import simd

    info: dict[str, Any] = {
        "version": numba.__version__,
        "num_threads": int(numba.config.NUMBA_NUM_THREADS),
        "simd_lanes": simd.LANES,
        "int8_scores": simd.INT_SCORES_WORDS,
        "int8_values": simd.INT_MADD_WORDS,
        "bf16_products": "products (AVX-512 BF16)" if simd.BF16_DOT else "float tiles",
    }
    try:
        info["threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel function has run yet: force one
        _kernels()["read"](_np().ones(16))
        info["threading_layer"] = numba.threading_layer()
    return info


def _package_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def anchors() -> dict[str, Any]:
    """Optional anchors present here, with versions; absent ones are None.

    torch is looked up by package metadata, not imported (importing it takes seconds).
    """
    cli = shutil.which("primesieve")
    cli_version = None
    if cli is not None:
        try:
            out = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=10)
            first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
            cli_version = first.split(",")[0].replace("primesieve", "").strip() or "unknown"
        except (OSError, subprocess.SubprocessError, IndexError):
            cli_version = "unknown"
    return {
        "primesieve_python": _package_version("primesieve"),
        "primesieve_cli": cli_version,
        "primesieve_cli_path": cli,
        "torch": _package_version("torch"),
    }


# ---------------------------------------------------------------------------
# Reading machine.json back (for the report and for benchmarks)
# ---------------------------------------------------------------------------


def load_machine(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a machine.json; ValueError naming the file when it is corrupt."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); rerun `kernelrace machine`") from None
    if not isinstance(data, dict) or "bandwidth_gbps" not in data:
        raise ValueError(f"{path}: not a kernelrace machine file (no 'bandwidth_gbps')")
    return data


def _per_workers(table: dict[str, Any] | None, workers: int | None) -> float | None:
    """The entry for ``workers`` threads, else the largest measured count below it."""
    if not table:
        return None
    counts = sorted(int(k) for k in table)
    if workers is None:
        workers = counts[-1]
    below = [c for c in counts if c <= workers] or counts[:1]
    return float(table[str(below[-1])])


def bandwidth_gbps(machine: dict[str, Any], kind: str = "read", workers: int | None = None
                   ) -> float | None:
    """Measured ``kind`` bandwidth (GB/s) at ``workers`` threads (None: all measured cores)."""
    return _per_workers(machine.get("bandwidth_gbps", {}).get(kind), workers)


def matmul_gflops(machine: dict[str, Any], workers: int | None = None) -> float | None:
    """Measured float32 matmul GFLOP/s at ``workers`` threads (None: all measured cores)."""
    return _per_workers(machine.get("matmul", {}).get("gflops"), workers)


def fma_gflops(machine: dict[str, Any], dtype: str = "float32", workers: int | None = None,
               *, width: str = "peak") -> float | None:
    """The FMA probe's GFLOP/s for ``dtype`` at ``workers`` threads (None: all measured
    cores): ``width="peak"`` at the CPU's widest vectors, ``"numba"`` at the width numba
    compiles for by default here. None for files written before the probe existed."""
    fma = machine.get("fma") or {}
    if width == "numba":
        fma = fma.get("numba_default") or {}
    elif width != "peak":
        raise ValueError(f"width must be 'peak' or 'numba', got {width!r}")
    return _per_workers((fma.get("gflops") or {}).get(dtype), workers)


def _medians(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {d: {w: statistics.median(v) for w, v in per.items()} for d, per in samples.items()}


def measure_fma_section(workers_list: list[int], repeats: int,
                        seconds: float = DEFAULT_FMA_SECONDS) -> dict[str, Any]:
    """machine.json's ``fma``: the probe at numba's default vector width in this process,
    and at the CPU's widest in a child process where they differ (AVX-512 CPUs, where
    LLVM prefers 256-bit vectors). ``gflops`` is the peak: the widest that ran."""
    default = measure_fma(workers_list, repeats, seconds)
    section: dict[str, Any] = {
        "method": FMA_METHOD,
        "repeats": repeats,
        "seconds_per_run": seconds,
        "numba_default": {**default, "gflops": _medians(default["samples_gflops"])},
    }
    peak, how = default, "numba's default vector width (already the widest)"
    try:
        widest = measure_fma_widest(workers_list, repeats, seconds)
    except (RuntimeError, OSError, ValueError) as exc:
        widest, how = None, "numba's default vector width (the widest probe failed)"
        section["widest_error"] = str(exc)
    if widest is not None:
        peak, how = widest, ("a child process compiled for 512-bit vectors "
                             "(NUMBA_CPU_FEATURES=<host features>,-prefer-256-bit)")
    section.update(peak_from=how, register=peak["register"],
                   samples_gflops=peak["samples_gflops"],
                   gflops=_medians(peak["samples_gflops"]))
    return section


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def calibrate(*, array_bytes: int, matmul_n: int, repeats: int,
              workers_list: list[int] | None = None,
              fma_seconds: float = DEFAULT_FMA_SECONDS) -> dict[str, Any]:
    """Describe and measure this machine; returns the machine.json document."""
    from kernels.executors import cpu_count

    np = _np()
    cores = cpu_count()
    workers_list = workers_list or sorted({1, cores})
    caches = cache_info()
    llc = last_level_cache_bytes(caches)
    load_before = _loadavg()
    others = _OtherCpu()
    t0 = time.perf_counter()
    bw = measure_bandwidth(array_bytes, workers_list, repeats)
    mm = {w: measure_matmul_gflops(matmul_n, w, repeats) for w in workers_list}
    fma = measure_fma_section(workers_list, repeats, fma_seconds)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": {
            "model": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "affinity_cpus": cores,
            "caches": caches,
            "llc_bytes": llc,
        },
        "memory_total_bytes": memory_total_bytes(),
        "numpy": {"version": np.__version__, "blas": blas_info()},
        "numba": numba_info(),
        "anchors": anchors(),
        "bandwidth": {
            "array_bytes": int(array_bytes // 8 * 8),
            "arrays_over_llc": (array_bytes / llc) if llc else None,
            "repeats": repeats,
            "counting": "STREAM: read 1x, copy 2x, triad 3x array bytes per pass; GB = 1e9 B",
            "samples_gbps": {k: {str(w): v for w, v in d.items()} for k, d in bw.items()},
        },
        "bandwidth_gbps": {
            k: {str(w): statistics.median(v) for w, v in d.items()} for k, d in bw.items()
        },
        "matmul": {
            "dtype": "float32",
            "n": matmul_n,
            "repeats": repeats,
            "samples_gflops": {str(w): v for w, v in mm.items()},
            "gflops": {str(w): statistics.median(v) for w, v in mm.items()},
        },
        "fma": fma,
    }
    doc["measure_seconds"] = round(time.perf_counter() - t0, 2)
    # Other work on the machine lowers every figure; say how busy it was.
    doc["other_cpu_share"] = others.share()
    doc["load_average"] = {"before": load_before, "after": _loadavg()}
    return doc


class _OtherCpu:
    """The share of all CPUs' time that processes other than this one used since it
    was made: /proc/stat's busy time less this process's own CPU time (every thread).

    Unlike the load average, which trails the last minute and counts this process's own
    measuring threads, it sees only the work that competed with the measurement.
    """

    def __init__(self) -> None:
        self.busy = _busy_cpu_seconds()
        self.own = time.process_time()
        self.wall = time.monotonic()

    def share(self) -> float | None:
        busy = _busy_cpu_seconds()
        if busy is None or self.busy is None:
            return None
        elapsed = (time.monotonic() - self.wall) * (os.cpu_count() or 1)
        other = (busy - self.busy) - (time.process_time() - self.own)
        return round(min(max(other / elapsed, 0.0), 1.0), 3) if elapsed > 0 else None


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: user, nice, system, irq,
    softirq, steal), or None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (runnable processes), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy_note(doc: dict[str, Any]) -> str | None:
    """A warning when other processes used over a tenth of the CPU time while measuring.

    Files written before ``other_cpu_share`` existed fall back to the 1-minute load
    average (over a quarter of the cores), which also counts the measurement's own
    threads and the minute before it.
    """
    share = doc.get("other_cpu_share")
    if share is not None:
        if share <= 0.1:
            return None
        return (f"other processes used {share:.0%} of the CPU time while measuring, so "
                "these limits are low; calibrate on a quiet machine")
    load = doc.get("load_average") or {}
    peak = max((v[0] for v in (load.get("before"), load.get("after")) if v), default=None)
    cores = doc.get("cpu", {}).get("affinity_cpus") or 1
    if peak is None or peak <= 0.25 * cores:
        return None
    return (f"load average up to {peak:.1f} on {cores} cores while measuring: other work "
            "shared the machine, so these limits are low; calibrate on a quiet machine")


def summary(doc: dict[str, Any]) -> str:
    """A few lines for a person: what the machine is and what it reached."""
    cpu = doc["cpu"]
    llc = cpu.get("llc_bytes")
    lines = [
        f"cpu      {cpu['model']}  ({cpu['affinity_cpus']} cores usable of "
        f"{cpu['logical_cpus']}; LLC {llc / MiB:.0f} MiB)" if llc else
        f"cpu      {cpu['model']}  ({cpu['affinity_cpus']} cores usable)",
    ]
    blas = [b for b in doc["numpy"]["blas"] if b.get("user_api") == "blas"]
    blas_text = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('num_threads')} threads)" for b in blas
    ) or "not detected"
    lines.append(f"numpy    {doc['numpy']['version']}, BLAS {blas_text}")
    nb = doc["numba"]
    lines.append(f"numba    {nb['version']}, threading layer {nb.get('threading_layer')}, "
                 f"{nb['num_threads']} threads")
    if "simd_lanes" in nb:  # calibrations from before these fields lack them
        lines.append(f"kernels  {nb['simd_lanes']} float32 lanes per vector, {int8_paths(nb)}")
    mib = doc["bandwidth"]["array_bytes"] / MiB
    for kind in BANDWIDTH_KINDS:
        per = doc["bandwidth_gbps"][kind]
        figures = ", ".join(f"{v:.1f} GB/s on {w} thread{'s' if w != '1' else ''}"
                            for w, v in per.items())
        lines.append(f"{kind:<8} {figures}  ({mib:.0f} MiB arrays)")
    mm = doc["matmul"]
    figures = ", ".join(f"{v:.0f} GFLOP/s on {w} thread{'s' if w != '1' else ''}"
                        for w, v in mm["gflops"].items())
    lines.append(f"matmul   float32 n={mm['n']}: {figures}")
    lines += fma_summary(doc)
    a = doc["anchors"]
    lines.append(
        "anchors  primesieve python " + (a["primesieve_python"] or "absent")
        + ", primesieve CLI " + (a["primesieve_cli"] or "absent")
        + ", torch " + (a["torch"] or "absent")
    )
    note = busy_note(doc)
    if note:
        lines.append(f"note     {note}")
    over = doc["bandwidth"].get("arrays_over_llc")
    # STREAM asks for 4x the LLC; below 2x a good share of each pass hits the cache.
    if over is not None and over < 2:
        lines.append(f"note     arrays are only {over:.1f}x the last-level cache: bandwidth "
                     "figures are partly cache figures (use the default size, not --quick)")
    return "\n".join(lines)


def _threads(w: str) -> str:
    return f"{w} thread{'s' if w != '1' else ''}"


def fma_summary(doc: dict[str, Any]) -> list[str]:
    """The FMA probe's lines of :func:`summary`: the peak per dtype and thread count with
    its ratio to the float32 matmul rate, and numba's default width where it is narrower.
    Nothing for files written before the probe."""
    fma = doc.get("fma")
    if not fma or not fma.get("gflops"):
        return []
    lines = []
    for dtype, per in fma["gflops"].items():
        reg = (fma.get("register") or {}).get(dtype) or "?"
        parts = []
        for w, v in per.items():
            mm = matmul_gflops(doc, int(w))
            ratio = f", {v / mm:.2f}x matmul" if mm and dtype == "float32" else ""
            parts.append(f"{v:.0f} GFLOP/s on {_threads(w)}{ratio}")
        lines.append(f"fma      {dtype} ({reg}): " + ", ".join(parts))
    default = fma.get("numba_default") or {}
    regs = default.get("register") or {}
    if default.get("gflops") and regs != fma.get("register"):
        figures = "; ".join(f"{d} " + " / ".join(f"{v:.0f}" for v in per.values())
                            for d, per in default["gflops"].items())
        counts = next(iter(default["gflops"].values()))
        lines.append(f"         numba's default code here uses "
                     f"{'/'.join(sorted({str(r) for r in regs.values()}))}: {figures} GFLOP/s "
                     f"on {' / '.join(_threads(w) for w in counts)}")
    if fma.get("widest_error"):
        lines.append(f"note     the widest-vector FMA probe failed: {fma['widest_error']}")
    return lines


# --array-bytes: at least one float64; at most 1 TiB per array (3 are held).
_bytes_arg = byte_size(8, 1 << 40)
MAX_REPEATS = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelrace machine``."""
    parser.add_argument("--out", default="results/machine.json",
                        help="where to write the JSON (default results/machine.json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ARRAY_BYTES // MiB} MiB arrays, n={QUICK_MATMUL_N} matmul, "
                        f"{QUICK_FMA_SECONDS:g} s FMA runs, 3 repeats: a first look "
                        "(bandwidth partly from cache)")
    parser.add_argument("--array-bytes", type=_bytes_arg, default=None,
                        help="bytes per bandwidth array, e.g. 1G (default 1G; 3 arrays held)")
    parser.add_argument("--repeats", type=whole_number(1, MAX_REPEATS), default=None,
                        help="timed passes per figure, median reported (default 5, quick 3)")
    parser.add_argument("--json", action="store_true", help="also print the JSON to stdout")


def _command_line(args: argparse.Namespace) -> str:
    parts = ["kernelrace", "machine", "--out", str(args.out)]
    if args.quick:
        parts.append("--quick")
    if args.array_bytes:
        parts += ["--array-bytes", str(args.array_bytes)]
    if args.repeats:
        parts += ["--repeats", str(args.repeats)]
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Measure, write the JSON atomically, print the summary; exit code."""
    array_bytes = args.array_bytes
    if array_bytes is None:
        array_bytes = QUICK_ARRAY_BYTES if args.quick else DEFAULT_ARRAY_BYTES
    repeats = args.repeats
    if repeats is None:
        repeats = 3 if args.quick else 5
    # Checked here too for callers that build args without the parser: 0 is not "default".
    if not 1 <= repeats <= MAX_REPEATS:
        raise ValueError(f"--repeats must be in [1, {MAX_REPEATS}], got {repeats}")
    matmul_n = QUICK_MATMUL_N if args.quick else DEFAULT_MATMUL_N
    fma_seconds = QUICK_FMA_SECONDS if args.quick else DEFAULT_FMA_SECONDS
    print(f"measuring: 3 x {array_bytes / MiB:.0f} MiB arrays, matmul n={matmul_n}, "
          f"FMA loop {fma_seconds:g} s a run, {repeats} repeats ...", file=sys.stderr,
          flush=True)
    doc = calibrate(array_bytes=array_bytes, matmul_n=matmul_n, repeats=repeats,
                    fma_seconds=fma_seconds)
    doc["quick"] = bool(args.quick)
    doc["command"] = _command_line(args)
    text = json.dumps(doc, indent=2)
    write_text_atomic(args.out, text + "\n")
    print(summary(doc))
    print(f"wrote {args.out}")
    if args.json:
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m kernels.harness.machine``: the same as ``kernelrace machine``."""
    parser = argparse.ArgumentParser(prog="kernelrace machine", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
