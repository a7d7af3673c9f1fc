"""Training dataset: manifest utterances -> (log-mel features, token ids), and the collate.

Utterances that cannot be trained on are removed *before* training, counted and reported
(:class:`Skipped`), never silently: too long for ``max_duration``, or infeasible for CTC
(fewer output frames, after the model's subsampling, than the transcript needs: one per
token plus one blank between each repeated pair). With the feature cache on (the default),
utterances whose audio turns out to be unreadable when their features are computed are
removed too and reported the same way (see :func:`fill_cache`). Without the cache (or when a
file goes bad during training) the dataset returns an :class:`Unreadable` marker instead of
raising, :func:`collate` drops it and lists it in :attr:`Batch.skipped`, and the trainer
counts it: one bad file never ends a run. Audio whose features are not finite (e.g. float
samples of absurd magnitude) counts as unreadable: it would make the loss, and the CMVN
statistics, NaN.

With ``waveforms=True`` (``data.features_on_device``) the dataset stops after decoding,
resampling and speed perturbation: :func:`collate_waves` pads waveforms into a
:class:`WaveBatch`, and :func:`wave_batch_features` turns that into the same :class:`Batch`
on the accelerator (log-mels are padding-invariant, so the features are those of the
per-item path). A DataLoader worker then does a fraction of the work per audio second.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torchaudio
from torch import Tensor
from torch.utils.data import Dataset

from asr.audio import AudioError, load_audio
from asr.data.lexicon import Coverage, PhoneMap
from asr.data.manifest import Utterance, duration_mismatch
from asr.features import FeatureConfig, LogMel, num_frames
from asr.text import Tokenizer


class Batch(NamedTuple):
    feats: Tensor  # (N, T, F) float, zero past feat_lens
    feat_lens: Tensor  # (N,) long
    targets: Tensor  # (N, L) long, padded with 0
    target_lens: Tensor  # (N,) long
    ids: list[str]
    # (id, reason) of items dropped because their audio could not be read. Collected here
    # (in the DataLoader worker) so the main process can count them with num_workers > 0.
    skipped: tuple[tuple[str, str], ...] = ()
    # Phone CTC targets (model.phone_ctc_weight > 0 only; None otherwise): (N, P) long padded
    # with 0, and (N,) lengths, 0 for an utterance without phone targets (masked out of the loss).
    phones: Tensor | None = None
    phone_lens: Tensor | None = None


class WaveBatch(NamedTuple):
    """Padded waveforms for features computed after the batch reaches the device."""

    waves: Tensor  # (N, S) float, zero past wave_lens
    wave_lens: Tensor  # (N,) long, samples
    targets: Tensor  # (N, L) long, padded with 0
    target_lens: Tensor  # (N,) long
    ids: list[str]
    skipped: tuple[tuple[str, str], ...] = ()
    phones: Tensor | None = None  # as in Batch
    phone_lens: Tensor | None = None


class Unreadable(NamedTuple):
    """What :class:`FeatureDataset` returns for an item whose audio cannot be read."""

    id: str
    reason: str  # "unreadable: <file>: <problem>"


def ctc_min_frames(ids: Sequence[object]) -> int:
    """Fewest CTC output frames that can emit ``ids``: one per token, one blank between repeats."""
    return len(ids) + sum(1 for a, b in zip(ids, ids[1:]) if a == b)


def utterance_frames(duration: float, feature_cfg: FeatureConfig, speed: float = 1.0) -> int:
    """Feature frames of ``duration`` seconds of audio played at ``speed`` (1.1 = 10 % faster).

    The seconds -> samples -> :func:`asr.features.num_frames` conversion that ``asr prepare``
    and training both use, so that the two CTC feasibility checks cannot disagree. Rounding
    (not truncating) recovers a 16 kHz file's exact sample count from its manifest duration
    (6 decimals); for other rates and speeds it is at most the resampled length.
    """
    return int(num_frames(round(duration / speed * feature_cfg.sample_rate), feature_cfg))


def output_frames(
    durations: Sequence[float],
    feature_cfg: FeatureConfig,
    out_lengths: Callable[[Tensor], Tensor] | None = None,
    speed: float = 1.0,
) -> list[int]:
    """CTC output frames of utterances of ``durations`` seconds: :func:`utterance_frames`
    through the model's ``out_lengths`` (None: no subsampling, the bound any model meets)."""
    frames = [utterance_frames(d, feature_cfg, speed) for d in durations]
    if out_lengths is None or not frames:
        return frames
    # One call for every utterance: per-utterance tensor ops cost ~30 us each, minutes at
    # LibriSpeech scale.
    return out_lengths(torch.tensor(frames, dtype=torch.long)).tolist()


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
    max_speed: float = 1.0,
) -> tuple[list[Utterance], list[list[int]], Skipped]:
    """Keep the utterances a CTC model with output lengths ``out_lengths(frames)`` can learn,
    also when sped up by ``max_speed`` (the fastest speed-perturbation factor)."""
    outs = output_frames([u.duration for u in utts], feature_cfg, out_lengths, speed=max_speed)
    keep, targets, skipped = [], [], Skipped()
    for u, out in zip(utts, outs, strict=True):
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
        need = ctc_min_frames(ids)
        if out < need:
            skipped.add(u.id, f"ctc-infeasible: {out} output frames < {need} needed for {len(ids)} tokens")
            continue
        keep.append(u)
        targets.append(ids)
    return keep, targets, skipped


