#!/usr/bin/env python
"""Live transcription: WER, emission latency, partial-result cadence, RTF and memory of
streaming packages (latency-controlled BiLSTMs), beside the full-context model.

    python benchmarks/bench_streaming.py --manifest data/an4/test.jsonl \\
        --full exp/an4/seed1/model.asr:exp/an4/seed1/lm/3gram.bin \\
        --stream 160ms=exp/stream/an4-lc22/model.asr:exp/stream/an4-lc22/lm/3gram.bin ... \\
        [--hour 3600] [--commit 0.1 0.4] [--json out.json]
    python benchmarks/bench_streaming.py --dry-run     # tiny random models on noise (CI)

``NAME=PACKAGE[:LM]``: with an LM (its tuned weights, ``<lm>.tune.json``, are used) the
model is also measured with beam search + LM, and with ``--commit S ...`` with beam + LM
fixing each word S seconds after its end (one row each). Everything runs on one CPU thread.

- **WER** (corpus, 95% bootstrap CI) of each streaming model's streamed finals, and of the
  full-context model decoded offline; ``same`` counts the utterances whose streamed text
  equals the offline decode of the same streaming model (it should be all of them).
- **Emission latency**, per correctly recognised word: the moment its final text is out
  minus the end of the word in the audio. Word ends come from the full-context model's CTC
  forced alignment of the reference (torchaudio's ``forced_align``). "Final text is out":
  the earliest result (partial or final) from which that word, at its place in the
  segment's hypothesis, never changes again. Time is simulated real time: 10 ms of audio
  arrive every 10 ms; each piece is processed when it has arrived and the previous one is
  done, for as long as the recognizer really takes on this machine (so a slow model queues
  up and its latency shows it). p50 and p95 over the words; how many were out more than
  500 ms after their end, and how many only with the segment's final result.
- **Partial gap**: while a segment has speech, the time between consecutive results (a
  partial every chunk); p95 and max.
- **RTF**: recognizer compute time / audio time, over the whole manifest.
- ``--hour S``: one stream of S seconds (the manifest's utterances, 0.3 s apart, repeated)
  through the first streaming model with its richest decoder, as fast as it runs; RSS at
  the first minute, the peak, and its growth.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from asr.decode.decoding import DecodingOptions
from asr.decode.factory import decode_emissions, make_decoder
from asr.decode.phones import aligned_hypothesis
from asr.infer.engine import forward_batch
from asr.infer.streaming import DEFAULT_ENDPOINT_S, StreamingRecognizer, StreamResult
from asr.metrics import bootstrap_ci, score_corpus
from asr.package import ModelPackage, load_package

PIECE_S = 0.01  # audio arrives in pieces of 10 ms


@dataclass
class Run:
    """One model x decoder over the manifest."""

    name: str
    decoder: str
    hyps: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, per matched word
    at_final: int = 0  # matched words that settled only at their segment's final result
    gaps: list[float] = field(default_factory=list)  # seconds between results during speech
    compute: float = 0.0
    audio: float = 0.0
    same: int = 0  # streamed text == offline decode of the same model


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def parse_model(spec: str) -> tuple[str, str, str | None]:
    name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    path, _, lm = rest.partition(":")
    return name or Path(path).parent.name, path, lm or None


def stream_utterance(rec: StreamingRecognizer, audio: np.ndarray) -> tuple[list[tuple[float, StreamResult]], float]:
    """Feed ``audio`` in 10 ms pieces on a simulated real-time clock; returns the results
    with the (simulated) time each came out, and the compute time spent."""
    sr = rec.sample_rate
    step = int(round(PIECE_S * sr))
    busy = compute = 0.0
    timed: list[tuple[float, StreamResult]] = []
    n = audio.size
    for s in range(0, n + step, step):
        arrived = min(s + step, n) / sr
        t0 = time.perf_counter()
        out = rec.feed(audio[s : s + step]) if s < n else rec.flush()
        spent = time.perf_counter() - t0
        compute += spent
        busy = max(busy, arrived) + spent
        timed += [(busy, r) for r in out]
        if s >= n:
            break
    return timed, compute


def emission_times(timed: list[tuple[float, StreamResult]]) -> list[tuple[str, float, bool]]:
    """(word, the moment its final text was out, whether that was the segment's final result
    itself) for each word of the final results."""
    out: list[tuple[str, float, bool]] = []
    segment: list[tuple[float, StreamResult]] = []
    for t, r in timed:
        segment.append((t, r))
        if not r.final:
            continue
        final = [w.word for w in r.words]
        for i, word in enumerate(final):
            settled = t
            for t_k, r_k in reversed(segment):
                words = [w.word for w in r_k.words] if r_k.final else r_k.text.split()
                if len(words) > i and words[i] == word:
                    settled = t_k
                else:
                    break
            out.append((word, settled, settled == t))
        segment = []
    return out


def result_gaps(timed: list[tuple[float, StreamResult]]) -> list[float]:
    gaps, last = [], None
    for t, r in timed:
        if last is not None:
            gaps.append(t - last)
        last = None if r.final else t
    return gaps


def word_ends(full: ModelPackage, emissions: torch.Tensor, text: str) -> list[tuple[str, float]]:
    """(word, end time s) of the reference from the full-context model's forced alignment."""
    try:
        hyp = aligned_hypothesis(text, emissions, full.tokenizer, 0.0)
    except (RuntimeError, ValueError):  # not alignable (more tokens than frames)
        return []
    return [(w.word, w.end * full.frame_shift) for w in hyp.words]


