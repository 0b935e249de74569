"""The probes behind ``kernelrace machine`` (:mod:`kernels.harness.machine`): timed loops
that measure the limits a kernel is judged against.

- Memory bandwidth (read, copy, triad), STREAM's byte counting: read counts one array,
  copy two (read + write), triad three; write-allocate traffic is not counted. Arrays
  should be far larger than the last-level cache (the default is 1 GiB per array).
  :class:`ReadStream` is one read pass for a benchmark to pair with its own work.
- float32 matmul through NumPy's BLAS: what a tuned GEMM reaches; :class:`MatmulStream`
  is one matmul for a benchmark to pair with its own work.
- Independent FMAs in a numba loop (:func:`measure_fma_gflops`): the core's arithmetic
  peak, the roof for a kernel that cannot be shaped as a GEMM. Its accumulators stay
  in vector registers (8 independent chains per lane, 16 dependent FMAs between a load
  and a store), so the loop is bound by the FMA ports, not by L1.

Kernels never import this module; benchmarks and the report do.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from kernels.harness import timing

GiB = 1 << 30
MiB = 1 << 20
DEFAULT_ARRAY_BYTES = 1 * GiB
DEFAULT_MATMUL_N = 2048
BANDWIDTH_KINDS = ("read", "copy", "triad")
# Arrays touched per pass, STREAM convention: how many times nbytes moves per pass.
_ARRAYS_MOVED = {"read": 1, "copy": 2, "triad": 3}


# ---------------------------------------------------------------------------
# Memory bandwidth and matmul
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
    # One warm-up call: compile, fault in pages, spin up the thread pool.
    _, times = timing.time_calls(fn, max(1, repeats), warmup=1)
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

    def gbps(self, workers: int | None = None) -> float:
        """GB/s (1e9 B/s) of one read pass, on ``workers`` threads (default: the
        stream's)."""
        from kernels.executors import limit_threads

        with limit_threads(self.workers if workers is None else _check_workers(workers)):
            _, seconds = timing.time_once(self._read, self.array)
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


class MatmulStream:
    """Two float32 ``n x n`` matrices and one timed matmul through NumPy's BLAS on
    ``workers`` threads: the rate :func:`measure_matmul_gflops` measures, for a benchmark
    to time call by call beside its own work, as :class:`ReadStream` is for the read.

    After a call OpenBLAS's threads spin for about 0.1 s (2^28 cycles) before they
    sleep, and would take a core from whatever runs next: a torch decode step took
    2-3x longer right after a matmul. A caller that times something else next waits
    :attr:`settle_s` first (:func:`benchmarks.common.race` does, untimed). Shortening
    the spin instead (OPENBLAS_THREAD_TIMEOUT) made the matmul itself 10-15% slower.
    """

    #: Seconds to leave BLAS's threads to fall asleep after a call.
    settle_s = 0.2

    def __init__(self, n: int = DEFAULT_MATMUL_N, workers: int = 1) -> None:
        if isinstance(n, bool) or int(n) < 1:
            raise ValueError(f"n must be an int >= 1 (matrix side), got {n!r}")
        self.n, self.workers = int(n), _check_workers(workers)
        np = _np()
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((self.n, self.n), dtype=np.float32)
        self.b = rng.standard_normal((self.n, self.n), dtype=np.float32)
        self.out = np.empty((self.n, self.n), dtype=np.float32)
        #: FLOPs of one call: a multiply and an add per inner-product term.
        self.flops = 2 * self.n**3

    def seconds(self, workers: int | None = None) -> float:
        """Seconds of one matmul on ``workers`` BLAS threads (default: the stream's)."""
        from kernels.executors import limit_threads

        np = _np()
        w = self.workers if workers is None else _check_workers(workers)
        with limit_threads(w, numba_pool=False):
            _, seconds = timing.time_once(np.matmul, self.a, self.b, self.out)
        return seconds

    def gflops(self, workers: int | None = None) -> float:
        """GFLOP/s (1e9 FLOP/s) of one matmul on ``workers`` threads."""
        return self.flops / self.seconds(workers) / 1e9


def measure_matmul_gflops(n: int = DEFAULT_MATMUL_N, workers: int = 1, repeats: int = 5
                          ) -> list[float]:
    """GFLOP/s (2 n^3 / s / 1e9) of each timed float32 ``n x n`` matmul through NumPy's BLAS
    (:class:`MatmulStream`), after one untimed call; BLAS capped at ``workers`` threads."""
    stream = MatmulStream(n, workers)
    stream.seconds()  # warm-up: BLAS's threads start, the pages are touched
    return [stream.gflops() for _ in range(max(1, repeats))]



# ---------------------------------------------------------------------------
# Arithmetic peak: independent FMAs
# ---------------------------------------------------------------------------

FMA_DTYPES = ("float32", "float64")
#: Dependent FMAs per chain between the load and the store of its accumulator: a
#: compile-time constant, so LLVM unrolls the chain and keeps it in a register.
FMA_DEPTH = 8
#: Independent chains interleaved in one vector iteration. A core issues 2 FMAs a cycle
#: and each has 4 (Intel, AMD Zen 3 and 4) or 5 (AMD Zen 2) cycles of latency, so 10
#: chains are needed to fill both ports everywhere; 12 leave a margin and fit AVX2's 16
#: registers beside the two constants. With 8, the probe was latency-bound on Zen 2: one
#: thread reached 83.5 GFLOP/s float32, 12 chains 103, and a 2-thread BLAS matmul beat
#: the probe's "peak" (190 against 166 GFLOP/s, AMD EPYC Zen 2). Written out as 12
#: scalars (numba leaves LLVM's SLP vectoriser off; the loop vectoriser turns the
#: scalars of consecutive ``j`` into vector registers); the chains x depth stay at 96
#: FMAs per iteration because a body of 16 x 16 (or 12 x 16) was not vectorised at all.
FMA_CHAINS = 12
#: Accumulators per call (a multiple of FMA_CHAINS x 16 float32 lanes): 1.5 KiB in float32.
FMA_ACCUMULATORS = 384
#: FLOP per round of one call: 2 per FMA (a multiply and an add), per accumulator.
FMA_FLOP_PER_ROUND = 2 * FMA_ACCUMULATORS * FMA_DEPTH
DEFAULT_FMA_SECONDS = 0.1
FMA_METHOD = (f"numba (fastmath) loop of {FMA_CHAINS} independent chains x {FMA_DEPTH} "
              f"dependent FMAs per vector lane, {FMA_ACCUMULATORS} accumulators held in "
              "registers; one call per thread (nogil), all started together; "
              "2 FLOP per FMA per lane; GFLOP = 1e9 FLOP")
# The feature that makes LLVM use 256-bit vectors on AVX-512 CPUs (Skylake-X onwards);
# the widest probe turns it off in a child process (it is process-wide in numba).
_PREFER_256 = "prefer-256-bit"


@functools.cache
def _fma_kernel() -> Callable[..., Any]:
    """The FMA loop, compiled on first use without numba's disk cache (so that
    :func:`fma_asm` can show its machine code)."""
    import numba

    @numba.njit(fastmath=True, nogil=True, cache=False, boundscheck=False)
    def fma_rounds(acc, m, c, rounds):
        s = acc.shape[0] // 12
        for _ in range(rounds):
            for j in range(s):
                x0, x1, x2, x3 = acc[j], acc[j + s], acc[j + 2 * s], acc[j + 3 * s]
                x4, x5, x6, x7 = acc[j + 4 * s], acc[j + 5 * s], acc[j + 6 * s], acc[j + 7 * s]
                x8, x9, x10, x11 = (acc[j + 8 * s], acc[j + 9 * s], acc[j + 10 * s],
                                    acc[j + 11 * s])
                for _d in range(FMA_DEPTH):
                    x0 = x0 * m + c
                    x1 = x1 * m + c
                    x2 = x2 * m + c
                    x3 = x3 * m + c
                    x4 = x4 * m + c
                    x5 = x5 * m + c
                    x6 = x6 * m + c
                    x7 = x7 * m + c
                    x8 = x8 * m + c
                    x9 = x9 * m + c
                    x10 = x10 * m + c
                    x11 = x11 * m + c
                acc[j], acc[j + s], acc[j + 2 * s], acc[j + 3 * s] = x0, x1, x2, x3
                acc[j + 4 * s], acc[j + 5 * s], acc[j + 6 * s], acc[j + 7 * s] = x4, x5, x6, x7
                acc[j + 8 * s], acc[j + 9 * s], acc[j + 10 * s], acc[j + 11 * s] = (
                    x8, x9, x10, x11)
        return acc.sum()

    return fma_rounds


def _check_dtype(dtype: str) -> str:
    if dtype not in FMA_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FMA_DTYPES)}, got {dtype!r}")
    return dtype


