"""One writer per output directory: :func:`output_lock` (used by ``asr evaluate``,
``asr transcribe --out`` and ``asr train``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ReportError(ValueError):
    """An evaluation directory or one of its files is missing or malformed (names the file).

    Defined here, at the bottom of the import order, because the output lock raises it too;
    :mod:`asr.evaluate.reports.data` re-exports it with the report API."""


class OutputLockedError(ReportError):
    """Another run is writing into the same output directory (the message names it)."""


LOCK_FILE = ".lock"  # in an output directory; flock()ed by the run writing there


@contextmanager
def output_lock(out_dir: str | Path, command: str | None = None) -> Iterator[Path]:
    """Hold ``out_dir`` for one writer: create it, flock ``out_dir/.lock`` (which records
    the holder's pid and command) and yield the directory.

    Two runs writing the same files (fixed names) would leave a directory mixing both
    runs' results, so a second writer fails at once instead of waiting. The lock is released
    by the kernel when the process dies, so a crashed run never leaves a stale lock (only,
    at worst, a stale ``.lock`` file that the next run simply locks); a finished run
    removes the file.

    Raises:
        ReportError: ``out_dir`` exists and is not a directory, or cannot be created.
        OutputLockedError: another process holds the lock.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"{out}: cannot create the output directory ({e.strerror or e})") from e
    try:
        import fcntl  # noqa: F401  (availability check; used in _acquire)
    except ImportError:  # not POSIX: no locking, as before
        yield out
        return
    lock = out / LOCK_FILE
    fd = _acquire(lock, out)
    try:
        what = command if command is not None else " ".join(sys.argv)
        try:
            os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        except OSError as e:  # a completely full disk: the file was created, its line not written
            raise ReportError(f"{lock}: cannot write the lock file ({e.strerror or e})") from e
        yield out
    finally:
        # Unlink while still holding the lock; a run that opened the old file meanwhile
        # sees it was unlinked (see _acquire) and retries on a fresh one.
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the flock


def _acquire(lock: Path, out: Path) -> int:
    """flock ``lock`` (created if needed); the fd of a file still linked at ``lock``."""
    import fcntl

    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ReportError(f"{lock}: cannot create the lock file ({e.strerror or e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise OutputLockedError(
                f"{out}: another run is writing here ({holder}); wait for it to finish or "
                "choose another output directory"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # the holder we waited on removed it: lock the new file instead
