"""Batched inference with a model package: waveforms -> CTC emissions -> text.

Utterances are sorted by length and grouped into batches capped by count and by padded
audio seconds, so little compute goes to padding; the model is padding-invariant (features
and every layer mask past each length), so an utterance's emissions do not depend on its
batch mates, and results are returned in the caller's order.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from asr.audio import AudioError, load_audio
from asr.checkpoint import ModelPackage, load_package
from asr.data.manifest import Utterance, read_manifest
from asr.decoding import (
    LM_TUNE_SUFFIX,
    BeamSearchDecoder,
    BeamSearchOptions,
    Hypothesis,
    greedy_decode,
    load_tuned_weights,
)

DEFAULT_BATCH_SIZE = 32  # utterances per batch at most
DEFAULT_MAX_BATCH_SECONDS = 300.0  # padded audio seconds per batch at most (bounds memory)


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


def plan_batches(
    durations: Sequence[float], batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
) -> list[list[int]]:
    """Group indices into batches, longest first.

    A batch holds at most ``batch_size`` items and at most ``max_batch_seconds`` of padded
    audio (items x its longest); an item longer than ``max_batch_seconds`` gets a batch of
    its own. Every index appears in exactly one batch.
    """
    if batch_size < 1 or max_batch_seconds <= 0:
        raise ValueError(f"batch_size must be >= 1 and max_batch_seconds > 0 (are {batch_size}, {max_batch_seconds})")
    order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
    batches: list[list[int]] = []
    for i in order:
        # Sorted descending, so a batch's longest item is its first.
        if batches and len(batches[-1]) < batch_size and (
            (len(batches[-1]) + 1) * durations[batches[-1][0]] <= max_batch_seconds
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


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
        package: from :func:`asr.checkpoint.load_package` (CPU or CUDA).
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
    is not dropped: it gets an empty (0, V) emission, which every decoder turns into an
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
) -> tuple[dict[str, str], float, dict[str, Any], dict[str, Any]]:
    """Transcribe every utterance of a manifest.

    Returns:
        hyps: utterance id -> text, for EVERY utterance (unreadable audio -> "").
        rtf: real-time factor = wall seconds (audio reading, features, model, decoding)
            / seconds of audio in the manifest.
        settings: decoder settings, device, threads, batch limits, and ``failed`` (number
            of unreadable utterances, scored as empty hypotheses) with ``failed_items``
            (id -> reason) when there are any.
        model_info: the package's info (path, sha256, toolkit_version, quantize, ...).
    """
    package = package_path if isinstance(package_path, ModelPackage) else load_package(package_path, device)
    # Build the decoder first: a bad LM path should fail before minutes of inference.
    decode, settings = make_decoder(package, decoder, lm, beam_size, lm_weight, word_score, lexicon)
    start = time.perf_counter()
    failed: dict[str, str] = {}
    ems, utts = emissions_for_manifest(package, manifest_path, batch_size, max_batch_seconds,
                                       num_threads, failed=failed, progress=progress)
    hyps = {u.id: h.text for u, h in zip(utts, decode_emissions(decode, ems), strict=True)}
    elapsed = time.perf_counter() - start
    audio = sum(u.duration for u in utts)
    settings = {
        **settings,
        "device": str(package.device),
        "threads": torch.get_num_threads() if package.device.type == "cpu" else None,
        "quantize": package.info.get("quantize", "none"),
        "batch_size": batch_size,
        "max_batch_seconds": max_batch_seconds,
        "failed": len(failed),
    }
    if failed:
        settings["failed_items"] = dict(failed)
    return hyps, (elapsed / audio if audio > 0 else float("nan")), settings, dict(package.info)
