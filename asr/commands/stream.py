"""``asr transcribe MODEL - --stream``: live transcription with a streaming package.

    arecord -q -f S16_LE -r 16000 -c 1 -t raw | asr transcribe stream.asr - --stream
    asr transcribe stream.asr talk.flac --stream --realtime

``-`` reads raw 16-bit little-endian mono PCM from stdin at the model's rate (``--raw-rate``
for another: it is resampled piece by piece); files are read with soundfile and streamed
one after the other (``--realtime`` paces them at the speed of speech, for demos and
latency measurements). On a terminal the current partial hypothesis is one line rewritten
in place and each final one stays, with its times; otherwise every change is a JSON line
(``{"type": "partial" | "final", "text", "time", ...}``, finals with word timestamps).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from asr.audio import AudioError, load_audio
from asr.decode.decoding import DecodingOptions
from asr.infer.streaming import StreamingRecognizer, StreamResult
from asr.package import ModelPackage

READ_BYTES = 3200  # 0.1 s of 16 kHz 16-bit audio per read from stdin at most
FILE_PIECE_S = 0.02  # files are fed in pieces of this many seconds


def configure(parser: argparse.ArgumentParser) -> None:
    """The streaming flags of ``asr transcribe`` (they only apply with ``--stream``)."""
    group = parser.add_argument_group("live transcription (--stream)")
    group.add_argument("--stream", action="store_true",
                       help="transcribe as the audio arrives with a streaming model (model.chunk_frames): "
                            "partial results as they change, final ones at pauses; '-' reads raw PCM from stdin")
    group.add_argument("--realtime", action="store_true", help="feed files at the speed of speech")
    group.add_argument("--raw-rate", type=int, metavar="HZ",
                       help="sample rate of the raw 16-bit PCM on stdin (default: the model's)")
    group.add_argument("--endpoint-seconds", type=float, default=0.5,
                       help="a final result after this much silence in the model's output (default 0.5)")
    group.add_argument("--commit-seconds", type=float, metavar="S",
                       help="beam search: fix each word once S seconds of output after it are decoded, so the LM "
                            "no longer changes it and no word is out later than the model's latency + S "
                            "(default: words may change until the final)")
    group.add_argument("--json", action="store_true", help="JSON lines even on a terminal")


def validate(args: argparse.Namespace) -> str | None:
    if args.out is not None or args.format is not None:
        return "--stream prints its results; --out and --format are for batch transcription"
    if args.devices != 1:
        return "--stream runs one stream in this process: leave out --devices"
    if args.raw_rate is not None and args.raw_rate <= 0:
        return "--raw-rate must be > 0"
    if args.endpoint_seconds < 0:
        return "--endpoint-seconds must be >= 0"
    if args.commit_seconds is not None and args.commit_seconds < 0:
        return "--commit-seconds must be >= 0"
    if sum(1 for p in args.inputs if str(p) == "-") > 1:
        return "stdin ('-') can be given once"
    return None


class Printer:
    """Partial results rewrite one terminal line; finals stay. Not a terminal: JSON lines."""

    def __init__(self, out: TextIO, json_lines: bool) -> None:
        self.out, self.json = out, json_lines
        self.last_partial = ""

    def show(self, r: StreamResult, source: str | None) -> None:
        if not r.final and r.text == self.last_partial:
            return
        self.last_partial = "" if r.final else r.text
        if self.json:
            line: dict[str, object] = {"type": "final" if r.final else "partial", "text": r.text,
                                       "time": round(r.time, 3), "start": round(r.start, 3)}
            if r.final:
                line["words"] = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for w in r.words]
            if source is not None:
                line["file"] = source
            self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        elif r.final:
            end = r.words[-1].end if r.words else r.time
            self.out.write(f"\r\033[K[{r.start:7.2f} --> {end:7.2f}] {r.text}\n")
        else:
            self.out.write(f"\r\033[K{r.text}")
        self.out.flush()

    def end(self) -> None:
        if not self.json and self.last_partial:
            self.out.write("\r\033[K")
            self.out.flush()
        self.last_partial = ""


def _stdin_pieces(rate: int, model_rate: int) -> Iterator[np.ndarray]:
    """Raw s16le mono from stdin, as float32 pieces at the model's rate."""
    import torchaudio

    stream = sys.stdin.buffer
    odd = b""
    while True:
        data = stream.read1(READ_BYTES) if hasattr(stream, "read1") else stream.read(READ_BYTES)
        if not data:
            return
        data = odd + data
        cut = len(data) - len(data) % 2
        data, odd = data[:cut], data[cut:]
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        if rate != model_rate and x.size:
            # Piece by piece: the filter restarts at each piece, a small error at the edges
            # that `sox ... -r 16000` or `arecord -r 16000` upstream avoids.
            x = torchaudio.functional.resample(torch.from_numpy(x), rate, model_rate).numpy()
        yield x


def _file_pieces(path: Path, rate: int, realtime: bool) -> Iterator[np.ndarray]:
    audio = load_audio(path, rate).numpy()
    step = max(1, int(FILE_PIECE_S * rate))
    start = time.perf_counter()
    for s in range(0, audio.size, step):
        if realtime:
            delay = start + s / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield audio[s : s + step]


def run_stream(args: argparse.Namespace, package: ModelPackage, options: DecodingOptions) -> int:
    """Stream each input in turn; a file that cannot be read is one ``error:`` line and
    exit 1 at the end. The recognizer is built first: a package that cannot stream, or an
    unusable LM, stops the command with one line (exit 2)."""
    torch.set_num_threads(args.threads or 1)
    rec = StreamingRecognizer(package, options, endpoint_s=args.endpoint_seconds, commit_s=args.commit_seconds)
    printer = Printer(sys.stdout, args.json or not sys.stdout.isatty())
    try:
        failed = _stream_inputs(args, rec, printer)
    except BrokenPipeError:
        # The reader went away (`| head`): stop as other command-line tools do, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if failed:
        print(f"{failed} of {len(args.inputs)} input(s) failed", file=sys.stderr)
        return 1
    return 0


def _stream_inputs(args: argparse.Namespace, rec: StreamingRecognizer, printer: Printer) -> int:
    """Stream every input; returns how many failed."""
    failed = 0
    several = len(args.inputs) > 1
    for source in args.inputs:
        name = str(source)
        pieces = (_stdin_pieces(args.raw_rate or rec.sample_rate, rec.sample_rate) if name == "-"
                  else _file_pieces(source, rec.sample_rate, args.realtime))
        try:
            try:
                for piece in pieces:
                    for r in rec.feed(piece):
                        printer.show(r, name if several else None)
            finally:  # also on Ctrl-C: what was heard so far ends as a final result
                for r in rec.flush():
                    printer.show(r, name if several else None)
                printer.end()
        except (AudioError, ValueError) as e:
            failed += 1
            message = str(e) if isinstance(e, AudioError) else f"{name}: {e}"
            print(f"error: {message}", file=sys.stderr)
    return failed
