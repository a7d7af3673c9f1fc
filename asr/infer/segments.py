"""Transcription of audio segments of any length: long ones window by window.

A segment (a whole file, or [offset, offset + duration) of one) up to ``chunk_seconds`` is
one model input; a longer one is cut into windows (:func:`plan_windows`) that are read and
decoded one by one, so memory stays flat in the length, and whose words are stitched by
start time. Inputs of all segments are batched together by length.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from asr.audio import AudioError, audio_info, load_audio
from asr.data.sampler import plan_batches
from asr.decode.decoding import Hypothesis
from asr.decode.factory import Decoder, decode_emissions
from asr.infer.engine import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    NON_FINITE,
    forward_batch,
)
from asr.infer.progress import progress_bar
from asr.infer.windows import (
    DEFAULT_SEGMENT,
    SEGMENT_METHODS,
    find_pauses,
    plan_pause_windows,
    plan_windows,
)
from asr.package import ModelPackage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """Audio to transcribe: [offset, offset + duration) of ``path``; duration None = to the end."""

    path: str | os.PathLike
    offset: float = 0.0
    duration: float | None = None


@dataclass
class SegmentResult:
    """The transcript of one :class:`Segment`; word times are seconds from the segment start."""

    text: str  # words joined by single spaces ("" when the segment failed)
    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, start s, end s)
    duration: float = 0.0  # seconds of audio in the segment (0 when unreadable)
    error: str | None = None  # why it could not be transcribed (without the path), else None
    segmentation: str = "single"  # how it was cut: single, pauses, fixed, pauses+fixed (asr.infer.windows)


@dataclass(frozen=True)
class _Piece:
    """One model input: [offset, offset + seconds) of segment ``item``'s file."""

    item: int  # index into the segment list
    offset: float  # seconds into the FILE where reading starts
    duration: float | None  # seconds to read; None = to the end of the file
    seconds: float  # audio length, for batching and progress
    own_start: float  # words starting in [own_start, own_end) (segment seconds) are kept
    own_end: float


def transcribe_segments(
    package: ModelPackage,
    decode: Decoder,
    segments: Sequence[Segment],
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    progress: bool = False,
    description: str | None = None,
    on_result: Callable[[int, SegmentResult], None] | None = None,
    segment: str = DEFAULT_SEGMENT,
) -> list[SegmentResult]:
    """Transcribe segments of audio files, each on its own (a bad one never stops the rest).

    Work is cut into *pieces*: a segment up to ``chunk_seconds`` long is one piece; a longer
    one is read window by window, never whole: cut at pauses (``segment="pauses"``,
    :func:`asr.infer.windows.plan_pause_windows`, falling back to fixed windows where there is no
    pause) or in fixed overlapping windows (``"fixed"``, :func:`asr.infer.windows.plan_windows`). Pieces of all segments
    are sorted by length and batched. Each window is decoded on its own, and a word is kept
    only from the window whose owned region contains the word's start time, so words at the
    seams are neither lost nor doubled, and memory stays flat in the segment length.

    A segment fails (``error`` set, empty text) when its audio cannot be read, when its
    features or emissions are not finite, or when inference fails on it alone.
    ``on_result(index, result)`` is called once per segment, in segment order, as soon as it
    and every segment before it are finished.
    """
    if segment not in SEGMENT_METHODS:
        raise ValueError(f"segment must be one of {', '.join(SEGMENT_METHODS)} (is {segment!r})")
    n = len(segments)
    methods = ["single"] * n
    results: list[SegmentResult | None] = [None] * n
    durations = [0.0] * n
    errors: dict[int, str] = {}
    words: list[list[tuple[str, float, float]]] = [[] for _ in range(n)]
    remaining = [0] * n
    pieces: list[_Piece] = []
    next_out = 0

    def finish(i: int) -> None:
        nonlocal next_out
        if i in errors:
            results[i] = SegmentResult("", [], durations[i], errors[i], methods[i])
        else:
            ws = sorted(words[i], key=lambda w: (w[1], w[2]))
            results[i] = SegmentResult(" ".join(w for w, _, _ in ws), ws, durations[i], None, methods[i])
        words[i] = []
        while next_out < n and results[next_out] is not None:
            if on_result is not None:
                on_result(next_out, results[next_out])  # type: ignore[arg-type]
            next_out += 1

    for i, seg in enumerate(segments):
        try:
            if seg.duration is None:
                info = audio_info(seg.path)
                if seg.offset >= info.duration:
                    raise AudioError(seg.path, f"segment offset {seg.offset} s is past the end "
                                               f"({info.duration:.3f} s)")
                durations[i] = info.duration - seg.offset
            else:
                durations[i] = seg.duration
            plan, methods[i] = _plan(package, seg, durations[i], segment, chunk_seconds, overlap_seconds)
        except AudioError as e:
            errors[i] = e.reason
            finish(i)
            continue
        for offset, dur, own_start, own_end in plan:
            if dur is None and seg.duration is not None:
                dur = seg.duration - offset  # the segment's end, not the file's
            seconds = (durations[i] - offset) if dur is None else dur
            pieces.append(_Piece(i, seg.offset + offset, dur, seconds, own_start, own_end))
            remaining[i] += 1

    frame_shift = package.frame_shift
    total = sum(p.seconds for p in pieces)
    with progress_bar(progress) as bar:
        task = bar.add_task(description or f"transcribing {n} item(s)", total=total)
        for batch in plan_batches([p.seconds for p in pieces], batch_size, max_batch_seconds):
            good: list[_Piece] = []
            waves: list[Tensor] = []
            for p in (pieces[k] for k in batch):
                if p.item in errors:
                    continue
                try:
                    waves.append(load_audio(segments[p.item].path, package.sample_rate,
                                            offset=p.offset, duration=p.duration))
                    good.append(p)
                except AudioError as e:
                    errors[p.item] = e.reason
            for p, hyp in _run_pieces(package, decode, good, waves, errors):
                shift = p.offset - segments[p.item].offset  # piece start, in segment seconds
                for word, start, end in hyp.word_times(frame_shift):
                    start, end = start + shift, end + shift
                    if p.own_start <= start < p.own_end:
                        words[p.item].append((word, start, end))
            for p in (pieces[k] for k in batch):
                remaining[p.item] -= 1
                if remaining[p.item] == 0:
                    finish(p.item)
            bar.advance(task, sum(pieces[k].seconds for k in batch))
    return results  # type: ignore[return-value]


