"""Where a long recording is cut into model inputs: at pauses, or in fixed overlapping windows.

A window is ``(offset, read_seconds | None, own_start, own_end)`` in seconds from the
segment start: the model reads ``read_seconds`` from ``offset`` (None: to the end) and keeps
the words that *start* in its owned region [own_start, own_end). Owned regions tile
[0, inf) exactly, so every word is kept exactly once whatever the cut points.

Two ways to choose them (``asr transcribe --segment``):

``fixed`` (:func:`plan_windows`)
    Window k owns [k * chunk, (k + 1) * chunk) and reads ``overlap`` more on each side. A
    word that straddles a seam is decoded twice, from both sides, once with its start
    chopped; start-time ownership keeps one, but it may be the chopped one (a wrong word),
    and subtitle cues end wherever a window does.

``pauses`` (:func:`find_pauses` + :func:`plan_pause_windows`)
    Energy-based voice activity (:func:`librosa.effects.split`) finds the silences; each
    window ends in the middle of the latest pause that keeps it within ``chunk`` seconds, so
    windows (and cues) fall between words and need no overlap. A stretch longer than
    ``chunk`` without any pause falls back to fixed windows with overlap.
"""

from __future__ import annotations

import math
import os

import numpy as np

from asr.audio import load_audio
from asr.infer.engine import DEFAULT_CHUNK_SECONDS, DEFAULT_OVERLAP_SECONDS

Window = tuple[float, float | None, float, float]  # (offset, read_seconds | None, own_start, own_end)

SEGMENT_METHODS = ("pauses", "fixed")
DEFAULT_SEGMENT = "pauses"  # where long files are cut unless asked otherwise (`asr transcribe --segment`)

# Pause detection (16 kHz speech; scaled with the sample rate):
# - 25 ms frames every 10 ms, the ASR features' own framing: a frame spans at least two pitch
#   periods (F0 >= 80 Hz), so its energy does not ripple with the voice, and cut points land
#   within 10 ms. librosa's defaults (2048/512 samples = 128/32 ms at 16 kHz) would blur a
#   short pause into the words around it.
# - 40 dB below the loudest frame of the block is silence. Vowels peak ~30 dB above the weak
#   fricatives (f, th, s), so speech stays "non-silent", while recording noise floors sit
#   40-60 dB down; librosa's 60 dB default counts a typical room-noise floor as speech.
# - A pause must last 0.2 s: stop closures and the gaps inside words are shorter (< ~0.15 s),
#   so no cut lands inside a word.
PAUSE_TOP_DB = 40.0
PAUSE_FRAME_SECONDS = 0.025
PAUSE_HOP_SECONDS = 0.010
MIN_PAUSE_SECONDS = 0.2
PAUSE_BLOCK_SECONDS = 120.0  # audio is scanned in blocks this long, so memory stays flat


def plan_windows(
    duration: float, chunk_seconds: float = DEFAULT_CHUNK_SECONDS, overlap_seconds: float = DEFAULT_OVERLAP_SECONDS
) -> list[tuple[float, float | None, float, float]]:
    """Windows over a file of ``duration`` seconds: [(offset, read_seconds | None, own_start, own_end)].

    Window k owns [k * chunk, (k + 1) * chunk) and reads ``overlap_seconds`` more on each
    side (clipped to the file). The owned regions tile [0, inf) exactly: the first starts at
    0, the last is open-ended, so every word start falls in exactly one of them.
    """
    if chunk_seconds <= 0 or overlap_seconds < 0:
        raise ValueError(f"chunk_seconds must be > 0 and overlap_seconds >= 0 (are {chunk_seconds}, {overlap_seconds})")
    if duration <= chunk_seconds:
        return [(0.0, None, 0.0, math.inf)]
    out: list[tuple[float, float | None, float, float]] = []
    for k in range(math.ceil(duration / chunk_seconds)):
        own_start = k * chunk_seconds
        start = max(0.0, own_start - overlap_seconds)
        stop = own_start + chunk_seconds + overlap_seconds
        if stop >= duration:
            # This window reads to the end of the file (None: no header rounding can cut the
            # last samples), so it also owns the rest; a further window would add nothing.
            out.append((start, None, own_start, math.inf))
            break
        out.append((start, stop - start, own_start, own_start + chunk_seconds))
    return out




