"""Which tests share a process under ``make test`` (pytest-xdist, ``--dist loadgroup``).

Most of a cold run is numba compiling the attention chunk kernels: 6-19 s for each
cache dtype's specialisation (AMD EPYC Zen 4). Handed out one test at a time, both
processes reached the same specialisation at once and compiled it twice (71 s of 277
in one cold run). Here the tests that compile them form two groups, each run whole by
one process: the float32/float64 caches' (``test_attention.py``) and the narrow caches'
(bfloat16, float16, int8: ``test_attention_dtypes.py``, ``test_simd.py`` and the cases
of those dtypes in ``test_attention.py``). ``test_compare.py`` and ``test_report.py``
share one process too: both read the asv results of a tiny project, made once per
process (12-13 s). Every other test goes to whichever process is free.

The groups come from the test ids, in the scheduler below, not from ``xdist_group``
marks: pytest-xdist 3.8 passes a mark's group to the scheduler inside the test id, and
with pytest 9.2 that no longer reaches it (pytest-xdist issue 1386), so marked tests
were handed out one at a time. Without ``--dist loadgroup`` (one process,
``TEST_WORKERS=0``) the scheduler is not used.

It also holds the one fixture two test files share, :func:`sigint_handled`.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

NARROW_DTYPES = frozenset({"bfloat16", "float16", "int8"})
NARROW_FILES = frozenset({"test_attention_dtypes.py", "test_simd.py"})
ASV_RESULTS_FILES = frozenset({"test_compare.py", "test_report.py"})


def group_of(nodeid: str) -> str | None:
    """The group of the test ``nodeid``, None for a test that needs none."""
    file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if file in ASV_RESULTS_FILES:
        return "asv-results"
    if file in NARROW_FILES:
        return "numba-narrow"
    if file != "test_attention.py":
        return None
    params = re.search(r"\[(.*)\]$", nodeid)
    narrow = params is not None and not NARROW_DTYPES.isdisjoint(params.group(1).split("-"))
    return "numba-narrow" if narrow else "numba-float"


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class CompileGroups(LoadScopeScheduling):
        """xdist's scope scheduling with :func:`group_of` as the scope (largest
        first), each other test a scope of its own."""

        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid) or nodeid

    return CompileGroups(config, log)


@pytest.fixture
def sigint_handled():
    """SIGINT handled by Python (KeyboardInterrupt) for the test, as in an interactive
    run: pytest started from a background job of a non-interactive shell inherits SIGINT
    ignored, and the code under test rightly leaves an ignored SIGINT alone."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
