"""The plugin contract (issue 13): kernels are found by discovery and declare a spec;
an executor registered from outside runs every kernel's verification unchanged; the
shared layer names no kernel.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest

from kernels import executors, registry

REPO = Path(__file__).resolve().parents[1]


class StubExecutor(executors.Executor):
    """An executor the project does not ship: runs tasks on fresh threads, last task
    first, and counts them. Shares arrays as in-process executors do (the default)."""

    kind = "stub"
    tasks_run = 0

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def map(self, fn, tasks) -> list[Any]:
        results: list[Any] = [None] * len(tasks)
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                results[i] = fn(tasks[i])
            except BaseException as exc:  # re-raised in the caller below
                errors.append(exc)

        for i in reversed(range(len(tasks))):
            thread = threading.Thread(target=run, args=(i,))
            thread.start()
            thread.join()
        if errors:
            raise errors[0]
        StubExecutor.tasks_run += len(tasks)
        return results


@pytest.fixture
def stub_strategy():
    executors.register_executor("stubbed", "stub", StubExecutor)
    try:
        yield "stubbed"
    finally:
        executors.unregister_executor("stubbed")


def test_kernels_are_found_by_discovery_with_consistent_specs() -> None:
    names = registry.kernel_names()
    assert {"sieve", "montecarlo", "attention"} <= set(names)
    for name in names:
        module = registry.kernel_module(name)
        spec = module.SPEC
        assert spec.name == name
        assert tuple(spec.strategies) == tuple(module.STRATEGIES)
        assert set(spec.serial) <= set(spec.strategies)
        assert set(spec.requires) <= set(spec.strategies)
        assert set(executors.POOL_STRATEGIES) <= set(spec.strategies)
        assert spec.default_sizes and all(0 < s <= spec.max_size for s in spec.default_sizes)
        for key in spec.size_limits:
            assert key in spec.strategies or key in registry.INNERS, (name, key)
        for hook in ("unavailable_reason", "check_case", "make_case", "verify"):
            assert callable(getattr(module, hook)), (name, hook)


@pytest.mark.parametrize("kernel", registry.kernel_names())
def test_a_registered_executor_runs_every_kernel_unchanged(stub_strategy, kernel) -> None:
    module = registry.kernel_module(kernel)
    assert stub_strategy in registry.spec(kernel).strategy_names()
    assert (stub_strategy, "numba") in registry.variants(kernel)
    before = StubExecutor.tasks_run
    for inner in registry.INNERS:
        checks = module.verify(stub_strategy, inner, 2)
        assert checks, (kernel, inner)
        bad = [c for c in checks if not c.ok]
        assert not bad, (kernel, inner, bad[:3])
    assert StubExecutor.tasks_run > before, f"{kernel} did not run its tasks on the stub"


def test_an_unregistered_strategy_is_refused_again(stub_strategy) -> None:
    executors.unregister_executor(stub_strategy)
    try:
        with pytest.raises(ValueError, match="strategy must be one of"):
            registry.check_strategy(("python",), stub_strategy, None)
    finally:
        executors.register_executor(stub_strategy, "stub", StubExecutor)


def test_the_shared_layer_names_no_kernel() -> None:
    """Nothing in the registry, the executors or the harness names a kernel: each kernel
    says what it is in its own package."""
    names = [n for n in registry.kernel_names()]
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b", re.IGNORECASE)
    files = [REPO / "kernels/registry.py", REPO / "kernels/executors.py",
             *sorted((REPO / "kernels/harness").rglob("*.py"))]
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
