"""``python -m kernels.harness.asvrun ARGS``: asv's command line, stoppable by SIGTERM.

``make bench`` runs ``asv run`` through this. asv cleans up after Ctrl-C (it stops the
benchmark process it is waiting on, and closes its forkserver), but SIGTERM, which
``timeout`` and CI cancellations send, ends it on the spot: with ``--launch-method
forkserver`` its server process, in a process group of its own, would then wait on its
socket for ever. Here SIGTERM raises in asv's main thread as Ctrl-C does
(:mod:`kernels.harness.termination`), so the same clean-up runs. The exit status is
asv's, or 130 / 143 after Ctrl-C / SIGTERM (asv itself exits 1 for both).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from kernels.harness import termination


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stopped: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        stopped.append(termination.SIGINT_EXIT)
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    termination.sigterm_raises()
    raise_terminated = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        stopped.append(termination.SIGTERM_EXIT)
        raise_terminated(signum, frame)

    # A SIGINT ignored at launch (a background job) stays ignored, as asv would have it.
    if previous[signal.SIGINT] is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigterm)
    saved_argv = sys.argv
    try:
        from asv.main import main as asv_main

        sys.argv = ["asv", *argv]
        try:
            asv_main()
            status = 0
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except KeyboardInterrupt as exc:  # outside asv's own handling
        status = termination.interrupted(exc)
    finally:
        sys.argv = saved_argv
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stopped[0] if stopped else status


if __name__ == "__main__":
    sys.exit(main())
