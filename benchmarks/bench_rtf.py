#!/usr/bin/env python
"""Inference speed on CPU: real-time factor of greedy fp32 vs int8, beam search with and
without an LM, flashlight vs pyctcdecode, and peak memory of long-file transcription.

The acoustic model is the default speechocean762-sized one (``ModelConfig()``) with random
weights: speed does not depend on what the weights learned. Audio: about 60 s of
speechocean762 utterances (synthetic noise when the corpus is absent).

    python benchmarks/bench_rtf.py [--threads 2] [--seconds 60] [--beam 50] [--no-memory]

Rows:
- greedy fp32 / int8: RTF = (log-mel + model + greedy decoding) wall time / audio seconds,
  audio already in memory; best of ``--repeats`` runs.
- beam: flashlight-text (asr.decode.flashlight) per-utterance time on the fp32 emissions,
  lexicon-free without LM; with a word bigram LM over the corpus transcripts (built with
  ``asr.decode.lm.build_lm`` when KenLM's lmplz is installed, else written here in ARPA format).
- flashlight vs pyctcdecode: same log-probs, same beam width, no LM; time ratio and how often
  both return the same text, on the random model's emissions (near-uniform: a stress case)
  and on synthetic peaky emissions that look like a trained model's.
- memory: peak RSS of a child process transcribing a 1-min vs a 10-min synthetic file,
  windowed (``chunk_seconds=30``) and whole-file.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from asr.audio import load_audio
from asr.config import ExperimentConfig, to_dict
from asr.decode.beam import BeamSearchDecoder
from asr.decode.decoding import DecodingOptions, greedy_decode
from asr.infer.inference import emissions
from asr.model import AcousticModel, ModelConfig
from asr.package import load_package
from asr.text import CharTokenizer, normalize_text
from asr.train.export import export

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762"


def load_corpus(seconds: float) -> tuple[list[torch.Tensor], list[str], list[str], str]:
    """~``seconds`` of utterances (waves, texts), all transcripts (for the LM), and the source."""
    text_file, scp = CORPUS / "train" / "text", CORPUS / "train" / "wav.scp"
    if not text_file.is_file():
        g = torch.Generator().manual_seed(0)
        waves = [0.1 * torch.randn(int(16000 * 4.0), generator=g) for _ in range(math.ceil(seconds / 4))]
        texts = ["we call it bear", "zero three five one", "three two two seven"] * 20
        return waves, texts[: len(waves)], texts, "synthetic noise (speechocean762 not found)"
    texts = dict(line.split(maxsplit=1) for line in text_file.read_text().splitlines() if " " in line.strip())
    paths = dict(line.split(maxsplit=1) for line in scp.read_text().splitlines() if line.strip())
    waves, chosen, total = [], [], 0.0
    for utt in sorted(paths)[::37]:  # spread over speakers
        w = load_audio(CORPUS / paths[utt].strip())
        waves.append(w)
        chosen.append(normalize_text(texts.get(utt, "")))
        total += w.numel() / 16000
        if total >= seconds:
            break
    all_texts = [normalize_text(t) for t in texts.values()]
    return waves, chosen, all_texts, f"speechocean762 ({len(waves)} utterances)"


def write_bigram_arpa(texts: list[str], path: Path) -> None:
    """A small word bigram LM in ARPA format (absolute discounting, 0.5), for when KenLM's
    lmplz is not installed; what matters here is its size and shape, not its smoothing."""
    uni: Counter[str] = Counter()
    bi: Counter[tuple[str, str]] = Counter()
    for t in texts:
        words = ["<s>", *t.split(), "</s>"]
        uni.update(words)
        bi.update(zip(words, words[1:]))
    total = sum(c for w, c in uni.items() if w != "<s>")
    vocab = sorted(uni) + ["<unk>"]
    follow: Counter[str] = Counter(a for a, _ in bi)
    d = 0.5
    lines = ["\\data\\", f"ngram 1={len(vocab)}", f"ngram 2={len(bi)}", "", "\\1-grams:"]
    for w in vocab:
        p = -99.0 if w == "<s>" else math.log10(max(uni.get(w, 0), 0.5) / total)
        bow = math.log10(d * follow[w] / uni[w]) if follow[w] else 0.0
        lines.append(f"{p:.6f}\t{w}\t{bow:.6f}")
    lines += ["", "\\2-grams:"]
    for (a, b), c in sorted(bi.items()):
        lines.append(f"{math.log10((c - d) / uni[a]):.6f}\t{a} {b}")
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines))


def make_lm(texts: list[str], tmp: Path) -> tuple[Path, str]:
    try:
        from asr.decode.lm import LMError, build_lm

        built = build_lm(texts, 3, tmp / "lm.arpa")
        return built.path, f"3-gram, asr.decode.lm.build_lm (lmplz), {built.vocabulary} words"
    except (ImportError, LMError) as e:
        path = tmp / "bigram.arpa"
        write_bigram_arpa(texts, path)
        why = str(e).split(";")[0]
        return path, f"2-gram written by this script ({why})"


def peaky_emissions(lengths: list[int], vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """Log-probs shaped like a trained CTC model's: mostly blank, a token spike every few
    frames, Gaussian noise on the logits so that beams have real alternatives."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in lengths:
        logits = torch.randn(t, vocab, generator=g) * 1.5
        logits[:, 0] += 6.0
        spikes = torch.arange(2, t, 4)
        logits[spikes, torch.randint(1, vocab, (len(spikes),), generator=g)] += 9.0
        out.append(logits.log_softmax(-1))
    return out


