"""Which corpus items are usable: transcript checks, a full decode of the audio, duration and
CTC feasibility. Every excluded item becomes a :class:`Rejected` with the reason.

Every item is validated the same way whatever the corpus: the audio header is readable and
the whole file decodes without truncation or NaN/inf samples; the duration is at least
``min_duration``; the transcript is non-empty after :func:`asr.text.normalize_text` and uses
only vocabulary characters; and the utterance is CTC-feasible: it has at least as many
feature frames as its character sequence needs (characters + word separators + one blank
between each pair of repeated characters). The frames are counted by
:func:`asr.data.dataset.output_frames`, the function training's filter uses, so an item
accepted here is never dropped as CTC-infeasible by a model without subsampling; a model
that subsamples divides the frames further, and training checks that bound.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.audio import AudioError, audio_info, load_audio
from asr.data.corpora import SPLITS, RawItem
from asr.data.dataset import ctc_min_frames, output_frames
from asr.data.manifest import Utterance
from asr.data.prepare.options import ENGLISH_VOCAB, PrepareOptions
from asr.features import FeatureConfig
from asr.text import normalize_text

# Below this many files the process pool costs more (worker start-up) than it saves.
_POOL_MIN_ITEMS = 64

# Rejection categories, in the order the checks run (first failing check wins).
CORPUS, DUPLICATE, EMPTY_TEXT, OOV, AUDIO, TOO_SHORT, CTC = (
    "corpus listing",
    "duplicate id",
    "empty text",
    "characters outside the vocabulary",
    "unreadable audio",
    "too short",
    "CTC-infeasible",
)

# (iterable, total) -> the same items, e.g. behind a progress bar.
Progress = Callable[[Iterable[Any], int], Iterable[Any]]


@dataclass(frozen=True)
class Rejected:
    """An item left out of the manifests, and why."""

    id: str
    audio: str
    split: str
    reason: str  # specific: names the value/characters/file problem
    category: str  # one of the rejection categories above, for grouping

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PrepareResult:
    """What :func:`validate_items` kept and rejected."""

    splits: dict[str, list[Utterance]]  # split -> utterances sorted by id
    rejected: list[Rejected]
    vocabulary: str  # sorted characters allowed in transcripts (besides the space)
    dev_note: str = ""  # how dev was made
    summary: dict[str, Any] = field(default_factory=dict)


def ctc_problem(
    duration: float,
    text: str,
    feature_cfg: FeatureConfig = FeatureConfig(),
    out_lengths: Callable[[Tensor], Tensor] | None = None,
) -> str | None:
    """Why an utterance of ``duration`` s (as the manifest stores it) cannot emit ``text``
    under CTC, or None when it can. ``out_lengths``: a model's frame -> output length map
    (None: no subsampling)."""
    (frames,) = output_frames([duration], feature_cfg, out_lengths)
    need = ctc_min_frames(text)
    if frames < need:
        return f"{frames} frames ({duration:.3f} s) < {need} CTC tokens for {text!r}"
    return None


def _init_worker() -> None:
    # Each worker decodes one file at a time; intra-op threads would only oversubscribe.
    torch.set_num_threads(1)


def _probe_audio(job: tuple[str, float, float | None]) -> tuple[int, float, str | None]:
    """Decode one file fully: (sample_rate, duration s, None) or (0, 0.0, reason)."""
    path, offset, duration = job
    try:
        info = audio_info(path)
        # Native rate: resampling would cost time and cannot reveal a defect.
        wave = load_audio(path, sample_rate=info.sample_rate, offset=offset, duration=duration)
        return info.sample_rate, wave.shape[0] / info.sample_rate, None
    except AudioError as e:
        return 0, 0.0, e.reason
    except Exception as e:  # one odd file must not stop the batch: report it as a rejection
        return 0, 0.0, f"unexpected {type(e).__name__}: {e}"


def _no_progress(items: Iterable[Any], total: int) -> Iterable[Any]:
    return items


def probe_all(
    jobs: list[tuple[str, float, float | None]], workers: int, progress: Progress = _no_progress
) -> list[tuple[int, float, str | None]]:
    """Decode every ``(path, offset, duration)`` job (in order): (sample_rate, seconds, None)
    or (0, 0.0, reason) each; in ``workers`` processes when there are enough files."""
    if workers <= 1 or len(jobs) < _POOL_MIN_ITEMS:
        return list(progress((_probe_audio(job) for job in jobs), len(jobs)))
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        # map() submits everything now, so workers are forked before a progress thread starts.
        chunksize = max(1, min(32, len(jobs) // (workers * 8)))
        results: Iterator[tuple[int, float, str | None]] = pool.map(_probe_audio, jobs, chunksize=chunksize)
        return list(progress(results, len(jobs)))


def _reject(item: RawItem, category: str, reason: str) -> Rejected:
    return Rejected(item.id, str(item.audio), item.split, reason, category)


def validate_items(
    items: list[RawItem], options: PrepareOptions, progress: Progress = _no_progress
) -> PrepareResult:
    """Check every item; return the accepted utterances per split and the rejected ones.

    Cheap text checks run first so that only items with usable transcripts are decoded.
    ``progress`` wraps the audio decoding (e.g. with a progress bar).
    """
    rejected: list[Rejected] = []
    texts = [normalize_text(it.text) for it in items]
    if options.vocab == "english":
        vocab = set(ENGLISH_VOCAB)
    else:
        vocab = {
            c
            for it, text in zip(items, texts, strict=True)
            if it.split == "train" and not it.problem
            for c in text
        }
        vocab.discard(" ")

    # Items sharing an id are all decoded; the first one that passes every check gets the id
    # (so a readable trunc.wav is not lost to an unreadable trunc.flac listed before it).
    pending: list[tuple[RawItem, str]] = []
    for it, text in zip(items, texts, strict=True):
        if it.problem:
            rejected.append(_reject(it, CORPUS, it.problem))
        elif not text:
            rejected.append(
                _reject(it, EMPTY_TEXT, f"empty transcript after normalisation (raw: {it.text.strip()!r})")
            )
        elif bad := sorted(set(text) - vocab - {" "}):
            shown = " ".join(repr(c) for c in bad)
            rejected.append(_reject(it, OOV, f"characters outside the vocabulary: {shown}"))
        else:
            pending.append((it, text))

    jobs = [(str(Path(it.audio).resolve()), it.offset, it.duration) for it, _ in pending]
    probes = probe_all(jobs, options.workers, progress)

    splits: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    accepted: dict[str, str] = {}  # id -> audio of the item that got it
    for (it, text), (path, _, _), (sample_rate, duration, error) in zip(pending, jobs, probes, strict=True):
        duration = round(duration, 6)  # what the manifest stores, and so what training sees
        if error is not None:
            rejected.append(_reject(it, AUDIO, error))
        elif duration < options.min_duration:
            rejected.append(
                _reject(it, TOO_SHORT, f"{duration:.3f} s < --min-duration {options.min_duration} s")
            )
        elif problem := ctc_problem(duration, text):
            rejected.append(_reject(it, CTC, problem))
        elif it.id in accepted:
            rejected.append(_reject(it, DUPLICATE, f"duplicate id {it.id!r} (already used by {accepted[it.id]})"))
        else:
            accepted[it.id] = str(it.audio)
            splits[it.split].append(
                Utterance(
                    id=it.id,
                    audio=path,
                    duration=duration,
                    text=text,
                    speaker=it.speaker,
                    sample_rate=sample_rate,
                    offset=it.offset,
                )
            )
    for utts in splits.values():
        utts.sort(key=lambda u: u.id)
    rejected.sort(key=lambda r: (SPLITS.index(r.split) if r.split in SPLITS else len(SPLITS), r.id))
    return PrepareResult(splits=splits, rejected=rejected, vocabulary="".join(sorted(vocab)))