def find_pauses(
    path: str | os.PathLike,
    sample_rate: int,
    duration: float,
    offset: float = 0.0,
    top_db: float = PAUSE_TOP_DB,
    min_pause: float = MIN_PAUSE_SECONDS,
    block_seconds: float = PAUSE_BLOCK_SECONDS,
) -> list[tuple[float, float]]:
    """Silences of [offset, offset + duration) of ``path``: [(start, end)] seconds from ``offset``.

    The audio is read ``block_seconds`` at a time (the loudness reference is each block's
    loudest frame, which also follows slow level changes); silences that meet at a block
    edge are joined. Only silences of at least ``min_pause`` seconds are returned.

    Raises:
        AudioError: the audio cannot be read.
    """
    from librosa.effects import split  # imported here: librosa takes a second to import

    frame = max(1, round(PAUSE_FRAME_SECONDS * sample_rate))
    hop = max(1, round(PAUSE_HOP_SECONDS * sample_rate))
    silences: list[tuple[float, float]] = []
    start = 0.0
    while start < duration:
        last = start + block_seconds >= duration
        wave = load_audio(path, sample_rate, offset=offset + start, duration=None if last else block_seconds)
        y = wave.numpy().astype(np.float32, copy=False)
        n = len(y)
        if n == 0:
            break
        edges = [0]
        for a, b in split(y, top_db=top_db, frame_length=frame, hop_length=hop):
            edges.extend((int(a), int(b)))
        edges.append(n)
        for a, b in zip(edges[::2], edges[1::2]):  # the gaps between non-silent intervals
            if b > a:
                s, e = start + a / sample_rate, start + b / sample_rate
                if silences and s - silences[-1][1] < 1e-6:  # continues across a block edge
                    silences[-1] = (silences[-1][0], e)
                else:
                    silences.append((s, e))
        if last or n < round(block_seconds * sample_rate) - 1:
            break
        start += block_seconds
    return [(s, e) for s, e in silences if e - s >= min_pause]


def plan_pause_windows(
    duration: float,
    pauses: list[tuple[float, float]],
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    grid: float = 0.0,
) -> tuple[list[Window], str]:
    """Windows cut in the middle of pauses, each at most ``chunk_seconds`` long, and the method used.

    From the current cut, the next cut is the middle of the latest pause within
    ``chunk_seconds`` (so windows are as long as allowed, and few). Pause windows read
    exactly what they own: the cut is in silence, so no context is needed. Where no pause
    lies within ``chunk_seconds``, the stretch up to the next pause (or the end) is covered
    by :func:`plan_windows` with ``overlap_seconds``. With ``grid`` (the model's frame shift)
    each cut is moved to the nearest multiple of it (well inside the pause), so word times
    come out exactly as from decoding the whole file at once.

    Returns:
        (windows, method): method is ``"single"`` (no cut needed), ``"pauses"``, ``"fixed"``
        (no usable pause at all) or ``"pauses+fixed"``.
    """
    if chunk_seconds <= 0 or overlap_seconds < 0:
        raise ValueError(f"chunk_seconds must be > 0 and overlap_seconds >= 0 (are {chunk_seconds}, {overlap_seconds})")
    if duration <= chunk_seconds:
        return [(0.0, None, 0.0, math.inf)], "single"
    mids = ((s + e) / 2 for s, e in pauses)
    if grid > 0:
        mids = (round(round(m / grid) * grid, 6) for m in mids)
    cuts = sorted(c for c in mids if 0.0 < c < duration)
    windows: list[Window] = []
    used: set[str] = set()
    pos = 0.0
    while duration - pos > chunk_seconds:
        best = max((c for c in cuts if pos < c <= pos + chunk_seconds), default=None)
        if best is not None:
            windows.append((pos, best - pos, pos, best))
            used.add("pauses")
            pos = best
            continue
        used.add("fixed")
        nxt = min((c for c in cuts if c > pos + chunk_seconds), default=None)
        end = duration if nxt is None else nxt
        for offset, read, own_start, own_end in plan_windows(end - pos, chunk_seconds, overlap_seconds):
            if nxt is not None and read is None:
                read, own_end = end - pos - offset, end - pos  # up to the pause, not the file's end
            windows.append((pos + offset, read, pos + own_start, pos + own_end))
        if nxt is None:
            return windows, _method(used)
        pos = end
    windows.append((pos, None, pos, math.inf))
    return windows, _method(used)


def _method(used: set[str]) -> str:
    return "pauses+fixed" if len(used) == 2 else next(iter(used))