def phone_targets(
    utts: Sequence[Utterance],
    phone_map: PhoneMap,
    feature_cfg: FeatureConfig,
    out_lengths: Callable[[Tensor], Tensor],
    max_speed: float = 1.0,
) -> tuple[list[list[int]], Coverage, int]:
    """Phone ids of each utterance (``[]``: none, masked out of the phone loss), the
    coverage, and how many covered utterances are too short for CTC to emit their phones
    (also ``[]``: ``zero_infinity`` would train them on a zero loss, diluting the mean)."""
    outs = output_frames([u.duration for u in utts], feature_cfg, out_lengths, speed=max_speed)
    cov = phone_map.coverage([u.text for u in utts])
    seqs, short = [], 0
    for u, out in zip(utts, outs, strict=True):
        ids = phone_map.encode(u.text) or []
        if ids and out < ctc_min_frames(ids):
            ids, short = [], short + 1
        seqs.append(ids)
    return seqs, cov, short


class Ragged:
    """Token-id sequences in one flat array plus offsets; item ``i`` is a (L,) long tensor.

    A list of 281 k small tensors (LibriSpeech 960 h) costs ~0.7 GB and half a minute to
    build; this costs the ids themselves (int16 when they fit) and a second. One array,
    not 281 k objects, also means DataLoader workers do not copy it page by page as
    reference counts are touched.
    """

    def __init__(self, seqs: Sequence[Sequence[int]]) -> None:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        self.offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(self.offsets[-1]))
        top = int(flat.max()) if len(flat) else 0
        self.flat = flat.astype(np.int16 if top < 2**15 else np.int32 if top < 2**31 else np.int64)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Tensor:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return torch.from_numpy(self.flat[self.offsets[i]:self.offsets[i + 1]].astype(np.int64))

    def select(self, keep: Sequence[int]) -> Ragged:
        """The sequences at ``keep`` (in that order)."""
        out = Ragged.__new__(Ragged)
        rows = np.asarray(keep, dtype=np.int64)
        lengths = self.offsets[rows + 1] - self.offsets[rows]
        out.offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out.offsets[1:])
        parts = [self.flat[self.offsets[i]:self.offsets[i + 1]] for i in rows.tolist()]
        out.flat = np.concatenate(parts) if parts else self.flat[:0]
        return out


