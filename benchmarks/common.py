"""Shared pieces of the asv suite: the worker counts every kernel is raced at.

asv imports this suite from the installed ``kernels`` package (under
``--python=same`` PYTHONPATH is dropped), so everything here imports ``kernels``.
"""

WORKERS = [1, 2]
# Strategies whose cold start (import, JIT load, pool start) the suites time.
COLD_START_LABELS = ["numpy", "numba", "threaded:numba", "multiprocess:numba"]


def skip(reason: str) -> None:
    """Tell asv to skip this parameter combination (asv treats NotImplementedError so)."""
    raise NotImplementedError(reason)


def cold_start_code(body: str, *, fresh_jit_cache: bool) -> str:
    """Code for a ``timeraw_`` benchmark: ``body`` in a fresh interpreter.

    With ``fresh_jit_cache`` numba gets an empty cache directory, set before numba is
    imported (pool workers inherit it), so it compiles everything from scratch;
    otherwise it loads what a previous run left in its on-disk cache.
    """
    prelude = ""
    if fresh_jit_cache:
        prelude = (
            "import os, tempfile\n"
            "os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp(prefix='kernelrace-jit-')\n"
        )
    return prelude + body