def timed(fn, repeats: int = 1):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def compare_decoders(ems: list[torch.Tensor], tokenizer: CharTokenizer, beam: int) -> tuple[float, float, float]:
    """(flashlight s/utt, pyctcdecode s/utt, fraction of identical texts)."""
    from pyctcdecode import build_ctcdecoder

    labels = ["" if t == "<blank>" else " " if t == tokenizer.word_delimiter else t for t in tokenizer.tokens]
    # pyctcdecode logs a warning about the blank/space labels it infers; it is expected here.
    import logging

    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    py = build_ctcdecoder(labels)
    fl = BeamSearchDecoder(tokenizer, beam_size=beam)
    t_fl, fl_text = timed(lambda: [fl(e[None], torch.tensor([e.shape[0]]))[0][0].text for e in ems])
    t_py, py_text = timed(lambda: [" ".join(py.decode(e.numpy(), beam_width=beam).split()) for e in ems])
    agree = sum(a == b for a, b in zip(fl_text, py_text)) / len(ems)
    return t_fl / len(ems), t_py / len(ems), agree


MEMORY_CHILD = r"""
import resource, sys, torch
import asr
torch.set_num_threads(int(sys.argv[4]))
(r,) = asr.transcribe(sys.argv[1], [sys.argv[2]], chunk_seconds=float(sys.argv[3]))
assert r.ok, r.error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory_rows(tmp: Path, threads: int) -> list[tuple[str, str]]:
    import soundfile as sf

    cfg = ExperimentConfig(model=ModelConfig(hidden=64, num_layers=2))
    tok = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")
    torch.manual_seed(0)
    model = AcousticModel(cfg.model, cfg.features.n_mels, tok.vocab_size)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": to_dict(cfg), "tokenizer": tok.to_dict()}}, tmp / "small.ckpt")
    pkg = export([tmp / "small.ckpt"], tmp / "small.asr")
    rng = np.random.default_rng(0)
    peaks = {}
    # Both lengths exceed one batch of windows (300 s of audio), so a windowed run's peak
    # should not grow from the shorter file to the longer one.
    for minutes in (10, 30):
        path = tmp / f"{minutes}min.wav"
        with sf.SoundFile(path, "w", 16000, 1, "PCM_16") as f:
            for _ in range(minutes * 6):  # 10-s blocks: the writer's memory stays small too
                f.write((0.1 * rng.standard_normal(160000)).astype(np.float32))
        for chunk in (30.0, 1e9):
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(pkg), str(path), str(chunk), str(threads)],
                                 capture_output=True, text=True, check=True)
            peaks[(minutes, chunk)] = int(out.stdout.split()[-1]) / 1024  # KiB -> MiB
    return [
        ("peak RSS, windowed (30 s windows)", f"10 min: {peaks[(10, 30.0)]:.0f} MiB, 30 min: {peaks[(30, 30.0)]:.0f} MiB"),
        ("peak RSS, whole file at once", f"10 min: {peaks[(10, 1e9)]:.0f} MiB, 30 min: {peaks[(30, 1e9)]:.0f} MiB"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0, help="audio to transcribe")
    ap.add_argument("--beam", type=int, default=DecodingOptions.beam_size, help="beam width for every beam search row")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the long-file memory rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    waves, _, all_texts, source = load_corpus(args.seconds)
    audio = sum(w.numel() for w in waves) / 16000
    chars = sorted({c for t in all_texts for c in t} - {" "})
    tok = CharTokenizer(chars)
    cfg = ExperimentConfig(model=ModelConfig())
    rows: list[tuple[str, str]] = [
        ("audio", f"{audio:.1f} s, {source}"),
        ("model", f"ModelConfig() defaults, vocabulary {tok.vocab_size}, random weights, "
                  f"{args.threads} threads, torch {torch.__version__}"),
    ]
    with tempfile.TemporaryDirectory(prefix="bench-rtf-") as tmp_name:
        tmp = Path(tmp_name)
        torch.manual_seed(0)
        model = AcousticModel(cfg.model, cfg.features.n_mels, tok.vocab_size)
        rows.append(("parameters", f"{model.num_parameters() / 1e6:.2f} M"))
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                    "hyper_parameters": {"config": to_dict(cfg), "tokenizer": tok.to_dict()}}, tmp / "m.ckpt")
        path = export([tmp / "m.ckpt"], tmp / "m.asr")
        fp32 = load_package(path, quantize=False)
        int8 = load_package(path, quantize=True)

        def greedy(pkg):
            ems = emissions(pkg, waves, num_threads=args.threads)
            return ems, [greedy_decode(e[None], torch.tensor([e.shape[0]]), tok)[0].text for e in ems]

        t32, (ems, _) = timed(lambda: greedy(fp32), args.repeats)
        t8, (ems8, _) = timed(lambda: greedy(int8), args.repeats)
        # Random weights give near-uniform outputs where any rounding flips the argmax, so
        # agreement is shown per frame (a trained model's margins are far larger; see
        # tests/test_checkpoint.py for text equality on a briefly trained model).
        frames = sum(e.shape[0] for e in ems)
        agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ems, ems8)) / frames
        rows.append(("greedy fp32 RTF", f"{t32 / audio:.4f} ({t32:.2f} s)"))
        rows.append(("greedy int8 RTF", f"{t8 / audio:.4f} ({t8:.2f} s), {t32 / t8:.2f}x fp32 speed; "
                                        f"frame argmax = fp32 on {100 * agree:.1f}% of frames (random weights)"))

        n = len(ems)
        beam = BeamSearchDecoder(tok, beam_size=args.beam)
        t_beam, _ = timed(lambda: [beam(e[None], torch.tensor([e.shape[0]])) for e in ems])
        rows.append((f"beam {args.beam}, no LM", f"{1000 * t_beam / n:.1f} ms/utt (RTF {t_beam / audio:.4f})"))
        lm_path, lm_desc = make_lm(all_texts, tmp)
        beam_lm = BeamSearchDecoder(tok, beam_size=args.beam, lm=lm_path, lm_weight=0.5)
        t_lm, _ = timed(lambda: [beam_lm(e[None], torch.tensor([e.shape[0]])) for e in ems])
        rows.append((f"beam {args.beam}, word LM + lexicon",
                     f"{1000 * t_lm / n:.1f} ms/utt (RTF {t_lm / audio:.4f}); LM: {lm_desc}, "
                     f"{beam_lm.settings()['mode']}"))

        for name, em_set in (("random-model emissions", ems),
                             ("peaky synthetic emissions", peaky_emissions([e.shape[0] for e in ems], tok.vocab_size))):
            fl, py, agree = compare_decoders(em_set, tok, args.beam)
            rows.append((f"flashlight vs pyctcdecode, {name}",
                         f"{1000 * fl:.1f} vs {1000 * py:.1f} ms/utt (pyctcdecode {py / fl:.1f}x slower), "
                         f"same text {100 * agree:.0f}%"))
        if not args.no_memory:
            rows += memory_rows(tmp, args.threads)

    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


if __name__ == "__main__":
    main()
