"""Training dataset: manifest utterances -> (log-mel features, token ids), and the collate.

Utterances that cannot be trained on are removed *before* training, counted and reported
(:class:`Skipped`), never silently: too long for ``max_duration``, or infeasible for CTC
(fewer output frames, after the model's subsampling, than the transcript needs: one per
token plus one blank between each repeated pair).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torchaudio
from torch import Tensor
from torch.utils.data import Dataset

from asr.audio import load_audio
from asr.data.manifest import Utterance
from asr.features import FeatureConfig, LogMel, num_frames
from asr.text import Tokenizer


class Batch(NamedTuple):
    feats: Tensor  # (N, T, F) float, zero past feat_lens
    feat_lens: Tensor  # (N,) long
    targets: Tensor  # (N, L) long, padded with 0
    target_lens: Tensor  # (N,) long
    ids: list[str]


def ctc_min_frames(ids: Sequence[int]) -> int:
    """Fewest CTC output frames that can emit ``ids``: one per token, one blank between repeats."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


@dataclass
class Skipped:
    """Utterances excluded from a dataset, with reasons, for reporting."""

    items: list[tuple[str, str]] = field(default_factory=list)  # (utterance id, reason)

    def add(self, utt_id: str, reason: str) -> None:
        self.items.append((utt_id, reason))

    def summary(self) -> str:
        kinds = Counter(r.split(":")[0] for _, r in self.items)
        return ", ".join(f"{n} {k}" for k, n in kinds.most_common()) or "none"

    def __len__(self) -> int:
        return len(self.items)


def filter_utterances(
    utts: Sequence[Utterance],
    tokenizer: Tokenizer,
    feature_cfg: FeatureConfig,
    out_lengths: Callable[[Tensor], Tensor],
    max_duration: float = float("inf"),
) -> tuple[list[Utterance], list[list[int]], Skipped]:
    """Keep the utterances a CTC model with output lengths ``out_lengths(frames)`` can learn."""
    keep, targets, skipped = [], [], Skipped()
    for u in utts:
        if u.duration > max_duration:
            skipped.add(u.id, f"too long: {u.duration:.2f} s > max_duration {max_duration} s")
            continue
        try:
            ids = tokenizer.encode(u.text)
        except ValueError as e:
            skipped.add(u.id, f"untokenizable: {e}")
            continue
        if not ids:
            skipped.add(u.id, "empty transcript")
            continue
        frames = int(num_frames(int(round(u.duration * feature_cfg.sample_rate)), feature_cfg))
        out = int(out_lengths(torch.tensor([frames]))[0])
        need = ctc_min_frames(ids)
        if out < need:
            skipped.add(u.id, f"ctc-infeasible: {out} output frames < {need} needed for {len(ids)} tokens")
            continue
        keep.append(u)
        targets.append(ids)
    return keep, targets, skipped


class FeatureDataset(Dataset):
    """Item ``i`` -> (id, features (T, F), target ids (L,)). Features optionally cached."""

    def __init__(
        self,
        utts: Sequence[Utterance],
        targets: Sequence[Sequence[int]],
        feature_cfg: FeatureConfig,
        cache: bool = True,
        speed_perturb: Sequence[float] = (),
        seed: int = 0,
    ) -> None:
        assert len(utts) == len(targets)
        self.utts = list(utts)
        self.targets = [torch.tensor(t, dtype=torch.long) for t in targets]
        self.feature_cfg = feature_cfg
        self.logmel = LogMel(feature_cfg)
        self.cache: dict[int, Tensor] | None = {} if cache else None
        self.speed_perturb = tuple(speed_perturb)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self.utts]

    def features(self, i: int) -> Tensor:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        u = self.utts[i]
        duration = u.duration if u.offset else None
        wave = load_audio(u.audio, self.feature_cfg.sample_rate, offset=u.offset, duration=duration)
        if self.speed_perturb:
            factor = self.rng.choice(self.speed_perturb)
            if factor != 1.0:
                # Speed perturbation as resampling (Ko et al. 2015): tempo and pitch change together.
                sr = self.feature_cfg.sample_rate
                wave = torchaudio.functional.resample(wave, int(sr * factor), sr)
        with torch.no_grad():
            feats = self.logmel.single(wave)
        if self.cache is not None:
            self.cache[i] = feats
        return feats

    def __getitem__(self, i: int) -> tuple[str, Tensor, Tensor]:
        return self.utts[i].id, self.features(i), self.targets[i]


def collate(items: Sequence[tuple[str, Tensor, Tensor]]) -> Batch:
    ids = [it[0] for it in items]
    feat_lens = torch.tensor([it[1].shape[0] for it in items], dtype=torch.long)
    target_lens = torch.tensor([it[2].shape[0] for it in items], dtype=torch.long)
    feats = torch.zeros(len(items), int(feat_lens.max()), items[0][1].shape[1])
    targets = torch.zeros(len(items), int(target_lens.max()), dtype=torch.long)
    for i, (_, f, t) in enumerate(items):
        feats[i, : f.shape[0]] = f
        targets[i, : t.shape[0]] = t
    return Batch(feats, feat_lens, targets, target_lens, ids)