def _fma_args(dtype: str) -> tuple[Any, Any, Any]:
    """Fresh accumulators and the constants: x -> 0.999 x + 0.001 stays near 1, far from
    overflow and denormals, whatever the count of rounds."""
    np = _np()
    t = np.dtype(dtype).type
    return np.ones(FMA_ACCUMULATORS, dtype=dtype), t(0.999), t(0.001)


def fma_asm(dtype: str = "float32") -> str:
    """The machine code of the FMA loop for ``dtype`` (compiling it if needed)."""
    kernel = _fma_kernel()
    acc, m, c = _fma_args(_check_dtype(dtype))
    kernel(acc, m, c, 1)
    sig = next(s for s in kernel.signatures if str(s[0].dtype) == dtype)
    return kernel.inspect_asm(sig)


def fma_register(asm: str) -> str | None:
    """The widest x86 register an FMA instruction of ``asm`` uses (``zmm``, ``ymm``,
    ``xmm``), or None where there is none (no FMA, or not x86)."""
    used = set(re.findall(r"vfn?m(?:add|sub)\w*\s+[^\n]*?\b([xyz]mm)\d+", asm))
    return next((r for r in ("zmm", "ymm", "xmm") if r in used), None)


def _fma_rounds_for(dtype: str, seconds: float) -> int:
    """Rounds that take about ``seconds`` on one thread (compiles and warms the loop)."""
    kernel = _fma_kernel()
    acc, m, c = _fma_args(dtype)
    kernel(acc, m, c, 1)  # compile first: the compile time is no measure of the loop
    rounds = 256
    while True:
        _, took = timing.time_once(kernel, acc, m, c, rounds)
        if took > 0.02 or rounds >= 1 << 40:
            return max(1, int(rounds * seconds / took))
        rounds *= 8