class FeatureDataset(Dataset):
    """Item ``i`` -> (id, features (T, F), target ids (L,)). Features optionally cached.

    With ``speed_perturb`` factors (e.g. 0.9, 1.0, 1.1), each access picks one factor at
    random and uses the utterance's features at that speed (Ko et al. 2015: resampling, so
    tempo and pitch change together). With the cache on, each (utterance, factor) version
    is computed once, the "offline" perturbation Kaldi recipes use: epochs stay as fast as
    without perturbation, at the cost of one feature copy per factor in memory.
    """

    def __init__(
        self,
        utts: Sequence[Utterance],
        targets: Sequence[Sequence[int]],
        feature_cfg: FeatureConfig,
        cache: bool = True,
        speed_perturb: Sequence[float] = (),
        waveforms: bool = False,
        phones: Sequence[Sequence[int]] | None = None,
    ) -> None:
        assert len(utts) == len(targets)
        assert phones is None or len(phones) == len(utts)
        assert not (cache and waveforms), "waveform items are for the cache-less path"
        self.utts = list(utts)
        self.targets = Ragged(targets)
        # Phone CTC targets (empty = none), items then carry them as a 4th element; the same
        # for every speed-perturbed version of an utterance.
        self.phones = Ragged(phones) if phones is not None else None
        self.feature_cfg = feature_cfg
        self.logmel = LogMel(feature_cfg)
        self.cache: dict[tuple[int, float], Tensor] | None = {} if cache else None
        self.factors = tuple(float(f) for f in speed_perturb) or (1.0,)
        self.waveforms = waveforms  # items carry waveforms, not features (see WaveBatch)

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def durations(self) -> list[float]:
        return [u.duration for u in self.utts]

    def versions(self) -> list[tuple[int, float]]:
        """Every (utterance index, speed factor) this dataset can serve."""
        return [(i, f) for i in range(len(self.utts)) for f in self.factors]

    def waveform(self, i: int, factor: float = 1.0) -> Tensor:
        """Samples (S,) of utterance ``i`` at the feature rate, at speed ``factor``."""
        u = self.utts[i]
        duration = u.duration if u.offset else None
        wave = load_audio(u.audio, self.feature_cfg.sample_rate, offset=u.offset, duration=duration)
        if not u.offset and duration_mismatch(u.duration, len(wave) / self.feature_cfg.sample_rate):
            # Bucketing, max_duration and the CTC feasibility filter all trusted the manifest's
            # duration: a file of another length is a stale manifest, not something to train on.
            raise AudioError(u.audio, f"manifest says {u.duration:.3f} s but the file holds "
                                      f"{len(wave) / self.feature_cfg.sample_rate:.3f} s (stale manifest: "
                                      "re-run asr prepare)")
        if factor != 1.0:
            sr = self.feature_cfg.sample_rate
            wave = torchaudio.functional.resample(wave, int(round(sr * factor)), sr)
        return wave

    def compute(self, i: int, factor: float = 1.0) -> Tensor:
        """Features (T, F) of utterance ``i`` at speed ``factor``, computed (never cached)."""
        wave = self.waveform(i, factor)
        with torch.no_grad():
            feats = self.logmel.single(wave)
        if not torch.isfinite(feats).all():
            u = self.utts[i]
            raise AudioError(u.audio, "features are not finite (sample values of absurd magnitude?)")
        return feats

    def features(self, i: int, factor: float | None = None) -> Tensor:
        if factor is None:
            factor = self._random_factor()
        key = (i, factor)
        if self.cache is not None and key in self.cache:
            return self.cache[key]
        feats = self.compute(i, factor)
        if self.cache is not None:
            self.cache[key] = feats
        return feats

    def _random_factor(self) -> float:
        # torch's generator: seeded by Lightning, and differently in each DataLoader worker.
        return self.factors[int(torch.randint(len(self.factors), ()))]

    def __getitem__(self, i: int) -> tuple[str, Tensor, Tensor] | tuple[str, Tensor, Tensor, Tensor] | Unreadable:
        try:
            x = self.waveform(i, self._random_factor()) if self.waveforms else self.features(i)
        except AudioError as e:  # a file unreadable since (or not checked before) training began
            return Unreadable(self.utts[i].id, f"unreadable: {e}")
        if self.phones is not None:
            return self.utts[i].id, x, self.targets[i], self.phones[i]
        return self.utts[i].id, x, self.targets[i]

    def remove(self, indices: Iterable[int]) -> None:
        """Drop utterances ``indices`` (and their cached features); the others keep their data."""
        gone = set(indices)
        new_index: dict[int, int] = {}
        for i in range(len(self.utts)):
            if i not in gone:
                new_index[i] = len(new_index)
        self.utts = [u for i, u in enumerate(self.utts) if i not in gone]
        self.targets = self.targets.select([i for i in range(len(self.targets)) if i not in gone])
        if self.phones is not None:
            self.phones = self.phones.select([i for i in range(len(self.phones)) if i not in gone])
        if self.cache is not None:
            self.cache = {(new_index[i], f): v for (i, f), v in self.cache.items() if i in new_index}


