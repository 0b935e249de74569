"""Machine calibration: what this computer is and the limits it reaches, measured.

``kernelrace machine`` writes results/machine.json beside the asv results; the report
turns kernel times into efficiencies against these figures (memory bandwidth for the
bandwidth-bound kernels, float32 matmul GFLOP/s for the compute-bound ones). The
measuring functions are public so that a benchmark can import them, e.g.
``measure_read_bandwidth(nbytes, workers)``.

Bandwidth follows STREAM's byte counting: read counts one array, copy two (read +
write), triad three; write-allocate traffic is not counted. Arrays should be far
larger than the last-level cache (the default is 1 GiB per array).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernels.harness.argtypes import byte_size, whole_number
from kernels.harness.atomic import write_text_atomic

SCHEMA = 1
GiB = 1 << 30
MiB = 1 << 20
DEFAULT_ARRAY_BYTES = 1 * GiB
QUICK_ARRAY_BYTES = 256 * MiB
DEFAULT_MATMUL_N = 2048
QUICK_MATMUL_N = 1024
BANDWIDTH_KINDS = ("read", "copy", "triad")
# Arrays touched per pass, STREAM convention: how many times nbytes moves per pass.
_ARRAYS_MOVED = {"read": 1, "copy": 2, "triad": 3}


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


def numba_info() -> dict[str, Any]:
    """numba's version, thread count and threading layer (after a parallel run)."""
    import numba

    info: dict[str, Any] = {
        "version": numba.__version__,
        "num_threads": int(numba.config.NUMBA_NUM_THREADS),
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
# Measured limits
# ---------------------------------------------------------------------------


def _np():
    import numpy

    return numpy


@functools.cache
def _kernels() -> dict[str, Callable[..., Any]]:
    """The numba loops, compiled on first use (not at import: the CLI imports this)."""
    import numba
    from numba import prange

    # fastmath lets LLVM split the sum over several vector accumulators; without it
    # the loop is bound by the add latency, not by memory.
    @numba.njit(parallel=True, fastmath=True, cache=False)
    def read(a):
        total = 0.0
        for i in prange(a.size):
            total += a[i]
        return total

    @numba.njit(parallel=True, cache=False)
    def copy(a, b):
        for i in prange(a.size):
            b[i] = a[i]

    @numba.njit(parallel=True, cache=False)
    def triad(a, b, c, s):
        for i in prange(a.size):
            a[i] = b[i] + s * c[i]

    return {"read": read, "copy": copy, "triad": triad}


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up: compile, fault in pages, spin up the thread pool
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


class _Arrays:
    """Three float64 arrays of ``nbytes`` each, touched once before timing."""

    def __init__(self, nbytes: int) -> None:
        np = _np()
        n = max(1, int(nbytes) // 8)
        self.a = np.full(n, 1.0)
        self.b = np.full(n, 2.0)
        self.c = np.full(n, 3.0)
        self.nbytes = self.a.nbytes


def _bandwidth(kind: str, arrays: _Arrays, workers: int, repeats: int) -> list[float]:
    """GB/s (1e9 bytes per second) of each timed pass of ``kind``."""
    from kernels.executors import limit_threads

    k = _kernels()[kind]
    calls = {
        "read": lambda: k(arrays.a),
        "copy": lambda: k(arrays.a, arrays.b),
        "triad": lambda: k(arrays.a, arrays.b, arrays.c, 3.0),
    }
    moved = _ARRAYS_MOVED[kind] * arrays.nbytes
    with limit_threads(workers):
        _, times = _median_seconds(calls[kind], repeats)
    return [moved / t / 1e9 for t in times]


def _check_workers(workers: int) -> int:
    from kernels.executors import resolve_workers

    return resolve_workers(workers)


def _check_nbytes(nbytes: int) -> int:
    if isinstance(nbytes, bool) or int(nbytes) < 8:
        raise ValueError(f"nbytes must be an int >= 8 (bytes per array), got {nbytes!r}")
    return int(nbytes)


class ReadStream:
    """One float64 array of ``nbytes`` and a timed read pass over it on ``workers``
    threads: the read that :func:`measure_read_bandwidth` measures, for a benchmark to
    time call by call beside its own work, so that the machine's drift cancels in the
    ratio of the two.
    """

    def __init__(self, nbytes: int = DEFAULT_ARRAY_BYTES, workers: int = 1) -> None:
        nbytes, self.workers = _check_nbytes(nbytes), _check_workers(workers)
        self.array = _np().full(max(1, nbytes // 8), 1.0)
        self.nbytes = self.array.nbytes
        self._read = _kernels()["read"]
        self.gbps()  # compile (or load) the loop, start numba's threads

    def gbps(self) -> float:
        """GB/s (1e9 B/s) of one read pass."""
        from kernels.executors import limit_threads

        with limit_threads(self.workers):
            t0 = time.perf_counter()
            self._read(self.array)
            seconds = time.perf_counter() - t0
        return self.nbytes / seconds / 1e9


def measure_read_bandwidth(nbytes: int = DEFAULT_ARRAY_BYTES, workers: int = 1,
                           repeats: int = 5) -> float:
    """Median memory read bandwidth in GB/s (1e9 B/s): sum of one ``nbytes`` float64 array.

    ``workers`` threads (numba prange, capped with ``limit_threads``).
    """
    nbytes, workers = _check_nbytes(nbytes), _check_workers(workers)
    arrays = _Arrays(nbytes)
    return statistics.median(_bandwidth("read", arrays, workers, repeats))


def measure_copy_bandwidth(nbytes: int = DEFAULT_ARRAY_BYTES, workers: int = 1,
                           repeats: int = 5) -> float:
    """Median copy bandwidth in GB/s, ``b[i] = a[i]``, counted as 2 x ``nbytes`` per pass."""
    nbytes, workers = _check_nbytes(nbytes), _check_workers(workers)
    arrays = _Arrays(nbytes)
    return statistics.median(_bandwidth("copy", arrays, workers, repeats))


def measure_triad_bandwidth(nbytes: int = DEFAULT_ARRAY_BYTES, workers: int = 1,
                            repeats: int = 5) -> float:
    """Median STREAM triad bandwidth in GB/s, ``a = b + s*c``, counted as 3 x ``nbytes``."""
    nbytes, workers = _check_nbytes(nbytes), _check_workers(workers)
    arrays = _Arrays(nbytes)
    return statistics.median(_bandwidth("triad", arrays, workers, repeats))


def measure_bandwidth(nbytes: int, workers_list: list[int], repeats: int = 5
                      ) -> dict[str, dict[int, list[float]]]:
    """Read, copy and triad GB/s samples for each worker count, on one set of arrays.

    Returns ``{kind: {workers: [GB/s per pass, ...]}}``; allocates 3 x ``nbytes``.
    """
    nbytes = _check_nbytes(nbytes)
    workers_list = [_check_workers(w) for w in workers_list]
    arrays = _Arrays(nbytes)
    try:
        return {
            kind: {w: _bandwidth(kind, arrays, w, repeats) for w in workers_list}
            for kind in BANDWIDTH_KINDS
        }
    finally:
        del arrays


def measure_matmul_gflops(n: int = DEFAULT_MATMUL_N, workers: int = 1, repeats: int = 5
                          ) -> list[float]:
    """GFLOP/s (2 n^3 / s / 1e9) of each timed float32 ``n x n`` matmul through NumPy's BLAS.

    BLAS is capped at ``workers`` threads with ``limit_threads``.
    """
    from kernels.executors import limit_threads

    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"n must be an int >= 1 (matrix side), got {n!r}")
    workers = _check_workers(workers)
    np = _np()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    with limit_threads(workers):
        _, times = _median_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return [2.0 * n**3 / t / 1e9 for t in times]


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


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def calibrate(*, array_bytes: int, matmul_n: int, repeats: int,
              workers_list: list[int] | None = None) -> dict[str, Any]:
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


# --array-bytes: at least one float64; at most 1 TiB per array (3 are held).
_bytes_arg = byte_size(8, 1 << 40)
MAX_REPEATS = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kernelrace machine``."""
    parser.add_argument("--out", default="results/machine.json",
                        help="where to write the JSON (default results/machine.json)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ARRAY_BYTES // MiB} MiB arrays, n={QUICK_MATMUL_N} matmul, "
                        "3 repeats: a first look (bandwidth partly from cache)")
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
    print(f"measuring: 3 x {array_bytes / MiB:.0f} MiB arrays, matmul n={matmul_n}, "
          f"{repeats} repeats ...", file=sys.stderr, flush=True)
    doc = calibrate(array_bytes=array_bytes, matmul_n=matmul_n, repeats=repeats)
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
