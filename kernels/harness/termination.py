"""SIGTERM handled like Ctrl-C by the ``kernelrace`` command.

CI cancellations and ``timeout`` stop a run with SIGTERM, whose default action ends the
process on the spot: no ``finally`` runs, so process pools, their forkserver and
shared-memory segments are left to whatever cleans up after a killed process. Turned
into an exception in the main thread, SIGTERM unwinds the same way Ctrl-C does: the pool
is terminated, segments unlinked, finished points written, and the exit status is
128 + 15 = 143, as a shell reports a process ended by SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

#: Exit status after SIGTERM (128 + signal number, the shell's convention); 130 is Ctrl-C.
SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; a KeyboardInterrupt, so every cleanup path
    written for Ctrl-C runs for it too.
    """


def _raise_terminated(signum: int, frame: Any) -> None:
    # Raised once: a second SIGTERM during the cleanup then ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated(f"signal {signal.Signals(signum).name}")


def sigterm_raises() -> Any:
    """Make SIGTERM raise :class:`Terminated` in the main thread; returns the previous
    handler for :func:`restore` (None, and nothing changed, off the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def restore(previous: Any) -> None:
    """Put back the SIGTERM handler :func:`sigterm_raises` replaced."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


#: What a stop is called: by SIGTERM, by Ctrl-C.
STOPPED = ("terminated", "interrupted")


def stopped_by(exc: BaseException) -> str | None:
    """"terminated" (SIGTERM), "interrupted" (Ctrl-C), or None when ``exc`` is neither."""
    if isinstance(exc, Terminated):
        return STOPPED[0]
    return STOPPED[1] if isinstance(exc, KeyboardInterrupt) else None


def interrupted(exc: BaseException) -> int:
    """Report a Ctrl-C or SIGTERM on stderr; the exit status for it (130 or 143)."""
    print(stopped_by(exc), file=sys.stderr)
    return SIGTERM_EXIT if isinstance(exc, Terminated) else SIGINT_EXIT
