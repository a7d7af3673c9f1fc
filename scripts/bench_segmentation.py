#!/usr/bin/env python
"""Long-file segmentation, pauses vs fixed windows: WER and words cut at window boundaries.

    python scripts/bench_segmentation.py MODEL MANIFEST [--n 30] [--chunk 4] [--overlap 1] [--work DIR]

Concatenates ``--n`` utterances of MANIFEST (random, fixed seed) with 0.3-0.8 s of faint noise
between them into one recording, transcribes it with ``asr.infer.transcription.transcribe`` once
per ``--segment`` method, and scores the transcript against the concatenated references
(one long utterance: a word lost or doubled at a seam shows up as a deletion or insertion).
"Utterances cut" counts source utterances whose span contains a window boundary (the end of
a window's owned region), from the same planning functions transcription uses.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.audio import load_audio
from asr.data.manifest import read_manifest
from asr.infer.transcription import transcribe
from asr.infer.windows import find_pauses, plan_pause_windows, plan_windows
from asr.metrics import score_corpus
from asr.package import load_package
from asr.text import normalize_text

SR = 16000


def build(manifest: str, n: int, seed: int, out: Path) -> tuple[str, list[tuple[float, float]], float]:
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)
    utts = rng.sample(read_manifest(manifest), n)
    parts, spans, t = [], [], 0.0
    for u in utts:
        gap = rng.uniform(0.3, 0.8)
        parts.append((1e-3 * noise.standard_normal(round(gap * SR))).astype(np.float32))
        t += gap
        w = load_audio(u.audio, SR).numpy()
        parts.append(w)
        spans.append((t, t + len(w) / SR))
        t += len(w) / SR
    parts.append((1e-3 * noise.standard_normal(round(0.5 * SR))).astype(np.float32))
    audio = np.concatenate(parts)
    sf.write(out, audio, SR)
    return " ".join(normalize_text(u.text) for u in utts), spans, len(audio) / SR


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("manifest")
    p.add_argument("--n", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=float, default=4.0)
    p.add_argument("--overlap", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=Path("/tmp"))
    a = p.parse_args()
    path = a.work / f"long_{Path(a.manifest).parent.name}_{a.n}_{a.seed}.wav"
    ref, spans, duration = build(a.manifest, a.n, a.seed, path)
    package = load_package(a.model)
    print(f"{path}: {a.n} utterances, {duration:.1f} s, {len(ref.split())} words; chunk {a.chunk} s, "
          f"overlap {a.overlap} s")
    for method in ("fixed", "pauses"):
        if method == "fixed":
            windows, how = plan_windows(duration, a.chunk, a.overlap), "fixed"
        else:
            windows, how = plan_pause_windows(duration, find_pauses(path, SR, duration), a.chunk, a.overlap)
        cuts = [w[3] for w in windows[:-1]]
        cut = sum(1 for s, e in spans if any(s < c < e for c in cuts))
        (r,) = transcribe(package, path, segment=method, chunk_seconds=a.chunk, overlap_seconds=a.overlap)
        assert r.segmentation == how, (r.segmentation, how)
        score = score_corpus([ref], [normalize_text(r.text)])
        w = score.words
        print(f"{method:>6} ({how}): {len(windows)} windows, WER {100 * score.wer:.2f}% "
              f"(sub {w.substitutions}, del {w.deletions}, ins {w.insertions}), "
              f"utterances cut by a boundary: {cut}/{len(spans)}")


if __name__ == "__main__":
    main()
