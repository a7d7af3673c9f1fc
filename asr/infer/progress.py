"""The progress display of long inference jobs: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 10.0  # seconds between plain progress lines (stderr not a terminal)


def progress_bar(enabled: bool, interval: float = PROGRESS_INTERVAL):
    """Progress of a long job: the one place that decides how it is shown.

    Not ``enabled``: nothing. stderr a terminal: a rich bar on stderr (transient). stderr
    redirected (a log file, a batch job): a plain logged line every ``interval`` seconds,
    e.g. ``transcribing 3 file(s): 120/260 s of audio (46%)``, since a bar's redraws would
    fill the log with control codes. Either way the object has rich's ``add_task`` /
    ``advance`` and is a context manager.

    stdout is only redirected through the bar when it is a terminal: a transcript piped to
    a file must stay on stdout, not be re-routed to the bar's stderr console.
    """
    if enabled and not sys.stderr.isatty():
        return LogProgress(interval)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s audio"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled,
        redirect_stdout=sys.stdout.isatty(),
    )


class LogProgress:
    """Progress as plain log lines (see :func:`progress_bar`): one every ``interval`` seconds
    while work is left, and a last one at 100% when an earlier one was written (a job that
    ends within ``interval`` writes none)."""

    def __init__(self, interval: float = PROGRESS_INTERVAL) -> None:
        self.interval = interval
        self.tasks: dict[int, list] = {}  # id -> [description, total, completed, last log time, logged]

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: float | None = None) -> int:
        self.tasks[len(self.tasks)] = [description, float(total or 0.0), 0.0, time.monotonic(), False]
        return len(self.tasks) - 1

    def advance(self, task: int, amount: float = 1.0) -> None:
        t = self.tasks[task]
        t[2] += amount
        now = time.monotonic()
        done = t[1] > 0 and t[2] >= t[1] - 1e-9
        if (done and t[4]) or (not done and now - t[3] >= self.interval):
            pct = f" ({100 * t[2] / t[1]:.0f}%)" if t[1] > 0 else ""
            log.info("%s: %.0f/%.0f s of audio%s", t[0], t[2], t[1], pct)
            t[3], t[4] = now, True
