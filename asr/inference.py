"""Batched inference with a model package: waveforms -> CTC emissions -> text.

Utterances are sorted by length and grouped into batches capped by count and by padded
audio seconds, so little compute goes to padding; the model is padding-invariant (features
and every layer mask past each length), so an utterance's emissions do not depend on its
batch mates, and results are returned in the caller's order.

Several devices (:func:`transcribe_segments_parallel`): one spawned worker process per GPU
(or several CPU processes splitting the cores), each loading the package and transcribing a
share of the items balanced by duration; results are streamed back and put in input order.
Processes rather than threads: the decoders and the Python around the model hold the GIL.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from asr.audio import AudioError, audio_info, load_audio
from asr.data.manifest import Utterance, duration_mismatch, read_manifest
from asr.data.sampler import plan_batches
from asr.decoding import (
    LM_TUNE_SUFFIX,
    BeamSearchDecoder,
    BeamSearchOptions,
    Hypothesis,
    greedy_decode,
    load_tuned_weights,
)
from asr.package import ModelPackage, load_package

DEFAULT_BATCH_SIZE = 32  # utterances per batch at most
DEFAULT_MAX_BATCH_SECONDS = 300.0  # padded audio seconds per batch at most (bounds memory)
DEFAULT_CHUNK_SECONDS = 30.0  # longer audio is read in windows owning this much audio
DEFAULT_OVERLAP_SECONDS = 3.0  # context read on each side of a window's owned region


NON_FINITE = "features or model output are not finite (NaN/inf): corrupt or absurd audio"


def default_threads() -> int:
    """CPU threads for inference: ``OMP_NUM_THREADS`` when set, else every core we may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads (None: :func:`default_threads`); returns the count."""
    n = default_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1 (is {n})")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


@torch.inference_mode()
def forward_batch(package: ModelPackage, waves: Sequence[Tensor]) -> list[Tensor]:
    """Emissions of one batch: waves [(S_i,)] at ``package.sample_rate`` -> [(T'_i, V)] float32 on CPU."""
    if not waves:
        return []
    device = package.device
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    padded = pad_sequence([w.reshape(-1).float() for w in waves], batch_first=True).to(device)  # (N, S)
    feats, feat_lens = package.featurizer(padded, lengths.to(device))  # (N, T, F)
    log_probs, out_lens = package.model(feats, feat_lens)  # (N, T', V)
    log_probs = log_probs.float().cpu()
    return [log_probs[i, : int(n)].clone() for i, n in enumerate(out_lens.tolist())]


def progress_bar(enabled: bool):
    """A rich progress bar on stderr, or a no-op when not ``enabled``.

    stdout is only redirected through the bar when it is a terminal: a transcript piped to
    a file must stay on stdout, not be re-routed to the bar's stderr console.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[progress.description]{task.description}"), BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s audio"), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=True, disable=not enabled,
        redirect_stdout=sys.stdout.isatty(),
    )


def emissions(
    package: ModelPackage,
    waves: Sequence[Tensor],
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    progress: bool = False,
) -> list[Tensor]:
    """CTC log-probs of in-memory waveforms.

    Args:
        package: from :func:`asr.package.load_package` (CPU or CUDA).
        waves: [(S_i,)] mono float32 at ``package.sample_rate``.
        num_threads: CPU threads (None: all cores, or OMP_NUM_THREADS when set).

    Returns:
        [(T'_i, V)] float32 CPU tensors, in the order of ``waves``.
    """
    if package.device.type == "cpu":
        set_threads(num_threads)
    sr = package.sample_rate
    durations = [w.numel() / sr for w in waves]
    out: list[Tensor | None] = [None] * len(waves)
    with progress_bar(progress) as bar:
        task = bar.add_task("inference", total=sum(durations))
        for batch in plan_batches(durations, batch_size, max_batch_seconds):
            for i, e in zip(batch, forward_batch(package, [waves[i] for i in batch])):
                out[i] = e
            bar.advance(task, sum(durations[i] for i in batch))
    return out  # type: ignore[return-value]


def emissions_for_manifest(
    package: ModelPackage,
    manifest_path: str | os.PathLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    failed: dict[str, str] | None = None,
    progress: bool = True,
) -> tuple[list[Tensor], list[Utterance]]:
    """CTC log-probs of every utterance of a manifest, in manifest order.

    Audio is read batch by batch (batches planned from the manifest durations), so memory
    holds one batch of audio plus the emissions. An utterance whose audio cannot be read
    is not dropped (nor one whose emissions are not finite): it gets an empty (0, V) emission, which every decoder turns into an
    empty hypothesis; its id and reason are added to ``failed`` (when given) and printed
    to stderr.

    Returns:
        (emissions [(T'_i, V)], utterances) in manifest order.
    """
    utts = read_manifest(manifest_path)
    if package.device.type == "cpu":
        set_threads(num_threads)
    vocab = package.tokenizer.vocab_size
    out: list[Tensor | None] = [None] * len(utts)
    total = sum(u.duration for u in utts)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"inference {Path(manifest_path).name}", total=total)
        for batch in plan_batches([u.duration for u in utts], batch_size, max_batch_seconds):
            good, waves = [], []
            for i in batch:
                u = utts[i]
                try:
                    waves.append(load_audio(u.audio, package.sample_rate, offset=u.offset, duration=u.duration))
                    good.append(i)
                except AudioError as e:
                    if failed is not None:
                        failed[u.id] = str(e)
                    print(f"warning: utterance {u.id}: {e}; scored as an empty hypothesis", file=sys.stderr)
                    out[i] = torch.zeros(0, vocab)
            for i, e in zip(good, forward_batch(package, waves)):
                if not bool(torch.isfinite(e).all()):
                    u = utts[i]
                    if failed is not None:
                        failed[u.id] = f"{u.audio}: {NON_FINITE}"
                    print(f"warning: utterance {u.id}: {u.audio}: {NON_FINITE}; scored as an empty hypothesis",
                          file=sys.stderr)
                    e = torch.zeros(0, vocab)
                out[i] = e
            bar.advance(task, sum(utts[i].duration for i in batch))
    return out, utts  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# decoding


def make_decoder(
    package: ModelPackage,
    decoder: str = "greedy",
    lm: str | os.PathLike | None = None,
    beam_size: int | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    lexicon: str | os.PathLike | None = None,
) -> tuple[Callable[[Tensor, Tensor], list[Hypothesis]], dict[str, Any]]:
    """A function (log_probs (N, T, V), lengths (N,)) -> [Hypothesis] (best only) and its settings.

    Beam options left as None take, in order: the weights ``asr lm tune`` saved beside the
    LM (``<lm>.tune.json``), then :class:`asr.decoding.BeamSearchOptions` defaults.

    Raises:
        ValueError: unknown decoder, or beam options given with the greedy decoder.
        DecoderError: a missing/unusable LM or lexicon.
    """
    tokenizer = package.tokenizer
    if decoder == "greedy":
        given = {k: v for k, v in (("lm", lm), ("beam_size", beam_size), ("lm_weight", lm_weight),
                                   ("word_score", word_score), ("lexicon", lexicon)) if v is not None}
        if given:
            raise ValueError(f"{', '.join(given)} need(s) decoder='beam' (greedy decoding has no LM or beam)")
        return (lambda lp, lens: greedy_decode(lp, lens, tokenizer)), {"decoder": "greedy"}
    if decoder != "beam":
        raise ValueError(f"decoder must be 'greedy' or 'beam' (is {decoder!r})")
    defaults = BeamSearchOptions()
    tuned = load_tuned_weights(lm) if lm is not None else None
    opts: dict[str, Any] = {
        "beam_size": defaults.beam_size if beam_size is None else beam_size,
        "lm_weight": lm_weight if lm_weight is not None else (tuned or {}).get("lm_weight", defaults.lm_weight),
        "word_score": word_score if word_score is not None else (tuned or {}).get("word_score", defaults.word_score),
    }
    beam = BeamSearchDecoder(tokenizer, lm=lm, lexicon=lexicon, **opts)
    settings = beam.settings()
    if tuned is not None:
        settings["tuned_weights"] = f"{lm}{LM_TUNE_SUFFIX}"
    return (lambda lp, lens: [h[0] for h in beam(lp, lens)]), settings


def decode_emissions(
    decode: Callable[[Tensor, Tensor], list[Hypothesis]], emissions_list: Sequence[Tensor], batch: int = 64
) -> Iterator[Hypothesis]:
    """Decode [(T_i, V)] emissions in padded groups of ``batch``; yields one Hypothesis each."""
    for s in range(0, len(emissions_list), batch):
        group = list(emissions_list[s : s + batch])
        lens = torch.tensor([e.shape[0] for e in group], dtype=torch.long)
        yield from decode(pad_sequence(group, batch_first=True), lens)  # (n, T, V)


def transcribe_manifest(
    package_path: str | os.PathLike | ModelPackage,
    manifest_path: str | os.PathLike,
    decoder: str = "greedy",
    lm: str | os.PathLike | None = None,
    beam_size: int | None = None,
    lm_weight: float | None = None,
    word_score: float | None = None,
    lexicon: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    progress: bool = True,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    devices: int = 1,
) -> tuple[dict[str, str], float, dict[str, Any], dict[str, Any]]:
    """Transcribe every utterance of a manifest, long ones window by window (see
    :func:`transcribe_segments`), so memory stays flat in the utterance length.

    An utterance without ``offset`` is the whole file: it is read to the file's end, and a
    manifest duration that disagrees with the file's real length (beyond
    :data:`DURATION_TOLERANCE`) is warned about and counted, never silently used to cut the
    audio. An utterance with an offset is the segment [offset, offset + duration).

    ``devices > 1`` runs that many worker processes (see :func:`worker_devices`: ``cuda``
    -> cuda:0..N-1, ``cpu`` -> N processes splitting ``num_threads``), each on a share of
    the utterances balanced by manifest duration; the results are the same as on one
    device. The package must then be a path (or a package loaded from one); the RTF counts
    the workers' start-up (process spawn, package load).

    Returns:
        hyps: utterance id -> text, for EVERY utterance (unreadable audio -> "").
        rtf: real-time factor = wall seconds (audio reading, features, model, decoding)
            / seconds of audio transcribed.
        settings: decoder settings, device, threads, batch limits, and ``failed`` (number
            of unreadable utterances, scored as empty hypotheses) with ``failed_items``
            (id -> reason) when there are any; ``duration_mismatch`` (count) with
            ``duration_mismatch_items`` (id -> {manifest, file} seconds) when there are any.
        model_info: the package's info (path, sha256, toolkit_version, quantize, ...).
    """
    targets = worker_devices(device, devices)
    if isinstance(package_path, ModelPackage):
        package = package_path
    else:
        # Several workers load their own copies; this one only checks the package (and decoder).
        package = load_package(package_path, device if devices == 1 else "cpu")
    # Build the decoder first: a bad LM path should fail before minutes of inference.
    decode, settings = make_decoder(package, decoder, lm, beam_size, lm_weight, word_score, lexicon)
    if package.device.type == "cpu" and devices == 1:
        set_threads(num_threads)
    utts = read_manifest(manifest_path)
    start = time.perf_counter()
    segments = [Segment(u.audio, u.offset, u.duration) if u.offset else Segment(u.audio) for u in utts]
    description = f"inference {Path(manifest_path).name}"
    worker_threads = None
    if devices == 1:
        results = transcribe_segments(package, decode, segments, chunk_seconds, overlap_seconds, batch_size,
                                      max_batch_seconds, progress=progress, description=description)
    else:
        path = package.info.get("path") if isinstance(package_path, ModelPackage) else package_path
        if not path:
            raise ValueError("several devices need the package's path (workers load it themselves)")
        options = {"decoder": decoder, "lm": lm, "beam_size": beam_size, "lm_weight": lm_weight,
                   "word_score": word_score, "lexicon": lexicon}
        results = transcribe_segments_parallel(
            path, segments, targets, options, [u.duration for u in utts], chunk_seconds, overlap_seconds,
            batch_size, max_batch_seconds, num_threads, progress=progress, description=description)
        if "cpu" in targets:
            worker_threads = max(1, (num_threads or default_threads()) // len(targets))
    elapsed = time.perf_counter() - start
    hyps: dict[str, str] = {}
    failed: dict[str, str] = {}
    mismatch: dict[str, dict[str, float]] = {}
    for u, r in zip(utts, results, strict=True):
        hyps[u.id] = r.text
        if r.error is not None:
            failed[u.id] = f"{u.audio}: {r.error}"
            print(f"warning: utterance {u.id}: {u.audio}: {r.error}; scored as an empty hypothesis",
                  file=sys.stderr)
        elif not u.offset and duration_mismatch(u.duration, r.duration):
            mismatch[u.id] = {"manifest": u.duration, "file": round(r.duration, 6)}
            print(f"warning: utterance {u.id}: {u.audio}: manifest duration {u.duration:.3f} s but the file "
                  f"holds {r.duration:.3f} s; transcribed the whole file", file=sys.stderr)
    audio = sum(r.duration for r in results if r.error is None)
    settings = {
        **settings,
        "device": str(package.device) if devices == 1 else ",".join(dict.fromkeys(targets)),
        "devices": devices,
        # CPU threads (per worker with several devices)
        "threads": (torch.get_num_threads() if package.device.type == "cpu" else None) if devices == 1
        else worker_threads,
        "quantize": package.info.get("quantize", "none"),
        "batch_size": batch_size,
        "max_batch_seconds": max_batch_seconds,
        "chunk_seconds": chunk_seconds,
        "overlap_seconds": overlap_seconds,
        "failed": len(failed),
        "duration_mismatch": len(mismatch),
    }
    if failed:
        settings["failed_items"] = dict(failed)
    if mismatch:
        settings["duration_mismatch_items"] = mismatch
    return hyps, (elapsed / audio if audio > 0 else float("nan")), settings, dict(package.info)


# --------------------------------------------------------------------------------------------
# windowed transcription of files and segments


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


@dataclass(frozen=True)
class _Piece:
    """One model input: [offset, offset + seconds) of segment ``item``'s file."""

    item: int  # index into the segment list
    offset: float  # seconds into the FILE where reading starts
    duration: float | None  # seconds to read; None = to the end of the file
    seconds: float  # audio length, for batching and progress
    own_start: float  # words starting in [own_start, own_end) (segment seconds) are kept
    own_end: float


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
    out = []
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


def transcribe_segments(
    package: ModelPackage,
    decode: Callable[[Tensor, Tensor], list[Hypothesis]],
    segments: Sequence[Segment],
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    progress: bool = False,
    description: str | None = None,
    on_result: Callable[[int, SegmentResult], None] | None = None,
) -> list[SegmentResult]:
    """Transcribe segments of audio files, each on its own (a bad one never stops the rest).

    Work is cut into *pieces*: a segment up to ``chunk_seconds`` long is one piece; a longer
    one is read window by window (:func:`plan_windows`, never whole). Pieces of all segments
    are sorted by length and batched. Each window is decoded on its own, and a word is kept
    only from the window whose owned region contains the word's start time, so words at the
    seams are neither lost nor doubled, and memory stays flat in the segment length.

    A segment fails (``error`` set, empty text) when its audio cannot be read, when its
    features or emissions are not finite, or when inference fails on it alone.
    ``on_result(index, result)`` is called once per segment, in segment order, as soon as it
    and every segment before it are finished.
    """
    n = len(segments)
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
            results[i] = SegmentResult("", [], durations[i], errors[i])
        else:
            ws = sorted(words[i], key=lambda w: (w[1], w[2]))
            results[i] = SegmentResult(" ".join(w for w, _, _ in ws), ws, durations[i])
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
        except AudioError as e:
            errors[i] = e.reason
            finish(i)
            continue
        for offset, dur, own_start, own_end in plan_windows(durations[i], chunk_seconds, overlap_seconds):
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


def _run_pieces(
    package: ModelPackage,
    decode: Callable[[Tensor, Tensor], list[Hypothesis]],
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
        ems = forward_batch(package, waves)
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


# --------------------------------------------------------------------------------------------
# several devices: one worker process per device, each on a share of the items


def worker_devices(device: str | torch.device, devices: int) -> list[str]:
    """Where each of ``devices`` inference workers runs.

    ``cpu``: every worker on the CPU (they split the cores); ``cuda``: worker i on
    ``cuda:i`` (choose the GPUs with ``CUDA_VISIBLE_DEVICES``). One device: ``[device]``.

    Raises:
        ValueError: ``devices < 1``, more CUDA workers than visible GPUs, ``cuda:K`` with
            several workers, or another device type.
    """
    if devices < 1:
        raise ValueError(f"--devices must be >= 1 (is {devices})")
    dev = torch.device(device)
    if devices == 1:
        return [str(dev)]
    if dev.type == "cpu":
        return ["cpu"] * devices
    if dev.type != "cuda":
        raise ValueError(f"--devices {devices}: only cpu and cuda can run several workers (not {dev.type})")
    if dev.index is not None:
        raise ValueError(f"--devices {devices} uses cuda:0..{devices - 1}: give --device cuda, not {dev} "
                         "(pick the GPUs with CUDA_VISIBLE_DEVICES)")
    have = torch.cuda.device_count()
    if devices > have:
        raise ValueError(f"--devices {devices}: only {have} CUDA device(s) visible")
    return [f"cuda:{i}" for i in range(devices)]


def split_by_duration(durations: Sequence[float], parts: int) -> list[list[int]]:
    """Indices into ``parts`` shares of near-equal total duration (each in ascending order).

    Longest first, each to the share with the least audio so far (ties: the lowest share),
    so the slowest worker ends at most about one item after the others.
    """
    loads = [0.0] * parts
    shares: list[list[int]] = [[] for _ in range(parts)]
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        k = min(range(parts), key=lambda k: (loads[k], k))
        shares[k].append(i)
        loads[k] += max(0.0, float(durations[i]))
    return [sorted(s) for s in shares]


def _segments_worker(
    rank: int, package_path: str, device: str, threads: int | None, decoder_options: dict[str, Any],
    segments: list[Segment], indices: list[int], options: dict[str, Any], queue: Any,
) -> None:
    """One worker process: load the package on ``device``, transcribe its share and put each
    result on ``queue`` as ``("result", global index, SegmentResult)`` as soon as it is
    ready, then ``("done", rank, None)``; an unexpected failure sends ``("error", rank, traceback)``."""
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        package = load_package(package_path, device)
        decode, _ = make_decoder(package, **decoder_options)
        transcribe_segments(package, decode, segments, progress=False,
                            on_result=lambda j, r: queue.put(("result", indices[j], r)), **options)
        queue.put(("done", rank, None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which re-raises it
        import traceback

        queue.put(("error", rank, traceback.format_exc()))


def transcribe_segments_parallel(
    package_path: str | os.PathLike,
    segments: Sequence[Segment],
    devices: Sequence[str],
    decoder_options: dict[str, Any] | None = None,
    durations: Sequence[float] | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    progress: bool = False,
    description: str | None = None,
    on_result: Callable[[int, SegmentResult], None] | None = None,
) -> list[SegmentResult]:
    """:func:`transcribe_segments` on several devices: one spawned process per entry of
    ``devices`` (e.g. from :func:`worker_devices`), each loading the package there and
    transcribing a share of the segments balanced by ``durations`` (default: read from the
    file headers). Results are the same as on one device, in segment order;
    ``on_result`` is called in segment order as results arrive.

    On the CPU the workers split ``num_threads`` (default: every core) evenly, at least one
    thread each. ``decoder_options`` are :func:`make_decoder`'s keyword arguments; each
    worker builds its own decoder (check them in the caller first: a bad LM fails there in
    seconds instead of in every worker). A worker that fails or dies raises RuntimeError
    (with its traceback) after the others are stopped.
    """
    import multiprocessing
    import queue as queue_module

    n = len(segments)
    if durations is None:
        durations = [_header_seconds(s) for s in segments]
    shares = split_by_duration(durations, len(devices))
    cpu_workers = sum(1 for d in devices if torch.device(d).type == "cpu")
    threads = max(1, (num_threads or default_threads()) // cpu_workers) if cpu_workers else None
    options = {"chunk_seconds": chunk_seconds, "overlap_seconds": overlap_seconds, "batch_size": batch_size,
               "max_batch_seconds": max_batch_seconds}
    ctx = multiprocessing.get_context("spawn")  # CUDA and torch's thread pools do not survive fork
    results: list[SegmentResult | None] = [None] * n
    queue = ctx.Queue()
    workers = []
    for rank, (device, share) in enumerate(zip(devices, shares)):
        if not share:
            continue
        p = ctx.Process(target=_segments_worker, daemon=True, name=f"asr-inference-{rank}", args=(
            rank, str(package_path), device, threads if torch.device(device).type == "cpu" else None,
            dict(decoder_options or {}), [segments[i] for i in share], share, options, queue))
        p.start()
        workers.append((rank, p))
    running = {rank for rank, _ in workers}
    silent = dict.fromkeys(running, 0)
    next_out = 0
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(description or f"transcribing {n} item(s) on {len(workers)} worker(s)",
                                total=sum(durations))
            while running:
                try:
                    kind, key, value = queue.get(timeout=1.0)
                except queue_module.Empty:
                    for rank, p in workers:
                        # Exit code 0 without "done" can only be a message still in flight:
                        # give it a few more polls.
                        if rank in running and not p.is_alive():
                            silent[rank] += 1
                            if p.exitcode != 0 or silent[rank] > 3:
                                raise RuntimeError(f"inference worker {rank} ({devices[rank]}) died "
                                                   f"(exit code {p.exitcode})") from None
                    continue
                if kind == "error":
                    raise RuntimeError(f"inference worker {key} ({devices[key]}) failed:\n{value}")
                if kind == "done":
                    running.discard(key)
                    continue
                results[key] = value
                bar.advance(task, durations[key])
                while next_out < n and results[next_out] is not None:
                    if on_result is not None:
                        on_result(next_out, results[next_out])  # type: ignore[arg-type]
                    next_out += 1
    finally:
        for _, p in workers:
            if not running:  # all done: they are exiting
                p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join()
        queue.close()
    return results  # type: ignore[return-value]


def _header_seconds(segment: Segment) -> float:
    """A segment's length for load balancing (0 when the header cannot be read: the worker
    that gets it reports why)."""
    if segment.duration is not None:
        return segment.duration
    try:
        return max(0.0, audio_info(segment.path).duration - segment.offset)
    except AudioError:
        return 0.0
