"""Transcript writers for ``asr transcribe --format``: txt, json, srt, vtt, in a registry
keyed by format (:data:`WRITERS`), as whisper does.

A writer takes one file's transcript (an :class:`asr.infer.transcription.TranscriptionResult`, or
anything with the same ``path``, ``text`` and ``words`` attributes) and an output path. Subtitles
are cut from the word timings (:func:`group_cues`). Every file is written atomically
(:func:`asr.files.atomic_write_text`): a rerun on a full disk keeps the earlier transcript
rather than truncating it. This module imports nothing heavier
than the standard library, so any layer (transcription, evaluation, scripts) can use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from asr.files import atomic_write_text


class Transcript(Protocol):
    """What a writer reads: the file, its text, and its timed words."""

    path: str
    text: str
    words: list[tuple[str, float, float]]  # (word, start s, end s)


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: [start, end) seconds and its text."""

    start: float
    end: float
    text: str


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """HH:MM:SS<marker>mmm (SRT uses ',', WebVTT '.'); hours are not wrapped at 24."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"timestamp must be a finite, non-negative number of seconds ({seconds})")
    # Round once to whole milliseconds so 59.9996 s becomes 00:01:00,000, not 00:00:59,1000.
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal_marker}{ms:03d}"


def group_cues(
    words: Sequence[tuple[str, float, float]],
    max_duration: float = 7.0,
    max_chars: int = 42,
    max_gap: float = 1.5,
) -> list[Cue]:
    """Group timed words into subtitle cues of at most ``max_duration`` seconds and
    ``max_chars`` characters; a pause longer than ``max_gap`` also starts a new cue.

    A single word that alone exceeds the limits gets a cue of its own.
    """
    cues: list[Cue] = []
    cur: list[tuple[str, float, float]] = []
    for i, (word, start, end) in enumerate(words):
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise ValueError(f"word {i} {word!r}: bad timing start={start} end={end}")
        if cur:
            text_len = len(" ".join(w for w, _, _ in cur)) + 1 + len(word)
            if (
                end - cur[0][1] > max_duration
                or text_len > max_chars
                or start - cur[-1][2] > max_gap
            ):
                cues.append(Cue(cur[0][1], cur[-1][2], " ".join(w for w, _, _ in cur)))
                cur = []
        cur.append((word, start, end))
    if cur:
        cues.append(Cue(cur[0][1], cur[-1][2], " ".join(w for w, _, _ in cur)))
    return cues


def _result_cues(result: Transcript) -> list[Cue]:
    """Subtitle cues of a transcript; ValueError (naming the file) for bad or missing timings."""
    words = list(result.words or [])
    if not words:
        if str(result.text).strip():
            raise ValueError(f"{result.path}: no word timings; cannot write subtitles")
        return []
    try:
        return group_cues([(str(w), float(s), float(e)) for w, s, e in words])
    except ValueError as e:
        raise ValueError(f"{result.path}: {e}") from e


def write_txt(result: Transcript, out_path: str | Path) -> None:
    atomic_write_text(Path(out_path), str(result.text).strip() + "\n")


def write_json(result: Transcript, out_path: str | Path) -> None:
    doc = {
        "path": str(result.path),
        "text": str(result.text),
        "words": [
            {"word": w, "start": round(float(s), 3), "end": round(float(e), 3)}
            for w, s, e in (result.words or [])
        ],
    }
    atomic_write_text(Path(out_path), json.dumps(doc, ensure_ascii=False, indent=2) + "\n")


def _cue_end(cue: Cue) -> float:
    # Players drop zero-length cues; a one-frame word still deserves to be seen.
    return max(cue.end, cue.start + 0.001)


def write_srt(result: Transcript, out_path: str | Path) -> None:
    blocks = [
        f"{i}\n{format_timestamp(c.start, ',')} --> {format_timestamp(_cue_end(c), ',')}\n{c.text}\n"
        for i, c in enumerate(_result_cues(result), 1)
    ]
    atomic_write_text(Path(out_path), "\n".join(blocks))


def write_vtt(result: Transcript, out_path: str | Path) -> None:
    blocks = ["WEBVTT\n"] + [
        f"{format_timestamp(c.start, '.')} --> {format_timestamp(_cue_end(c), '.')}\n{c.text}\n"
        for c in _result_cues(result)
    ]
    atomic_write_text(Path(out_path), "\n".join(blocks))


# format -> writer(result, out_path)
WRITERS: dict[str, Callable[[Transcript, str | Path], None]] = {
    "txt": write_txt,
    "json": write_json,
    "srt": write_srt,
    "vtt": write_vtt,
}
