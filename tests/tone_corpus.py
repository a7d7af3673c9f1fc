"""A tiny two-word corpus of tones for training tests (shared by tests/ and tests/faults/)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf

from asr.data.manifest import Utterance, write_manifest


def make_corpus(root: Path, n: int = 16, repeats: int = 1) -> tuple[Path, Path]:
    """Tones: 'lo' is a 300 Hz tone, 'hi' a 1200 Hz tone; each file says two words.
    ``repeats`` lists each file that many times (under different ids) in train.jsonl."""
    rng = np.random.default_rng(0)
    sr = 16000
    words = {"lo": 300.0, "hi": 1200.0}
    utts = []
    for i in range(n):
        seq = [("lo", "hi")[(i >> b) & 1] for b in range(2)]
        t = np.arange(int(0.4 * sr)) / sr
        parts = [np.zeros(int(0.1 * sr))]
        for w in seq:
            parts += [0.5 * np.sin(2 * np.pi * words[w] * t), np.zeros(int(0.1 * sr))]
        wave = np.concatenate(parts) + 0.01 * rng.standard_normal(sum(len(p) for p in parts))
        path = root / f"utt{i}.wav"
        sf.write(path, wave.astype("float32"), sr)
        utts.append(Utterance(f"utt{i}", str(path), len(wave) / sr, " ".join(seq), f"spk{i % 2}", sr))
    train = [replace(u, id=f"{u.id}-{r}") if r else u for r in range(repeats) for u in utts]
    write_manifest(root / "train.jsonl", train)
    write_manifest(root / "dev.jsonl", utts[:4])
    return root / "train.jsonl", root / "dev.jsonl"
