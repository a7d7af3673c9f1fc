"""Transcribe audio files with a model package: :func:`transcribe` (the command line,
``asr transcribe``, is :mod:`asr.commands.transcribe`).

Files of any rate and channel count are read with :func:`asr.audio.load_audio`; directories
are walked for the extensions libsndfile reads. Work is cut into *pieces*: a file up to
``chunk_seconds`` long is one piece; a longer file is read window by window (never whole),
each window owning ``chunk_seconds`` of the file plus ``overlap_seconds`` of context on each
side. Pieces of all files are sorted by length and batched. Each window is decoded on its
own, and a word is kept only from the window whose owned region contains the word's start
time, so words at the seams are neither lost nor doubled, and memory stays flat in the file
length (one batch of audio and emissions at a time, plus the words found so far).

With ``--devices N`` the files are shared out, balanced by duration, between N worker
processes (one per GPU, cuda:0..N-1, or N CPU processes splitting the threads), each running
all of the above on its share; results come back in file order, the same as on one device.

Every file is handled on its own: an unreadable file becomes a result with ``error`` set,
the others are transcribed, and the command exits with status 1 at the end if any failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from asr.decode.decoding import DecodingOptions
from asr.decode.factory import make_decoder
from asr.infer.engine import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    set_threads,
)
from asr.infer.parallel import transcribe_segments_parallel, worker_devices
from asr.infer.segments import Segment, transcribe_segments
from asr.infer.windows import DEFAULT_SEGMENT, plan_windows
from asr.package import ModelPackage, load_package

__all__ = ["AUDIO_EXTENSIONS", "TranscriptionResult", "find_audio_files", "plan_windows", "transcribe"]

# File extensions per libsndfile format; only formats this libsndfile build reads are used.
# Header-less and exotic formats (RAW, MAT, HTK, ...) are left out: a directory walk should
# not try to decode every data file it meets.
_FORMAT_EXTENSIONS = {
    "WAV": ("wav", "wave"), "WAVEX": ("wav",), "RF64": ("rf64",), "W64": ("w64",),
    "FLAC": ("flac",), "OGG": ("ogg", "oga", "opus"), "MP3": ("mp3",),
    "AIFF": ("aif", "aiff", "aifc"), "AU": ("au", "snd"), "CAF": ("caf",),
    "NIST": ("sph", "nist"), "IRCAM": ("sf",), "VOC": ("voc",),
}
AUDIO_EXTENSIONS = frozenset(
    "." + ext for fmt, exts in _FORMAT_EXTENSIONS.items() if fmt in sf.available_formats() for ext in exts
)


@dataclass
class TranscriptionResult:
    """The transcript of one file (what the writers in :data:`asr.infer.transcripts.WRITERS` take)."""

    path: str  # the file, as given or found
    text: str  # words joined by single spaces ("" when the file failed)
    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, start s, end s)
    duration: float = 0.0  # seconds of audio (from the header; 0 when unreadable)
    error: str | None = None  # why the file could not be transcribed, else None
    segmentation: str = "single"  # how a long file was cut: pauses, fixed, pauses+fixed (asr.infer.windows)

    @property
    def ok(self) -> bool:
        return self.error is None


def find_audio_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given (whatever their extension) plus, for each directory, every entry below
    it with an audio extension (:data:`AUDIO_EXTENSIONS`), sorted. Missing paths, dangling or
    looping symlinks and other non-files are kept, so they are reported as failed files
    rather than silently skipped; only directories are left out (they are walked)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS and not f.is_dir()))
        else:
            out.append(p)
    return out


def transcribe(
    model: str | os.PathLike | ModelPackage,
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    options: DecodingOptions | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    progress: bool = False,
    on_result: Callable[[TranscriptionResult], None] | None = None,
    devices: int = 1,
    segment: str = DEFAULT_SEGMENT,
) -> list[TranscriptionResult]:
    """Transcribe audio files (directories are walked, see :func:`find_audio_files`).

    Args:
        model: a package path or a loaded :class:`ModelPackage`.
        options: how to decode (default greedy); beam weights left unset come from the
            LM's tuned weights, see :func:`asr.decode.factory.make_decoder`. (:func:`asr.transcribe`
            also takes its fields as keywords.)
        chunk_seconds, overlap_seconds: long-file windowing, see :mod:`asr.infer.windows`.
        segment: where files longer than ``chunk_seconds`` are cut: ``"pauses"`` (in the
            silences, fixed windows only across stretches without one) or ``"fixed"``.
        on_result: called with each result in file order, as soon as the file and every
            file before it are finished.
        devices: worker processes (see :func:`asr.infer.parallel.worker_devices`): ``device``
            ``cuda`` -> cuda:0..N-1, ``cpu`` -> N processes splitting ``num_threads``; each
            loads the package from its path (a loaded ``model`` only lends its path) and
            transcribes a share of the files balanced by duration. Same results as one.

    Returns:
        One result per file, in file order; unreadable files have ``error`` set.
    """
    targets = worker_devices(device, devices)
    if isinstance(model, ModelPackage):
        package = model
    else:  # with several workers, this copy only checks the package and decoder options
        package = load_package(model, device if devices == 1 else "cpu")
    decode, _ = make_decoder(package, options)
    if package.device.type == "cpu" and devices == 1:
        set_threads(num_threads)
    if isinstance(paths, str | os.PathLike):
        paths = [paths]  # one path, not a sequence of characters
    files = find_audio_files(paths)

    # One result object per file, shared by ``on_result`` and the returned list: an error the
    # callback records on it (writing the transcript failed) must reach the caller's summary.
    built: dict[int, TranscriptionResult] = {}

    def to_result(i: int, r) -> TranscriptionResult:
        if i not in built:
            built[i] = TranscriptionResult(str(files[i]), r.text, r.words, r.duration, r.error, r.segmentation)
        return built[i]

    def report(i: int, r) -> None:
        if on_result is not None:
            on_result(to_result(i, r))

    segments = [Segment(f) for f in files]
    description = f"transcribing {len(files)} file(s)"
    if devices == 1:
        results = transcribe_segments(package, decode, segments, chunk_seconds, overlap_seconds, batch_size,
                                      max_batch_seconds, progress=progress, description=description,
                                      on_result=report, segment=segment)
    else:
        path = package.info.get("path") if isinstance(model, ModelPackage) else model
        if not path:
            raise ValueError("several devices need the package's path (workers load it themselves)")
        results = transcribe_segments_parallel(
            path, segments, targets, options, None, chunk_seconds, overlap_seconds, batch_size,
            max_batch_seconds, num_threads, progress=progress, description=description, on_result=report,
            segment=segment)
    return [to_result(i, r) for i, r in enumerate(results)]
