"""Stopping on SIGTERM or SIGINT (Ctrl-C): one line and the conventional status, no traceback.

:func:`run_interruptible` turns both signals into an :class:`Interrupted` exception raised in
the main thread, so every ``finally`` on the way out runs: worker processes are stopped
(:mod:`asr.infer.parallel`), temp files of atomic writes removed (:mod:`asr.files`), the output
lock released and its file removed (:mod:`asr.lock`). Without it, SIGTERM kills the
process outright (its workers live on, adopted by init) and Ctrl-C ends in a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived. A BaseException, like KeyboardInterrupt, so that the
    per-file ``except Exception`` handlers let it through instead of counting a failed file."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_interruptible(where: str, body: Callable[[], int]) -> int:
    """``body()``, or, when SIGTERM or SIGINT stops it, the line ``error: WHERE: interrupted
    by SIGTERM`` on stderr and 128 + the signal's number (143, or 130 for Ctrl-C).

    Only the first signal interrupts; later ones are ignored until ``body`` has unwound, so
    a second Ctrl-C cannot cut the clean-up short (it is bounded: workers get SIGTERM).
    Outside the main thread signals cannot be handled there: ``body()`` runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        return body()

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return body()
    except Interrupted as e:
        signum = e.signum
    except KeyboardInterrupt:  # raised by code that re-raises it (a worker pool, a C extension)
        signum = signal.SIGINT
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: installed outside Python, cannot be put back
                signal.signal(s, handler)
    print(f"error: {where}: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
    return 128 + signum