def _plan(
    package: ModelPackage, seg: Segment, duration: float, segment: str, chunk_seconds: float, overlap_seconds: float
) -> tuple[list[tuple[float, float | None, float, float]], str]:
    """The windows of one segment and how they were cut (see :mod:`asr.infer.windows`)."""
    if segment == "pauses" and duration > chunk_seconds:
        pauses = find_pauses(seg.path, package.sample_rate, duration, seg.offset)
        plan, method = plan_pause_windows(duration, pauses, chunk_seconds, overlap_seconds,
                                          grid=package.frame_shift)
    else:
        plan = plan_windows(duration, chunk_seconds, overlap_seconds)
        method = "single" if len(plan) == 1 else "fixed"
    if len(plan) > 1:
        log.debug("%s: %d windows (%s)", seg.path, len(plan), method)
    return plan, method


def _run_pieces(
    package: ModelPackage,
    decode: Decoder,
    pieces: list[_Piece],
    waves: list[Tensor],
    errors: dict[int, str],
) -> list[tuple[_Piece, Hypothesis]]:
    """Emissions + decoding of one batch. If the batch fails (e.g. out of memory), each piece
    is retried alone so that only the pieces that fail by themselves mark their item failed.
    A piece whose emissions are not finite marks its item failed (never decoded to "")."""
    if not pieces:
        return []
    try:
        ems = forward_batch(package, waves, phones=decode.joint_emissions)
        finite = [bool(torch.isfinite(e).all()) for e in ems]
        for p, ok in zip(pieces, finite, strict=True):
            if not ok:
                errors[p.item] = NON_FINITE
        kept = [(p, e) for p, e, ok in zip(pieces, ems, finite, strict=True) if ok]
        if not kept:
            return []
        return list(zip([p for p, _ in kept], decode_emissions(decode, [e for _, e in kept])))
    except (RuntimeError, ValueError) as e:
        if len(pieces) == 1:
            errors[pieces[0].item] = f"inference failed: {type(e).__name__}: {e}"
            return []
    out = []
    for p, w in zip(pieces, waves):
        out.extend(_run_pieces(package, decode, [p], [w], errors))
    return out
