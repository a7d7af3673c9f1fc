"""Transcribe audio files with a model package: ``asr transcribe`` and :func:`transcribe`.

```
asr transcribe MODEL FILE_OR_DIR... [--decoder greedy|beam] [--lm FILE] [--format txt|json|srt|vtt|all]
               [--out DIR] [--device cpu|cuda] [--devices N] [--chunk-seconds 30]
```

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

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch

from asr.decoding import DecoderError
from asr.engine import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    make_decoder,
    set_threads,
)
from asr.package import ModelPackage, load_package
from asr.parallel import transcribe_segments_parallel, worker_devices
from asr.segments import Segment, transcribe_segments
from asr.windows import SEGMENT_METHODS, plan_windows

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
    """The transcript of one file (what the writers in :data:`asr.transcripts.WRITERS` take)."""

    path: str  # the file, as given or found
    text: str  # words joined by single spaces ("" when the file failed)
    words: list[tuple[str, float, float]] = field(default_factory=list)  # (word, start s, end s)
    duration: float = 0.0  # seconds of audio (from the header; 0 when unreadable)
    error: str | None = None  # why the file could not be transcribed, else None
    segmentation: str = "single"  # how a long file was cut: pauses, fixed, pauses+fixed (asr.windows)

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
    decoder: str = "greedy",
    lm: str | os.PathLike | None = None,
    beam_size: int | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    lexicon: str | os.PathLike | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    progress: bool = False,
    on_result: Callable[[TranscriptionResult], None] | None = None,
    devices: int = 1,
    segment: str = "pauses",
) -> list[TranscriptionResult]:
    """Transcribe audio files (directories are walked, see :func:`find_audio_files`).

    Args:
        model: a package path or a loaded :class:`ModelPackage`.
        decoder, lm, beam_size, lm_weight, word_score, lexicon: see
            :func:`asr.engine.make_decoder`.
        chunk_seconds, overlap_seconds: long-file windowing, see :mod:`asr.windows`.
        segment: where files longer than ``chunk_seconds`` are cut: ``"pauses"`` (in the
            silences, fixed windows only across stretches without one) or ``"fixed"``.
        on_result: called with each result in file order, as soon as the file and every
            file before it are finished.
        devices: worker processes (see :func:`asr.parallel.worker_devices`): ``device``
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
    decode, _ = make_decoder(package, decoder, lm, beam_size, lm_weight, word_score, lexicon)
    if package.device.type == "cpu" and devices == 1:
        set_threads(num_threads)
    if isinstance(paths, str | os.PathLike):
        paths = [paths]  # one path, not a sequence of characters
    files = find_audio_files(paths)

    def to_result(i: int, r) -> TranscriptionResult:
        return TranscriptionResult(str(files[i]), r.text, r.words, r.duration, r.error, r.segmentation)

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
        options = {"decoder": decoder, "lm": None if lm is None else str(lm), "beam_size": beam_size,
                   "lm_weight": lm_weight, "word_score": word_score,
                   "lexicon": None if lexicon is None else str(lexicon)}
        results = transcribe_segments_parallel(
            path, segments, targets, options, None, chunk_seconds, overlap_seconds, batch_size,
            max_batch_seconds, num_threads, progress=progress, description=description, on_result=report,
            segment=segment)
    return [to_result(i, r) for i, r in enumerate(results)]


# --------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("asr transcribe MODEL FILE_OR_DIR... [--decoder greedy|beam] [--lm FILE] "
                    "[--format txt|json|srt|vtt|all] [--out DIR] [--device cpu|cuda] [--devices N] "
                    "[--chunk-seconds 30]")
    parser.add_argument("model", type=Path, help="model package written by `asr export`")
    parser.add_argument("inputs", nargs="+", type=Path, help="audio files and/or directories (walked recursively)")
    parser.add_argument("--decoder", choices=("greedy", "beam"), default="greedy", help="CTC decoder")
    parser.add_argument("--lm", type=Path, help="KenLM model (ARPA or binary) for --decoder beam")
    parser.add_argument("--lexicon", type=Path, help="lexicon for --decoder beam (default: from the LM vocabulary)")
    parser.add_argument("--beam-size", type=int, help="beam width (default: asr.decoding default)")
    parser.add_argument("--lm-weight", type=float, help="LM weight (default: tuned value beside the LM, else 0.5)")
    parser.add_argument("--word-score", type=float, help="word insertion bonus (default: tuned value, else 0)")
    parser.add_argument("--format", choices=("txt", "json", "srt", "vtt", "all"),
                        help="write transcripts in this format (default txt when --out is given)")
    parser.add_argument("--out", type=Path, help="directory for transcript files (default . when --format is given)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    parser.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS,
                        help="files longer than this are read in windows of this many seconds")
    parser.add_argument("--overlap-seconds", type=float, default=DEFAULT_OVERLAP_SECONDS,
                        help="context added on each side of a window")
    parser.add_argument("--segment", choices=SEGMENT_METHODS, default="pauses",
                        help="cut files longer than --chunk-seconds at pauses (fixed windows only where "
                             "there is none) or in fixed overlapping windows (default pauses)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="files/windows per batch at most")
    parser.add_argument("--threads", type=int,
                        help="CPU threads, shared by the workers (default: all cores, or OMP_NUM_THREADS)")
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="run N worker processes, each on a share of the files balanced by duration: "
                             "with --device cuda on cuda:0..N-1, with cpu splitting the threads (default 1)")


