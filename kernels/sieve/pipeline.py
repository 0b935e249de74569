"""The Go-style concurrent sieve: a chain of filter stages, one thread per prime.

A generator feeds 2, 3, 4, ... into the first stage's queue. Each stage takes the
first number it receives as its prime, then forwards every number its prime does not
divide to the next stage, which it starts on the first number it forwards. The
number of stages started is the prime count.

Every number crosses a queue (and a thread switch) once per prime below its
smallest factor, and every prime is a thread: this is kept to show what the
pattern costs in Python, not to be fast. It refuses n above ``PIPELINE_MAX_N``.
"""

from __future__ import annotations

import queue
import threading

PIPELINE_MAX_N = 10_000  # pi(10_000) = 1229 threads
_STACK_BYTES = 256 * 1024
_DONE = None


def count_primes_pipeline(n: int) -> int:
    """Primes <= n by the chain of filter threads; n must be <= PIPELINE_MAX_N."""
    if n > PIPELINE_MAX_N:
        raise ValueError(
            f"n must be <= {PIPELINE_MAX_N} for strategy 'pipeline' (one thread per prime); "
            f"got {n}"
        )
    if n < 2:
        return 0
    primes: list[int] = []
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def start_stage(inbox: queue.SimpleQueue) -> None:
        thread = threading.Thread(target=stage, args=(inbox,), daemon=True)
        threads.append(thread)
        thread.start()

    def stage(inbox: queue.SimpleQueue) -> None:
        outbox: queue.SimpleQueue | None = None
        try:
            p = inbox.get()
            if p is _DONE:
                return
            primes.append(p)
            while (x := inbox.get()) is not _DONE:
                if x % p:
                    if outbox is None:
                        outbox = queue.SimpleQueue()
                        start_stage(outbox)
                    outbox.put(x)
        except BaseException as exc:  # surfaces in the caller below
            errors.append(exc)
            while inbox.get() is not _DONE:  # drain so the feeder never blocks
                pass
        finally:
            if outbox is not None:
                outbox.put(_DONE)

    old_stack = threading.stack_size(_STACK_BYTES)
    try:
        source: queue.SimpleQueue = queue.SimpleQueue()
        start_stage(source)
        for x in range(2, n + 1):
            source.put(x)
        source.put(_DONE)
        i = 0
        while i < len(threads):  # each stage starts its successor before it ends
            threads[i].join()
            i += 1
    finally:
        threading.stack_size(old_stack)
    if errors:
        raise errors[0]
    return len(primes)
