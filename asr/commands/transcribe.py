"""`asr transcribe`: transcribe audio files with a model package, print or write the transcripts.

    asr transcribe MODEL FILE_OR_DIR... [--decoder greedy|beam] [--lm FILE] [--format txt|json|srt|vtt|all]
                   [--out DIR] [--device cpu|cuda] [--devices N] [--chunk-seconds 30]

Parses and validates the command line and calls :func:`asr.infer.transcription.transcribe`. The
transcripts are the product: printed to stdout (unless ``--quiet``) and, with ``--out`` or
``--format``, written to files. A file that fails, or whose transcript cannot be written
(no space left, name too long), is an ``error:`` line on stderr and exit 1 at the end;
unusable options or no audio files are exit 2; SIGTERM or Ctrl-C stop the run (and its
workers) with one line, exit 143 or 130.

Output files mirror the inputs' folders under ``--out`` (:func:`output_names`), so two
inputs never write the same file; each is written atomically, and ``--out`` gets the list
of which input went where (:data:`MAPPING_FILE`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path, PurePath

import torch

from asr.commands import stream
from asr.commands.decoding_flags import (
    add_decoding_arguments,
    check_decoding_flags,
    decoding_options,
)
from asr.decode.decoding import DecoderError
from asr.infer.engine import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SECONDS, DEFAULT_OVERLAP_SECONDS
from asr.infer.parallel import worker_devices
from asr.infer.transcription import (
    AUDIO_EXTENSIONS,
    TranscriptionResult,
    find_audio_files,
    transcribe,
)
from asr.infer.windows import DEFAULT_SEGMENT, SEGMENT_METHODS
from asr.package import ModelPackage, load_package
from asr.signals import run_interruptible

log = logging.getLogger(__name__)

# In --out: one JSON line per input file, {"input": path, "outputs": [paths relative to --out]}
# (and "error" for a file that failed). Transcripts end in .txt/.json/.srt/.vtt, so none is
# ever named like this.
MAPPING_FILE = "transcripts.jsonl"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("asr transcribe MODEL FILE_OR_DIR... [--decoder greedy|beam] [--lm FILE] "
                    "[--format txt|json|srt|vtt|all] [--out DIR] [--device cpu|cuda] [--devices N] "
                    "[--chunk-seconds 30]")
    parser.add_argument("model", type=Path, help="model package written by `asr export`")
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="audio files and/or directories (walked recursively); with --stream, '-' is stdin")
    add_decoding_arguments(parser)
    parser.add_argument("--format", choices=("txt", "json", "srt", "vtt", "all"),
                        help="write transcripts in this format (default txt when --out is given)")
    parser.add_argument("--out", type=Path, help="directory for transcript files (default . when --format is given): "
                        "d1/a.wav -> OUT/d1/a.txt, relative to the folder holding all inputs; "
                        f"OUT/{MAPPING_FILE} lists which input went where")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    parser.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS,
                        help="files longer than this are read in windows of this many seconds")
    parser.add_argument("--overlap-seconds", type=float, default=DEFAULT_OVERLAP_SECONDS,
                        help="context added on each side of a window")
    parser.add_argument("--segment", choices=SEGMENT_METHODS, default=DEFAULT_SEGMENT,
                        help="cut files longer than --chunk-seconds at pauses (fixed windows only where "
                             f"there is none) or in fixed overlapping windows (default {DEFAULT_SEGMENT})")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="files/windows per batch at most")
    parser.add_argument("--threads", type=int,
                        help="CPU threads, shared by the workers (default: all cores, or OMP_NUM_THREADS)")
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="run N worker processes, each on a share of the files balanced by duration: "
                             "with --device cuda on cuda:0..N-1, with cpu splitting the threads (default 1)")
    stream.configure(parser)


def _validate(args: argparse.Namespace) -> str | None:
    problem = check_decoding_flags(args)
    if problem:
        return problem
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
    from asr.infer.transcripts import format_timestamp, group_cues

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
    if not problem and args.stream:
        problem = stream.validate(args)
    if not problem and not args.stream and (args.realtime or args.raw_rate is not None or args.json):
        problem = "--realtime, --raw-rate and --json need --stream"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.stream:
        return _run_stream(args)
    from asr.infer.transcripts import WRITERS

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
    files = _unique_files(files)
    if out_dir is None:
        return run_interruptible("asr transcribe", lambda: _transcribe(args, package, files, formats, None, []))
    names = output_names(files, args.inputs)
    from asr.lock import LOCK_FILE, output_lock

    reserved = {MAPPING_FILE.casefold(), LOCK_FILE.casefold()}
    clash = next((n for n in names if len(n.parts) > 1 and n.parts[0].casefold() in reserved), None)
    if clash is not None:
        print(f"error: {out_dir / clash.parts[0]}: an input folder has the name of a file the run writes "
              f"there ({MAPPING_FILE}, {LOCK_FILE}); rename it or give its files from inside it", file=sys.stderr)
        return 2

    def locked() -> int:
        # One writer per output directory: same-named transcripts of two runs would mix.
        with output_lock(out_dir, "asr transcribe " + " ".join(map(str, [args.model, *args.inputs]))):
            return _transcribe(args, package, files, formats, out_dir, names)

    return run_interruptible(str(out_dir), locked)


def _run_stream(args: argparse.Namespace) -> int:
    # A PackageError, a package that cannot stream (StreamingError) or an unusable LM
    # (DecoderError) reaches asr.cli.main: one `error:` line, exit 2.
    package = load_package(args.model, args.device)
    inputs: list[Path] = []
    for p in args.inputs:
        if str(p) == "-":
            inputs.append(p)
            continue
        found = find_audio_files([p])
        if not found:
            print(f"error: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in {p}", file=sys.stderr)
            return 2
        inputs += found
    args.inputs = inputs
    return run_interruptible("asr transcribe --stream",
                             lambda: stream.run_stream(args, package, decoding_options(args)))


def _unique_files(files: list[Path]) -> list[Path]:
    """``files`` without repeats of one file (the same absolute path, however spelt): it
    is transcribed once and has one set of outputs."""
    seen: dict[str, Path] = {}
    for f in files:
        seen.setdefault(os.path.abspath(f), f)
    return list(seen.values())


def output_names(files: Sequence[Path], inputs: Sequence[Path]) -> list[PurePath]:
    """Where each file's transcripts go, relative to ``--out`` and without the format's
    extension: the file's path relative to the folder holding all ``inputs`` (a folder
    given is its own root, a file its parent), so ``d1/a.wav`` and ``d2/a.wav`` become
    ``d1/a`` and ``d2/a``. The audio extension is dropped unless another file in the same
    folder would get the same name (``a.wav`` and ``a.flac``, or ``a`` and ``a.flac``):
    those keep their whole name (``a.wav``, ``a.flac``), repeatedly until no two names
    clash (compared case-insensitively, for case-insensitive filesystems). Distinct files
    therefore never share an output, whatever their names, and the names do not depend on
    the order in which files finish.
    """
    roots = [os.path.abspath(p) if Path(p).is_dir() else os.path.dirname(os.path.abspath(p)) for p in inputs]
    base = os.path.commonpath(roots)
    rel = [PurePath(os.path.relpath(os.path.abspath(f), base)) for f in files]
    whole: set[int] = set()  # files that keep their extension
    while True:
        names = [r if i in whole else r.with_name(r.stem) for i, r in enumerate(rel)]
        holders: dict[str, list[int]] = {}
        for i, n in enumerate(names):
            holders.setdefault(str(n).casefold(), []).append(i)
        clashing = {i for group in holders.values() if len(group) > 1 for i in group} - whole
        if not clashing:
            return names
        whole |= clashing


def _transcribe(
    args: argparse.Namespace, package: ModelPackage, files: list[Path], formats: list[str], out_dir: Path | None,
    names: Sequence[PurePath],
) -> int:
    from asr.infer.transcripts import WRITERS

    index = {str(f): i for i, f in enumerate(files)}
    listed: list[dict[str, object]] = []  # the mapping written to MAPPING_FILE

    def on_result(r: TranscriptionResult) -> None:
        if r.error is not None:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
            listed.append({"input": r.path, "error": r.error})
            return
        if args.verbosity >= 0:
            _print_transcript(r, header=len(files) > 1)
        if out_dir is None:
            return
        name = names[index[r.path]]
        written = []
        for fmt in formats:
            target = out_dir / name.parent / f"{name.name}.{fmt}"
            try:
                WRITERS[fmt](r, target)
            except (ValueError, OSError) as e:
                # Recorded on the result the summary and the exit status read (exit 1).
                r.error = f"writing {fmt}: {e.strerror if isinstance(e, OSError) and e.strerror else e}"
                print(f"error: {target}: {r.error}", file=sys.stderr)
            else:
                written.append(target.relative_to(out_dir).as_posix())
                log.debug("%s -> %s", r.path, target)
        listed.append({"input": r.path, "outputs": written, **({"error": r.error} if r.error else {})})

    if out_dir is not None:
        # A list from an earlier run must not describe this one's files if this one is killed.
        (out_dir / MAPPING_FILE).unlink(missing_ok=True)
    listed_ok = True
    start = time.perf_counter()
    try:
        results = transcribe(
            package, files, decoding_options(args), chunk_seconds=args.chunk_seconds, overlap_seconds=args.overlap_seconds,
            batch_size=args.batch_size, num_threads=args.threads, progress=args.verbosity >= 0,
            on_result=on_result, device=args.device, devices=args.devices, segment=args.segment,
        )
    except DecoderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if out_dir is not None and listed:  # also when interrupted: what was written so far
            listed_ok = _write_list(out_dir / MAPPING_FILE, listed)
    wall = time.perf_counter() - start
    failed = [r for r in results if r.error is not None]
    audio = sum(r.duration for r in results if r.error is None)
    rtf = f", RTF {wall / audio:.3f}" if audio > 0 else ""
    summary = (f"transcribed {len(results) - len(failed)}/{len(results)} file(s), {audio:.1f} s of audio in "
               f"{wall:.1f} s{rtf}" + (f"; outputs in {out_dir}, listed in {MAPPING_FILE}" if out_dir is not None else ""))
    cut = _segmentation_summary(results)
    if not failed and listed_ok:
        log.info("%s", summary)
        if cut:
            log.info("%s", cut)
        return 0
    # Some files failed: the summary heads the error report, so it shows even with --quiet.
    print(summary, file=sys.stderr)
    if cut:
        print(cut, file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) failed:", file=sys.stderr)
    for r in failed:
        print(f"  {r.path}: {r.error}", file=sys.stderr)
    return 1


def _write_list(path: Path, listed: Sequence[dict[str, object]]) -> bool:
    """Write the input -> outputs list (JSONL, one line per input file); False (and an
    ``error:`` line) when that fails."""
    from asr.files import atomic_write_text

    try:
        atomic_write_text(path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in listed))
    except OSError as e:
        print(f"error: {path}: cannot write the list of outputs ({e.strerror or e})", file=sys.stderr)
        return False
    return True