def _join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join()


def _fma_wall_seconds(dtype: str, workers: int, rounds: int) -> float:
    """Wall time of ``workers`` threads each running ``rounds`` on accumulators of its own,
    released together by a barrier."""
    kernel = _fma_kernel()
    args = [_fma_args(dtype) for _ in range(workers)]
    barrier = threading.Barrier(workers + 1)
    errors: list[BaseException] = []

    def work(acc: Any, m: Any, c: Any) -> None:
        try:
            barrier.wait()
            kernel(acc, m, c, rounds)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=a, daemon=True) for a in args]
    for t in threads:
        t.start()
    barrier.wait()
    _, seconds = timing.time_once(_join_all, threads)
    if errors:
        raise errors[0]
    return seconds


def measure_fma_gflops(dtype: str = "float32", workers: int = 1, repeats: int = 5,
                       seconds: float = DEFAULT_FMA_SECONDS) -> list[float]:
    """GFLOP/s (1e9 FLOP per second, 2 per FMA per lane) of each timed run of the FMA loop
    on ``workers`` threads, each run about ``seconds`` long.

    The figure is the core's arithmetic peak at the vector width numba's LLVM chooses in
    this process (see :func:`fma_register`): no loads or stores in the hot loop, nothing
    but independent FMAs.
    """
    dtype, workers = _check_dtype(dtype), _check_workers(workers)
    if not 0 < seconds <= 60:
        raise ValueError(f"seconds must be in (0, 60] (time per run), got {seconds!r}")
    rounds = _fma_rounds_for(dtype, seconds)
    flop = FMA_FLOP_PER_ROUND * rounds * workers
    _fma_wall_seconds(dtype, workers, rounds)  # warm-up: threads, caches, clocks
    return [flop / _fma_wall_seconds(dtype, workers, rounds) / 1e9
            for _ in range(max(1, repeats))]


def measure_fma(workers_list: list[int], repeats: int = 5,
                seconds: float = DEFAULT_FMA_SECONDS) -> dict[str, Any]:
    """The FMA probe in this process for every dtype and worker count:
    ``{"register": ..., "samples_gflops": {dtype: {workers: [GFLOP/s, ...]}}}``
    (worker counts as strings, as machine.json keeps them)."""
    workers_list = [_check_workers(w) for w in workers_list]
    samples = {d: {str(w): measure_fma_gflops(d, w, repeats, seconds) for w in workers_list}
               for d in FMA_DTYPES}
    return {"register": {d: fma_register(fma_asm(d)) for d in FMA_DTYPES},
            "samples_gflops": samples}


def _host_features() -> str | None:
    """LLVM's feature string for this CPU (``+avx512f,...``), None where unknown."""
    try:
        import llvmlite.binding as ll

        return ll.get_host_cpu_features().flatten()
    except (ImportError, RuntimeError):
        return None


def widest_fma_env() -> dict[str, str] | None:
    """The environment for a child process whose numba uses the CPU's widest vectors:
    on an AVX-512 CPU, LLVM's 256-bit preference turned off; None where numba already
    uses the widest (no AVX-512, or the preference is absent) or it cannot be changed."""
    features = _host_features()
    if not features or "+avx512f" not in features.split(","):
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if os.environ.get("NUMBA_CPU_FEATURES"):  # the user chose: leave it
        return None
    return {**os.environ, "NUMBA_CPU_FEATURES": f"{features},-{_PREFER_256}"}


def measure_fma_widest(workers_list: list[int], repeats: int = 5,
                       seconds: float = DEFAULT_FMA_SECONDS,
                       timeout: float = 300.0) -> dict[str, Any] | None:
    """:func:`measure_fma` in a child process compiled for the widest vectors
    (:func:`widest_fma_env`); None where that is numba's default already.

    RuntimeError with the child's error output when it fails.
    """
    env = widest_fma_env()
    if env is None:
        return None
    cmd = [sys.executable, "-m", "kernels.harness.probes", "fma",
           ",".join(str(_check_workers(w)) for w in workers_list), str(repeats), str(seconds)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"FMA probe child took over {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"FMA probe child exited {done.returncode}: " + " | ".join(tail))
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> int:
    """``python -m kernels.harness.probes fma WORKERS,... REPEATS SECONDS``: the FMA probe
    as JSON on stdout (the child of :func:`measure_fma_widest`)."""
    if len(argv) != 4 or argv[0] != "fma":
        print("usage: python -m kernels.harness.probes fma WORKERS,... REPEATS SECONDS",
              file=sys.stderr)
        return 2
    workers = [int(w) for w in argv[1].split(",")]
    print(json.dumps(measure_fma(workers, int(argv[2]), float(argv[3]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