def measure(name: str, package: ModelPackage, options: DecodingOptions, audios: list[np.ndarray],
            refs_end: list[list[tuple[str, float]]], offline: list[str], endpoint_s: float = DEFAULT_ENDPOINT_S,
            commit_s: float | None = None) -> Run:
    rec = StreamingRecognizer(package, options, endpoint_s=endpoint_s, commit_s=commit_s)
    run = Run(name, decoder_name(options, commit_s))
    for audio, ends, want in zip(audios, refs_end, offline):
        timed, compute = stream_utterance(rec, audio)
        run.compute += compute
        run.audio += audio.size / rec.sample_rate
        finals = [r.text for _, r in timed if r.final and r.text]
        text = " ".join(finals)
        run.hyps.append(text)
        run.same += text == want
        run.gaps += result_gaps(timed)
        emitted = emission_times(timed)
        ref_words = [w for w, _ in ends]
        matcher = difflib.SequenceMatcher(a=ref_words, b=[w for w, _, _ in emitted], autojunk=False)
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                _, out_at, at_final = emitted[block.b + k]
                run.latencies.append(out_at - ends[block.a + k][1])
                run.at_final += at_final
    return run


def offline_texts(package: ModelPackage, options: DecodingOptions, emissions: list[torch.Tensor]) -> list[str]:
    decoder, _ = make_decoder(package, options)
    return [h.text for h in decode_emissions(decoder, emissions)]


def options_for(lm: str | None, commits: list[float] | None = None) -> list[tuple[DecodingOptions, float | None]]:
    """Greedy; with an LM, beam + LM, and beam + LM fixing words after each of ``commits`` s."""
    opts: list[tuple[DecodingOptions, float | None]] = [(DecodingOptions(), None)]
    if lm is not None:
        beam = DecodingOptions(decoder="beam", lm=lm)
        opts += [(beam, None)] + [(beam, c) for c in commits or []]
    return opts


def decoder_name(options: DecodingOptions, commit_s: float | None = None) -> str:
    if options.decoder != "beam":
        return "greedy"
    return "beam+LM" if commit_s is None else f"beam+LM, words fixed after {1000 * commit_s:.0f} ms"


