"""Logging: library modules log through :mod:`logging`; commands print their results.

``asr.log.setup(verbosity)`` is called once by ``asr.cli.main`` (``-q/--quiet`` gives -1,
``-v/--verbose`` +1). Messages go to stderr, so a command's stdout holds only its results
(transcripts, tables) and can be piped. Warnings and errors keep the toolkit's one-line
``warning: ...`` / ``error: ...`` form; information lines are printed as they are. Under DDP
only rank zero logs below ERROR, so N processes do not print every line N times.

Library code::

    log = logging.getLogger(__name__)
    log.info("train: %d utterances", n)
    log.warning("%s: skipped %d unreadable file(s)", path, k)   # -> "warning: ..."
"""

from __future__ import annotations

import logging
import os
import sys

QUIET, NORMAL, VERBOSE = -1, 0, 1
_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.INFO, VERBOSE: logging.DEBUG}


# Environment variables that launchers set to a process's rank (global, per node, or node):
# Lightning's own DDP launcher sets LOCAL_RANK and NODE_RANK; torchrun sets RANK, LOCAL_RANK
# and GROUP_RANK (the node) but no NODE_RANK; srun sets SLURM_PROCID (global) only.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    """True outside DDP and on global rank zero: every rank variable a launcher set is 0.

    Checking LOCAL_RANK/NODE_RANK alone made rank 0 of every node a "rank zero" under
    torchrun (no NODE_RANK), which then cleared the exp dir and named the run too.
    """
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or is_rank_zero()


def setup(verbosity: int = NORMAL) -> None:
    """Send the ``asr`` loggers to stderr at the level ``verbosity`` asks for (idempotent)."""
    logger = logging.getLogger("asr")
    logger.setLevel(_LEVELS[max(QUIET, min(VERBOSE, verbosity))])
    for h in list(logger.handlers):
        if getattr(h, "_asr", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._asr = True  # type: ignore[attr-defined]
    handler.setFormatter(_Format("%(message)s"))
    handler.addFilter(_RankZero())
    logger.addHandler(handler)
    logger.propagate = False
