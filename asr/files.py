"""Files that survive a kill: atomic writes and the clean-up of what a killed writer left.

Every file a later step reads back (checkpoints, model packages, manifests, reports, tuned LM
weights, summaries) is written to a temp file *beside* the target (same filesystem, so the
final rename is atomic; a temp dir elsewhere would turn it into a copy that truncates the
target first), named per process so concurrent writers never share one, flushed and fsynced,
then renamed over the target. A reader, or a kill at any moment, sees the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

TMP_SUFFIX = ".tmp"  # temp files of atomic writes: "<target name>.<writer pid>.tmp" beside the target
# Test hook only: seconds to wait between writing a checkpoint's temp file and renaming it, so
# that tests can kill a run mid-write deterministically.
_WRITE_DELAY_ENV = "ASR_TEST_CHECKPOINT_WRITE_DELAY"


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` so that a reader (or a kill at any moment) sees the old file or the new one.

    The bytes go to a temp file beside the target (same filesystem, so the final rename is
    atomic; a temp dir elsewhere would make it a copy that truncates the target first), named
    per process so concurrent writers never share one; flushed and fsynced before the rename.
    """
    tmp = _write_temp(path, write)
    try:
        delay = float(os.environ.get(_WRITE_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path, tmp) from e
    _fsync_dir(path.parent)


def _write_temp(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    """``write`` into ``path``'s temp file (beside it), flushed and fsynced; the temp's path.
    On failure the temp file is removed and an OSError names ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise _naming(e, path, tmp) from e
    return tmp


def _naming(e: BaseException, path: Path, tmp: Path) -> BaseException:
    """``e``, or for an OSError behind it that names the temp file (or nothing: a failed
    write() carries no path) an OSError naming the target ``path`` instead."""
    failed = os_error_of(e)
    if failed is not None and failed.errno is not None and failed.filename in (None, str(tmp)):
        return OSError(failed.errno, failed.strerror, str(path))
    return e


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (not possible on every filesystem)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def os_error_of(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: ``e`` itself, or one wrapped in RuntimeErrors. torch.save
    reports a write that failed (no space left) as ``RuntimeError: ... unexpected pos``, with
    the OSError only in its context; that OSError is the error worth reporting."""
    seen: BaseException | None = e
    while isinstance(seen, RuntimeError):
        seen = seen.__cause__ or seen.__context__
    return seen if isinstance(seen, OSError) else None


def _text_writer(text: str) -> Callable[[IO[bytes]], object]:
    data = text.encode("utf-8")
    return lambda f: f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, _text_writer(text))


def atomic_write_files(contents: Mapping[Path, str]) -> None:
    """Write several files that belong together (an evaluation directory) as one set.

    Every file is first written to its temp file beside its target and fsynced; only when
    all of them are on disk are they renamed over their targets, one after the other. A
    write that fails (no space left) therefore leaves every old file in place and no temp
    file; only a kill in the microseconds between the renames can mix two sets, which is
    why such sets also carry a run id (see :mod:`asr.evaluate.reports.data`).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, text in contents.items():
            staged.append((_write_temp(path, _text_writer(text)), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for folder in dict.fromkeys(path.parent for _, path in staged):
        _fsync_dir(folder)


def sha256_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, read in 1 MiB blocks: the one home of this digest (model
    packages, downloaded archives, ``asr evaluate``'s model identity). For a directory, of its
    sorted relative file names and contents (so a renamed or edited member changes it)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if not path.is_dir() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a file named with our pid predates us (pid reuse): its writer is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(*folders: Path) -> list[Path]:
    """Delete temp files of :func:`atomic_write` (and staging folders named the same way) whose
    writer process is gone (killed mid-write)."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in sorted(folder.glob(f"*{TMP_SUFFIX}")):
            m = re.fullmatch(rf".+\.(\d+){re.escape(TMP_SUFFIX)}", p.name)
            if m is None or _pid_alive(int(m.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                if p.is_dir() and not p.is_symlink():  # a staging folder (`asr shard`)
                    shutil.rmtree(p)
                else:
                    p.unlink()
                removed.append(p)
    return removed
