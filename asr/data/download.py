"""Download and unpack corpus archives for ``asr prepare --download``.

Archives are fetched with urllib (no extra dependency), verified (sha256 when the
publisher's sum is known, otherwise archive integrity plus the expected layout after
extraction, checked by the corpus reader), then extracted with path-traversal protection.
Every failure is a :class:`DownloadError` naming the URL.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from asr.files import sha256_digest

_CHUNK = 1 << 20  # bytes per read while downloading
_TIMEOUT = 60  # seconds without data before giving up on a connection


class DownloadError(RuntimeError):
    """A download or extraction failed; ``.url`` is the archive's address."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


@dataclass(frozen=True)
class Archive:
    """A published archive."""

    url: str
    # Publisher's sha256 of the archive, or None where no stable sum exists (then the
    # archive's own integrity and the extracted layout are checked instead).
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?", 1)[0]).name


def fetch(archive: Archive, dest_dir: Path) -> Path:
    """Download ``archive`` into ``dest_dir`` (kept if already there and verified).

    Returns the path of the downloaded file. Raises DownloadError.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / archive.filename
    if target.exists() and archive.sha256 and sha256_digest(target) == archive.sha256:
        return target
    part = target.with_name(target.name + ".part")
    try:
        with (
            urllib.request.urlopen(archive.url, timeout=_TIMEOUT) as response,
            open(part, "wb") as out,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            ) as progress:
                task = progress.add_task(f"download {archive.filename}", total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    progress.advance(task, len(chunk))
        if total is not None and part.stat().st_size != total:
            raise DownloadError(
                archive.url, f"incomplete download: {part.stat().st_size} of {total} bytes"
            )
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DownloadError(archive.url, f"download failed ({reason})") from e
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    if archive.sha256:
        digest = sha256_digest(part)
        if digest != archive.sha256:
            part.unlink()
            raise DownloadError(
                archive.url, f"sha256 mismatch: expected {archive.sha256}, got {digest}"
            )
    os.replace(part, target)
    return target


def extract(
    path: Path, dest_dir: Path, url: str, only_under: str | tuple[str, ...] | None = None
) -> None:
    """Extract a .tar.gz/.tgz/.tar or .zip archive into ``dest_dir``.

    Args:
        only_under: keep only members whose path contains this directory name (or one of
            these names), re-rooted at it (e.g. ``"recordings"`` turns ``repo-abc/recordings/x.wav`` into
            ``dest_dir/recordings/x.wav``).

    Raises DownloadError (naming ``url``) for corrupt archives or unsafe member paths.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()  # CRC-checks every member: catches truncation/corruption
                if bad is not None:
                    raise DownloadError(url, f"corrupt archive member {bad}")
                for info in zf.infolist():
                    rel = _member_target(info.filename, only_under, url)
                    if rel is None or info.is_dir():
                        continue
                    out = dest_dir / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            with tarfile.open(path) as tf:
                members = []
                for m in tf.getmembers():
                    rel = _member_target(m.name, only_under, url)
                    if rel is None:
                        continue
                    m.name = str(rel)
                    members.append(m)
                # filter="data" refuses links out of dest_dir, device files and absolute paths.
                tf.extractall(dest_dir, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise DownloadError(url, f"cannot extract {path} ({e}); delete it and retry") from e


def _member_target(
    name: str, only_under: str | tuple[str, ...] | None, url: str
) -> PurePosixPath | None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise DownloadError(url, f"archive member with unsafe path {name!r}")
    if only_under is None:
        return p
    wanted = (only_under,) if isinstance(only_under, str) else only_under
    # The first path component that is one of the wanted names roots the member.
    for i, part in enumerate(p.parts):
        if part in wanted:
            return PurePosixPath(*p.parts[i:])
    return None


def fetch_and_extract(
    archive: Archive, dest_dir: Path, only_under: str | tuple[str, ...] | None = None
) -> None:
    """Download ``archive`` into ``dest_dir``, extract it there, then delete the archive."""
    path = fetch(archive, dest_dir)
    extract(path, dest_dir, archive.url, only_under=only_under)
    path.unlink()
