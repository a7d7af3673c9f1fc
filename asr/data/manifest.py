"""Manifests: one JSON object per line describing one utterance.

```
{"id": "...", "audio": "/abs/or/relative.flac", "duration": 3.21, "text": "normalised words",
 "speaker": "...", "sample_rate": 16000}            # + "offset": s for segments of long files
```

Only validated manifests are read by training; every problem is a :class:`ManifestError`
naming ``path:line``. Unknown keys are ignored so other tools can add their own fields.
"""

from __future__ import annotations

import codecs
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.files import atomic_write_text


class ManifestError(ValueError):
    """A bad manifest entry; ``str(e) == "path:line: problem"`` when read from a file."""

    def __init__(
        self, problem: str, path: str | os.PathLike | None = None, line: int | None = None
    ):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line = line
        where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{problem}")

    def __reduce__(self):
        return (type(self), (self.problem, self.path, self.line))


def utf8_lines(path: str | os.PathLike, error: type[Exception] | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of a UTF-8 text file (a leading byte-order mark is
    dropped). A line that is not UTF-8 raises ``error`` (default :class:`ManifestError`) with
    the message ``path:line: not UTF-8 text (...)``, so no reader ever lets a bare
    UnicodeDecodeError (no file, no line) escape."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield lineno, raw.decode("utf-8").replace("\r\n", "\n")
            except UnicodeDecodeError as e:
                message = (f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                           "save the file as UTF-8")
                if error is None or error is ManifestError:
                    raise ManifestError(message, path, lineno) from None
                raise error(f"{path}:{lineno}: {message}") from None


# A manifest duration that differs from the file's real length (offset-less utterances) by
# more than max(absolute, relative * duration) is a stale manifest: manifests round durations
# to microseconds and MP3 lengths are estimates, anything beyond that is not rounding.
DURATION_TOLERANCE = (0.05, 0.01)  # (seconds, fraction)


def duration_mismatch(manifest_seconds: float, file_seconds: float) -> bool:
    """True when a manifest's duration and the file's real length disagree beyond rounding."""
    absolute, relative = DURATION_TOLERANCE
    return abs(file_seconds - manifest_seconds) > max(absolute, relative * manifest_seconds)


@dataclass(frozen=True)
class Utterance:
    """One manifest line."""

    id: str  # unique within a manifest
    audio: str  # audio file path (absolute once read by read_manifest)
    duration: float  # seconds of audio used (the segment length when offset is set)
    text: str  # normalised transcript (asr.text.normalize_text)
    speaker: str  # speaker id, used for speaker-disjoint splits
    sample_rate: int  # Hz of the file as stored (the loader resamples)
    offset: float = 0.0  # seconds into the file where the utterance starts

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "audio": self.audio,
            "duration": self.duration,
            "text": self.text,
            "speaker": self.speaker,
            "sample_rate": self.sample_rate,
        }
        if self.offset:
            d["offset"] = self.offset
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Utterance:
        """Validate and build; raises ManifestError (without a location) on the first problem."""
        if not isinstance(d, dict):
            raise ManifestError(f"expected a JSON object, got {type(d).__name__}")
        missing = [
            k for k in ("id", "audio", "duration", "text", "speaker", "sample_rate") if k not in d
        ]
        if missing:
            raise ManifestError(f"missing key(s) {', '.join(missing)}")
        for key in ("id", "audio", "text", "speaker"):
            if not isinstance(d[key], str):
                raise ManifestError(f"{key!r} must be a string (is {d[key]!r})")
        uid = d["id"]
        for key in ("id", "audio"):
            if not d[key].strip():
                raise ManifestError(f"{key!r} must not be empty")
        if not d["text"].strip():
            raise ManifestError(f"utterance {uid}: empty text")
        duration = _number(d, "duration", uid)
        if duration <= 0:
            raise ManifestError(f"utterance {uid}: duration must be > 0 (is {duration})")
        sr = d["sample_rate"]
        if isinstance(sr, bool) or not isinstance(sr, int) or sr <= 0:
            raise ManifestError(
                f"utterance {uid}: sample_rate must be a positive integer (is {sr!r})"
            )
        offset = _number(d, "offset", uid) if "offset" in d else 0.0
        if offset < 0:
            raise ManifestError(f"utterance {uid}: offset must be >= 0 (is {offset})")
        return cls(
            id=uid,
            audio=d["audio"],
            duration=duration,
            text=d["text"],
            speaker=d["speaker"],
            sample_rate=sr,
            offset=offset,
        )


def _number(d: dict[str, Any], key: str, uid: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ManifestError(f"utterance {uid}: {key!r} must be a finite number (is {v!r})")
    return float(v)


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest. Relative audio paths are resolved against the manifest's folder.

    Blank lines are skipped. Raises:
        ManifestError: ``"path:line: problem"`` for bad JSON, missing keys, wrong types,
            duration <= 0, empty text, a duplicate id or a line that is not UTF-8.
        FileNotFoundError: the manifest does not exist.
    """
    path = Path(path)
    base = path.resolve().parent
    utts: list[Utterance] = []
    first_line: dict[str, int] = {}
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(
                f"invalid JSON ({e.msg} at column {e.colno})", path, lineno
            ) from e
        try:
            u = Utterance.from_dict(d)
        except ManifestError as e:
            raise ManifestError(e.problem, path, lineno) from None
        if u.id in first_line:
            raise ManifestError(
                f"duplicate id {u.id!r} (first on line {first_line[u.id]})", path, lineno
            )
        first_line[u.id] = lineno
        audio = Path(u.audio).expanduser()
        if not audio.is_absolute():
            audio = base / audio
        utts.append(
            Utterance(u.id, str(audio), u.duration, u.text, u.speaker, u.sample_rate, u.offset)
        )
    return utts


def manifest_text(utts: Iterable[Utterance], path: str | os.PathLike | None = None) -> str:
    """``utts`` as manifest JSONL (one object per line), each line checked as
    :func:`read_manifest` would check it; a problem is a ManifestError naming ``path``."""
    seen: set[str] = set()
    lines = []
    for index, u in enumerate(utts):
        d = u.to_dict()
        # Never write a line that read_manifest would refuse.
        try:
            Utterance.from_dict(d)
            if u.id in seen:
                raise ManifestError(f"duplicate id {u.id!r}")
        except ManifestError as e:
            raise ManifestError(f"utterance #{index}: {e.problem}", path) from None
        seen.add(u.id)
        lines.append(json.dumps(d, ensure_ascii=False) + "\n")
    return "".join(lines)


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    """Write ``utts`` as JSONL (UTF-8, one object per line), replacing ``path`` atomically
    (:func:`asr.files.atomic_write_text`): a reader never sees a half-written manifest, even
    if the writer is interrupted or the disk fills."""
    path = Path(path)
    atomic_write_text(path, manifest_text(utts, path))