class _Versions(Dataset):
    """(utterance, factor) pairs of a FeatureDataset, for filling its cache in workers.

    An unreadable file gives its AudioError's message instead of features, so that one bad
    file does not end the pass (an exception would stop the DataLoader)."""

    def __init__(self, ds: FeatureDataset) -> None:
        self.ds = ds
        self.keys = ds.versions()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, k: int) -> tuple[tuple[int, float], Tensor | str]:
        try:
            return self.keys[k], self.ds.compute(*self.keys[k])
        except AudioError as e:
            return self.keys[k], str(e)


def fill_cache(ds: FeatureDataset, num_workers: int = 0, progress=lambda it, total: it) -> Skipped:
    """Compute every version of every utterance into ``ds.cache`` (workers compute, we store).

    Utterances whose audio cannot be read are removed from ``ds`` and returned (reason
    ``unreadable: <file>: <problem>``), so that the caller reports them with the other skipped
    utterances; training goes on without them.
    """
    assert ds.cache is not None, "fill_cache needs a dataset with cache=True"
    versions = _Versions(ds)
    loader = torch.utils.data.DataLoader(versions, batch_size=None, num_workers=num_workers)
    failed: dict[int, str] = {}
    for key, feats in progress(loader, len(versions)):
        i, factor = int(key[0]), float(key[1])
        if isinstance(feats, str):
            failed.setdefault(i, feats)
        else:
            ds.cache[(i, factor)] = feats
    skipped = Skipped()
    for i in sorted(failed):
        skipped.add(ds.utts[i].id, f"unreadable: {failed[i]}")
    ds.remove(failed)
    return skipped


Item = tuple[str, Tensor, Tensor] | tuple[str, Tensor, Tensor, Tensor]


