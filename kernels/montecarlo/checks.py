"""Monte Carlo's checks: every strategy's hits against the same chunk kernel run serially
chunk by chunk (exact), the estimate within 5 standard errors of pi, and each chunk
kernel's generator against a slow Python recomputation (:func:`verify`)."""

from __future__ import annotations

from typing import Any

from kernels import registry
from kernels.montecarlo import (
    _SERIAL_STRATEGIES,
    STRATEGIES,
    _n_chunks,
    check_chunk_size,
    check_samples,
    check_seed,
    estimate_pi,
    run_task,
)

# Small enough for the pure-Python kernel (~0.1 s), with many short chunks and a
# ragged last one.
_VERIFY_SAMPLES = 100_003
_VERIFY_CHUNK = 8192
_VERIFY_SEEDS = (0, 1, 2**63 + 12345)


def verify_cases() -> list[tuple[str, dict[str, Any]]]:
    """The small inputs :func:`verify` checks every strategy on."""
    return [
        (
            f"samples={_VERIFY_SAMPLES} seed={seed} chunk={_VERIFY_CHUNK}",
            {"samples": _VERIFY_SAMPLES, "seed": seed, "chunk_size": _VERIFY_CHUNK},
        )
        for seed in _VERIFY_SEEDS
    ]


def serial_hits(kernel: str, samples: int, seed: int, chunk_size: int) -> int:
    """Hits of ``samples`` with one chunk kernel, chunk by chunk in this thread."""
    samples = check_samples(samples)
    seed = check_seed(seed)
    chunk_size = check_chunk_size(chunk_size, samples)
    return sum(
        run_task((kernel, seed, i, 1, chunk_size, samples))
        for i in range(_n_chunks(samples, chunk_size))
    )


def _generator_check(kernel: str) -> registry.Check | None:
    """The chunk kernel against its slow Python recomputation, bit for bit."""
    from kernels.montecarlo import reference

    seed, chunk, length = 7, 3, 2_001
    if kernel == "numba":
        import numpy as np

        from kernels.montecarlo import jit

        got = int(jit.chunk_hits(np.uint64(jit.seed_key(np.uint64(seed))), chunk, length))
        want = reference.splitmix_chunk_hits(seed, chunk, length)
    elif kernel == "numpy":
        from kernels.montecarlo import vectorized

        got = vectorized.chunk_hits(seed, chunk, length)
        want = reference.pcg64_chunk_hits(seed, chunk, length)
    else:
        return None
    return registry.Check(
        f"{kernel} chunk kernel vs Python recomputation", got == want, f"{got} vs {want}"
    )


def verify(strategy: str, inner: str | None, workers: int) -> list[registry.Check]:
    """Check a strategy on small inputs.

    For each case: the hits equal those of the same chunk kernel run serially chunk by
    chunk (exact), and the estimate lies within 5 standard errors of pi. Plus the chunk
    kernel's generator against a slow Python recomputation.
    """
    strategy, inner = registry.check_strategy(STRATEGIES, strategy, inner)
    if strategy in _SERIAL_STRATEGIES:
        workers = 1  # as the sieve's verify: one core whatever was asked
    kernel = inner or strategy
    checks = []
    generator = _generator_check(kernel)
    if generator is not None:
        checks.append(generator)
    for name, case in verify_cases():
        result = estimate_pi(
            case["samples"],
            strategy=strategy,
            inner=inner,
            workers=workers,
            seed=case["seed"],
            chunk_size=case["chunk_size"],
        )
        want = serial_hits(kernel, case["samples"], case["seed"], case["chunk_size"])
        checks.append(
            registry.Check(
                f"{name}: hits vs serial {kernel}", result.hits == want, f"{result.hits} vs {want}"
            )
        )
        z = result.error_in_stderr
        checks.append(
            registry.Check(
                f"{name}: within 5 stderr",
                abs(z) <= 5.0,
                f"pi={result.pi:.6f} stderr={result.stderr:.2e} z={z:+.2f}",
            )
        )
    return checks