def hour_stream(package: ModelPackage, options: DecodingOptions, audios: list[np.ndarray], seconds: float,
                endpoint_s: float = DEFAULT_ENDPOINT_S) -> dict:
    rec = StreamingRecognizer(package, options, endpoint_s=endpoint_s)
    sr = rec.sample_rate
    gap = np.zeros(int(0.3 * sr), dtype=np.float32)
    piece = int(0.1 * sr)
    fed = 0
    start = time.perf_counter()
    first_minute = None
    samples: list[tuple[float, float]] = []
    finals = 0
    k = 0
    while fed < seconds * sr:
        audio = np.concatenate([audios[k % len(audios)], gap])
        k += 1
        for s in range(0, audio.size, piece):
            finals += sum(r.final for r in rec.feed(audio[s : s + piece]))
            fed += min(piece, audio.size - s)
            if fed // (60 * sr) > len(samples) - 1 or not samples:
                samples.append((fed / sr, rss_mib()))
                if first_minute is None and fed >= 60 * sr:
                    first_minute = samples[-1][1]
    finals += sum(r.final for r in rec.flush())
    wall = time.perf_counter() - start
    if first_minute is None:  # a stream shorter than a minute (--dry-run)
        first_minute = samples[0][1]
    peak = max(r for _, r in samples)
    return {"seconds": fed / sr, "rtf": wall / (fed / sr), "rss_first_minute_mib": first_minute,
            "rss_peak_mib": peak, "growth_mib": peak - first_minute, "finals": finals,
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def dry_run_models(folder: Path) -> tuple[str, list[str], str]:
    """Tiny random packages (one full-context, one streaming) and a noise manifest."""
    import soundfile as sf

    from asr.config import ExperimentConfig, to_dict
    from asr.model import AcousticModel, ModelConfig
    from asr.text import CharTokenizer
    from asr.train.export import export

    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    paths = []
    for name, extra in (("full", {}), ("lc", {"chunk_frames": 4, "right_context_frames": 4, "subsampling": 4})):
        cfg = ExperimentConfig(model=ModelConfig(hidden=8, num_layers=2, conv_channels=4, dropout=0.0, **extra))
        torch.manual_seed(0)
        model = AcousticModel(cfg.model, cfg.features.n_mels, tok.vocab_size)
        ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_dict(cfg), "tokenizer": tok.to_dict()}}
        torch.save(ckpt, folder / f"{name}.ckpt")
        paths.append(str(export([folder / f"{name}.ckpt"], folder / f"{name}.asr")))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(3):
        wav = folder / f"u{i}.wav"
        sf.write(wav, (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000)
        lines.append(json.dumps({"id": f"u{i}", "audio": str(wav), "duration": 0.75, "text": "a b",
                                 "speaker": "s", "sample_rate": 16000}))
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    lm = folder / "lm.arpa"  # a word bigram over "a" and "b" (KenLM reads ARPA directly)
    lm.write_text("\\data\\\nngram 1=5\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t0\n-0.5\t</s>\t0\n"
                  "-0.5\ta\t0\n-0.5\tb\t0\n\n\\2-grams:\n-0.3\t<s> a\n-0.3\ta b\n\n\\end\\\n")
    return f"{paths[0]}:{lm}", [f"lc={paths[1]}:{lm}"], str(manifest)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest")
    p.add_argument("--full", help="the full-context model: PACKAGE[:LM]")
    p.add_argument("--stream", nargs="+", default=[], help="streaming models: NAME=PACKAGE[:LM]")
    p.add_argument("--hour", type=float, default=0.0, help="seconds of the long stream (0: none)")
    p.add_argument("--limit", type=int, default=0, help="first N utterances only")
    p.add_argument("--endpoint", type=float, default=DEFAULT_ENDPOINT_S,
                   help=f"seconds of blank output that end a segment (default {DEFAULT_ENDPOINT_S})")
    p.add_argument("--commit", type=float, nargs="*", default=[],
                   help="also beam + LM with words fixed this many seconds after their end (StreamingRecognizer's "
                        "commit_s), one row each")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--dry-run", action="store_true", help="tiny random models on noise: checks the script runs")
    args = p.parse_args()
    torch.set_num_threads(1)
    tmp = None
    if args.dry_run:
        tmp = tempfile.TemporaryDirectory()
        args.full, args.stream, args.manifest = dry_run_models(Path(tmp.name))
        args.hour = args.hour or 5.0
        args.commit = args.commit or [0.1]
    if not (args.manifest and args.full and args.stream):
        p.error("--manifest, --full and --stream are required (or --dry-run)")
    if any(c < 0 for c in args.commit):
        p.error("--commit: seconds must be >= 0")

    utts = read_manifest(args.manifest)
    if args.limit:
        utts = utts[: args.limit]
    _, full_path, full_lm = parse_model(args.full)
    full = load_package(full_path)
    audios = [load_audio(u.audio, full.sample_rate, u.offset, u.duration if u.offset else None).numpy()
              for u in utts]
    refs = [u.text for u in utts]
    full_em = forward_batch(full, [torch.from_numpy(a) for a in audios])
    ends = [word_ends(full, e, r) for e, r in zip(full_em, refs)]
    rows = []
    for opts, _ in options_for(full_lm):
        hyps = offline_texts(full, opts, full_em)
        score = score_corpus(refs, hyps)
        ci = bootstrap_ci(*score.word_arrays())
        rows.append({"model": "full context", "decoder": "beam+LM" if opts.decoder == "beam" else "greedy",
                     "wer": score.wer, "ci": [ci.low, ci.high], "latency_s": None})
        print(f"full context {rows[-1]['decoder']}: WER {score.wer:.2%}", file=sys.stderr)
    first: tuple[str, ModelPackage, DecodingOptions] | None = None  # the long stream's model and decoder
    for spec in args.stream:
        name, path, lm = parse_model(spec)
        package = load_package(path)
        em = forward_batch(package, [torch.from_numpy(a) for a in audios])
        if first is None:
            first = (name, package, options_for(lm)[-1][0])
        offline = {}
        for opts, commit in options_for(lm, args.commit):
            if opts.decoder not in offline:
                offline[opts.decoder] = offline_texts(package, opts, em)
            run = measure(name, package, opts, audios, ends, offline[opts.decoder], args.endpoint, commit)
            score = score_corpus(refs, run.hyps)
            ci = bootstrap_ci(*score.word_arrays())
            rec = StreamingRecognizer(package, opts)
            row = {"model": name, "decoder": run.decoder, "commit_s": commit, "wer": score.wer, "ci": [ci.low, ci.high],
                   "latency_s": rec.latency_s, "same_as_offline": f"{run.same}/{len(utts)}",
                   "words_timed": len(run.latencies), "settled_at_final": run.at_final,
                   "out_after_500ms": sum(lat > 0.5 for lat in run.latencies),
                   "emission_p50_ms": 1000 * pct(run.latencies, 50),
                   "emission_p95_ms": 1000 * pct(run.latencies, 95), "gap_p95_ms": 1000 * pct(run.gaps, 95),
                   "gap_max_ms": 1000 * max(run.gaps, default=float("nan")), "rtf": run.compute / run.audio}
            rows.append(row)
            print(f"{name} {run.decoder}: WER {score.wer:.2%}, p95 {row['emission_p95_ms']:.0f} ms", file=sys.stderr)
    hour = None
    if args.hour and first is not None:
        hour = hour_stream(first[1], first[2], audios, args.hour, args.endpoint)
        hour["model"], hour["decoder"] = first[0], "beam+LM" if first[2].decoder == "beam" else "greedy"

    print(f"\n{args.manifest}: {len(utts)} utterances, {sum(len(r.split()) for r in refs)} words; one CPU thread; "
          f"torch {torch.__version__}")
    print("| model | algorithmic latency | decoder | WER [95% CI] | same as offline | emission p50 / p95 | "
          "words out > 500 ms / only at the final | partial gap p95 / max | RTF |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        lat = "whole utterance" if r["latency_s"] is None else f"{1000 * r['latency_s']:.0f} ms"
        if r["latency_s"] is None:
            print(f"| {r['model']} | {lat} | {r['decoder']} | {r['wer']:.2%} [{r['ci'][0]:.2%}, {r['ci'][1]:.2%}] "
                  "| | | | | |")
            continue
        print(f"| {r['model']} | {lat} | {r['decoder']} | {r['wer']:.2%} [{r['ci'][0]:.2%}, {r['ci'][1]:.2%}] | "
              f"{r['same_as_offline']} | {r['emission_p50_ms']:.0f} / {r['emission_p95_ms']:.0f} ms | "
              f"{r['out_after_500ms']} / {r['settled_at_final']} of {r['words_timed']} | "
              f"{r['gap_p95_ms']:.0f} / {r['gap_max_ms']:.0f} ms | {r['rtf']:.3f} |")
    if hour is not None:
        print(f"\nlong stream ({hour['model']}, {hour['decoder']}): {hour['seconds'] / 60:.0f} min of audio, "
              f"RTF {hour['rtf']:.3f}, RSS {hour['rss_first_minute_mib']:.0f} MiB after the first minute, "
              f"peak {hour['rss_peak_mib']:.0f} MiB (growth {hour['growth_mib']:.0f} MiB), {hour['finals']} finals")
    if args.json:
        Path(args.json).write_text(json.dumps({"manifest": args.manifest, "rows": rows, "hour": hour}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