def _validate(args: argparse.Namespace) -> str | None:
    if args.decoder != "beam":
        beam_only = [o for o in ("lm", "lexicon", "beam_size", "lm_weight", "word_score") if getattr(args, o) is not None]
        if beam_only:
            return f"--{beam_only[0].replace('_', '-')} needs --decoder beam"
    if args.chunk_seconds <= 0 or args.overlap_seconds < 0:
        return "--chunk-seconds must be > 0 and --overlap-seconds >= 0"
    if args.batch_size < 1 or (args.threads is not None and args.threads < 1):
        return "--batch-size and --threads must be >= 1"
    if args.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: no CUDA device available"
    try:
        worker_devices(args.device, args.devices)
    except ValueError as e:
        return str(e)
    return None


def _print_transcript(r: TranscriptionResult, header: bool) -> None:
    from asr.transcripts import format_timestamp, group_cues

    if header:
        print(f"# {r.path}")
    if not r.words:
        print(r.text)
    for cue in group_cues(r.words):
        print(f"[{format_timestamp(cue.start, '.')} --> {format_timestamp(cue.end, '.')}] {cue.text}")
    sys.stdout.flush()


def _segmentation_summary(results: Sequence[TranscriptionResult]) -> str:
    """How the long files were cut, e.g. "long files: 3 cut at pauses, 1 in fixed windows (no pause)"."""
    names = {"pauses": "cut at pauses", "pauses+fixed": "at pauses and in fixed windows (a stretch without pause)",
             "fixed": "in fixed windows"}
    counts = {m: sum(1 for r in results if r.ok and r.segmentation == m) for m in names}
    parts = [f"{k} {names[m]}" for m, k in counts.items() if k]
    return "long files: " + ", ".join(parts) if parts else ""


def run(args: argparse.Namespace) -> int:
    problem = _validate(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from asr.transcripts import WRITERS

    formats = [] if args.format is None else list(WRITERS) if args.format == "all" else [args.format]
    out_dir: Path | None = args.out
    if out_dir is not None and not formats:
        formats = ["txt"]
    if formats and out_dir is None:
        out_dir = Path(".")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        print(f"error: --out {out_dir}: exists and is not a directory", file=sys.stderr)
        return 2
    # A PackageError (missing/corrupt package) reaches asr.cli.main: one `error:` line, exit 2.
    # With several workers each loads its own copy; this one only checks the package.
    package = load_package(args.model, args.device if args.devices == 1 else "cpu")
    files = find_audio_files(args.inputs)
    if not files:
        print(f"error: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in "
              f"{', '.join(map(str, args.inputs))}", file=sys.stderr)
        return 2
    if out_dir is None:
        return _transcribe(args, package, files, formats, None)
    from asr.reports.lock import output_lock

    # One writer per output directory: same-named transcripts of two runs would mix.
    with output_lock(out_dir, "asr transcribe " + " ".join(map(str, [args.model, *args.inputs]))):
        return _transcribe(args, package, files, formats, out_dir)


def _transcribe(
    args: argparse.Namespace, package: ModelPackage, files: list[Path], formats: list[str], out_dir: Path | None
) -> int:
    from asr.transcripts import WRITERS

    used_names: dict[str, int] = {}

    def on_result(r: TranscriptionResult) -> None:
        if r.error is not None:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
            return
        if args.verbosity >= 0:
            _print_transcript(r, header=len(files) > 1)
        if out_dir is None:
            return
        # Same-named files from different folders must not overwrite each other; results
        # arrive in input order, so the numbering (x, x-2, ...) follows the input order too.
        stem = Path(r.path).stem
        used_names[stem] = used_names.get(stem, 0) + 1
        if used_names[stem] > 1:
            stem = f"{stem}-{used_names[stem]}"
        for fmt in formats:
            try:
                WRITERS[fmt](r, out_dir / f"{stem}.{fmt}")
            except (ValueError, OSError) as e:
                r.error = f"writing {fmt}: {e}"
                print(f"error: {r.path}: {r.error}", file=sys.stderr)

    start = time.perf_counter()
    try:
        results = transcribe(
            package, files, decoder=args.decoder, lm=args.lm, beam_size=args.beam_size,
            lm_weight=args.lm_weight, word_score=args.word_score, lexicon=args.lexicon,
            chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
            batch_size=args.batch_size, num_threads=args.threads, progress=args.verbosity >= 0,
            on_result=on_result, device=args.device, devices=args.devices, segment=args.segment,
        )
    except DecoderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    failed = [r for r in results if r.error is not None]
    audio = sum(r.duration for r in results if r.error is None)
    rtf = f", RTF {wall / audio:.3f}" if audio > 0 else ""
    print(f"transcribed {len(results) - len(failed)}/{len(results)} file(s), {audio:.1f} s of audio in "
          f"{wall:.1f} s{rtf}" + (f"; outputs in {out_dir}" if out_dir is not None else ""), file=sys.stderr)
    cut = _segmentation_summary(results)
    if cut:
        print(cut, file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.path}: {r.error}", file=sys.stderr)
        return 1
    return 0