def pad(seqs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Sequences (L_i, ...) -> zero-padded (N, max L, ...) and lengths (N,) long."""
    lens = torch.tensor([x.shape[0] for x in seqs], dtype=torch.long)
    out = seqs[0].new_zeros((len(seqs), int(lens.max()), *seqs[0].shape[1:]))
    for i, x in enumerate(seqs):
        out[i, : x.shape[0]] = x
    return out, lens


def _phones(items: Sequence[Item]) -> tuple[Tensor | None, Tensor | None]:
    """Padded phone targets of items that carry them (4-tuples), else (None, None)."""
    if len(items[0]) < 4:
        return None, None
    phones = [it[3] for it in items if len(it) == 4]
    if len(phones) != len(items):  # one dataset never mixes them: targets would misalign
        raise ValueError("a batch mixes items with and without phone targets")
    return pad(phones)


def collate(items: Sequence[Item | Unreadable]) -> Batch:
    """Pad items into a :class:`Batch`; :class:`Unreadable` items are left out and listed in
    ``Batch.skipped``. A batch with no readable item has ``ids == []`` (callers skip it)."""
    skipped = tuple((it.id, it.reason) for it in items if isinstance(it, Unreadable))
    good = [it for it in items if not isinstance(it, Unreadable)]
    if not good:
        empty = torch.zeros(0, dtype=torch.long)
        return Batch(torch.zeros(0, 0, 0), empty, torch.zeros(0, 0, dtype=torch.long), empty, [], skipped)
    feats, feat_lens = pad([it[1] for it in good])
    targets, target_lens = pad([it[2] for it in good])
    return Batch(feats, feat_lens, targets, target_lens, [it[0] for it in good], skipped, *_phones(good))


def collate_waves(items: Sequence[Item | Unreadable]) -> WaveBatch:
    """:func:`collate` for waveform items (``FeatureDataset(waveforms=True)``): a :class:`WaveBatch`."""
    skipped = tuple((it.id, it.reason) for it in items if isinstance(it, Unreadable))
    good = [it for it in items if not isinstance(it, Unreadable)]
    if not good:
        empty = torch.zeros(0, dtype=torch.long)
        return WaveBatch(torch.zeros(0, 0), empty, torch.zeros(0, 0, dtype=torch.long), empty, [], skipped)
    waves, wave_lens = pad([it[1] for it in good])
    targets, target_lens = pad([it[2] for it in good])
    return WaveBatch(waves, wave_lens, targets, target_lens, [it[0] for it in good], skipped, *_phones(good))


@torch.no_grad()
def wave_batch_features(batch: WaveBatch, logmel: LogMel) -> Batch:
    """Log-mels of a :class:`WaveBatch` (on whatever device it is): the :class:`Batch` that
    :func:`collate` would have made from per-item features, lengths from
    :func:`asr.features.num_frames`. An utterance whose features are not finite is dropped
    into ``Batch.skipped`` as unreadable, as the per-item path does."""
    if not batch.ids:
        empty = batch.wave_lens
        return Batch(batch.waves.new_zeros(0, 0, logmel.cfg.n_mels), empty, batch.targets, batch.target_lens,
                     [], batch.skipped, batch.phones, batch.phone_lens)
    feats, feat_lens = logmel(batch.waves, batch.wave_lens)
    # Trim to the longest utterance's frames: what collate pads to (the padded tail of the
    # waveform batch can add a frame that no utterance has).
    feats = feats[:, : int(feat_lens.max())]
    finite = torch.isfinite(feats).flatten(1).all(1).tolist()
    if all(finite):
        return Batch(feats, feat_lens, batch.targets, batch.target_lens, list(batch.ids), batch.skipped,
                     batch.phones, batch.phone_lens)
    keep = torch.tensor([i for i, ok in enumerate(finite) if ok], dtype=torch.long, device=feats.device)
    bad = tuple((uid, "unreadable: features are not finite (sample values of absurd magnitude?)")
                for uid, ok in zip(batch.ids, finite) if not ok)
    ids = [uid for uid, ok in zip(batch.ids, finite) if ok]
    if not ids:
        empty = torch.zeros(0, dtype=torch.long, device=feats.device)
        return Batch(feats[:0, :0], empty, batch.targets[:0, :0], empty, [], batch.skipped + bad)
    feat_lens, target_lens = feat_lens[keep], batch.target_lens[keep]
    feats = feats[keep][:, : int(feat_lens.max())]
    targets = batch.targets[keep][:, : int(target_lens.max())]
    phones = phone_lens = None
    if batch.phones is not None and batch.phone_lens is not None:
        phone_lens = batch.phone_lens[keep]
        phones = batch.phones[keep][:, : int(phone_lens.max())]
    return Batch(feats, feat_lens, targets, target_lens, ids, batch.skipped + bad, phones, phone_lens)
