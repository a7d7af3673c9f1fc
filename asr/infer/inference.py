"""Batched inference with a model package: waveforms -> CTC emissions -> text.

Utterances are sorted by length and grouped into batches capped by count and by padded
audio seconds, so little compute goes to padding; the model is padding-invariant (features
and every layer mask past each length), so an utterance's emissions do not depend on its
batch mates, and results are returned in the caller's order.

Manifests (:func:`transcribe_manifest`) go through :func:`asr.infer.segments.transcribe_segments`
(long recordings window by window) or, on several devices, :mod:`asr.infer.parallel`; the shared
engine (batch forward, decoders, threads, progress) is :mod:`asr.infer.engine`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.audio import AudioError, load_audio
from asr.data.manifest import Utterance, duration_mismatch, read_manifest
from asr.data.sampler import plan_batches
from asr.decode.decoding import DecodingOptions
from asr.decode.factory import make_decoder
from asr.infer.engine import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_MAX_BATCH_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    NON_FINITE,
    default_threads,
    forward_batch,
    set_threads,
)
from asr.infer.parallel import transcribe_segments_parallel, worker_devices
from asr.infer.progress import progress_bar
from asr.infer.segments import Segment, transcribe_segments
from asr.package import ModelPackage, load_package

log = logging.getLogger(__name__)

# How `asr evaluate` (transcribe_manifest) cuts utterances longer than chunk_seconds: fixed
# overlapping windows, as every reported evaluation did; `asr transcribe` cuts files at pauses
# by default (asr.infer.windows.DEFAULT_SEGMENT).
MANIFEST_SEGMENT = "fixed"


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
    phones: bool = False,
) -> tuple[list[Tensor], list[Utterance]]:
    """CTC log-probs of every utterance of a manifest, in manifest order (``phones``: joint
    character + phone-head log-probs, see :func:`asr.infer.engine.forward_batch`).

    Audio is read batch by batch (batches planned from the manifest durations), so memory
    holds one batch of audio plus the emissions. An utterance whose audio cannot be read
    is not dropped (nor one whose emissions are not finite): it gets an empty (0, V) emission, which every decoder turns into an
    empty hypothesis; its id and reason are added to ``failed`` (when given) and logged
    as a warning.

    Returns:
        (emissions [(T'_i, V)], utterances) in manifest order.
    """
    utts = read_manifest(manifest_path)
    if package.device.type == "cpu":
        set_threads(num_threads)
    vocab = package.tokenizer.vocab_size
    if phones:
        if package.phone_head is None:
            raise ValueError(f"{package.info.get('path', 'the package')}: no phone head")
        vocab += 1 + len(package.phone_head.phones)
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
                    log.warning("utterance %s: %s; scored as an empty hypothesis", u.id, e)
                    out[i] = torch.zeros(0, vocab)
            for i, em in zip(good, forward_batch(package, waves, phones=phones)):
                if not bool(torch.isfinite(em).all()):
                    u = utts[i]
                    if failed is not None:
                        failed[u.id] = f"{u.audio}: {NON_FINITE}"
                    log.warning("utterance %s: %s: %s; scored as an empty hypothesis", u.id, u.audio, NON_FINITE)
                    em = torch.zeros(0, vocab)
                out[i] = em
            bar.advance(task, sum(utts[i].duration for i in batch))
    return out, utts  # type: ignore[return-value]


def transcribe_manifest(
    package_path: str | os.PathLike | ModelPackage,
    manifest_path: str | os.PathLike,
    options: DecodingOptions | None = None,
    device: str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
    num_threads: int | None = None,
    progress: bool = True,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
    devices: int = 1,
    utterances: Sequence[Utterance] | None = None,
) -> tuple[dict[str, str], float, dict[str, Any], dict[str, Any]]:
    """Transcribe every utterance of a manifest, long ones window by window in fixed
    overlapping windows (:data:`MANIFEST_SEGMENT`, see :func:`transcribe_segments`), so memory
    stays flat in the utterance length.

    An utterance without ``offset`` is the whole file: it is read to the file's end, and a
    manifest duration that disagrees with the file's real length (beyond
    :data:`DURATION_TOLERANCE`) is warned about and counted, never silently used to cut the
    audio. An utterance with an offset is the segment [offset, offset + duration).

    ``devices > 1`` runs that many worker processes (see :func:`worker_devices`: ``cuda``
    -> cuda:0..N-1, ``cpu`` -> N processes splitting ``num_threads``), each on a share of
    the utterances balanced by manifest duration; the results are the same as on one
    device. The package must then be a path (or a package loaded from one); the RTF counts
    the workers' start-up (process spawn, package load).

    ``utterances``: the manifest's utterances when the caller has read it already; then
    ``manifest_path`` is not read again (it may be a pipe, which can be read only once).

    ``options`` say how to decode (default greedy; see :func:`asr.decode.factory.make_decoder`).
    Unreadable utterances and duration mismatches are logged as warnings and counted.

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
    decode, settings = make_decoder(package, options)
    if package.device.type == "cpu" and devices == 1:
        set_threads(num_threads)
    utts = list(utterances) if utterances is not None else read_manifest(manifest_path)
    start = time.perf_counter()
    segments = [Segment(u.audio, u.offset, u.duration) if u.offset else Segment(u.audio) for u in utts]
    description = f"inference {Path(manifest_path).name}"
    worker_threads = None
    if devices == 1:
        results = transcribe_segments(package, decode, segments, chunk_seconds, overlap_seconds, batch_size,
                                      max_batch_seconds, progress=progress, description=description,
                                      segment=MANIFEST_SEGMENT)
    else:
        path = package.info.get("path") if isinstance(package_path, ModelPackage) else package_path
        if not path:
            raise ValueError("several devices need the package's path (workers load it themselves)")
        results = transcribe_segments_parallel(
            path, segments, targets, options, [u.duration for u in utts], chunk_seconds, overlap_seconds,
            batch_size, max_batch_seconds, num_threads, progress=progress, description=description,
            segment=MANIFEST_SEGMENT)
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
            log.warning("utterance %s: %s: %s; scored as an empty hypothesis", u.id, u.audio, r.error)
        elif not u.offset and duration_mismatch(u.duration, r.duration):
            mismatch[u.id] = {"manifest": u.duration, "file": round(r.duration, 6)}
            log.warning("utterance %s: %s: manifest duration %.3f s but the file holds %.3f s; "
                        "transcribed the whole file", u.id, u.audio, u.duration, r.duration)
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
