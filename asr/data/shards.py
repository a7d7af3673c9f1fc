"""Sharded corpora: WebDataset tar shards for training data that does not sit on a local disk.

``asr shard MANIFEST --out DIR`` packs a manifest's audio (the file's own bytes; a segment of a
longer file is cut out and stored as FLAC) and metadata into ``DIR/<prefix>-000000.tar``, ... of
about ``--shard-size`` bytes each, and writes ``DIR/index.json``: per shard its name, utterance
count, seconds, bytes, and the ids and durations of its utterances in order (no texts); the
writing is :mod:`asr.data.shard_writer`, this module reads.

Training reads the shards as a stream (``data.train_shards=DIR``, or a brace pattern or
``pipe:`` URL with the index beside it or in ``data.shards_index``). The index makes the epoch
exact without reading any audio:

* **Split.** The shards are dealt to the ``ranks x workers`` readers ("slots") once, balancing
  seconds (largest first onto the lightest slot), and each slot reads the same shards every
  epoch: only then is each rank's batch count known and the same every epoch. With fewer shards
  than slots every slot reads every shard and keeps every S-th utterance (by index position):
  correct but S times the reading, so write at least ``ranks x workers`` shards for real data.
* **Shuffle.** Each epoch a slot reads its shards in a new order through a shuffle buffer
  (``data.shard_shuffle_buffer`` utterances).
* **Bucketing.** Utterances go to one of ``data.num_buckets`` duration buckets whose edges are
  quantiles of the whole index's durations; a bucket emits a batch whenever it holds as many
  utterances as a batch of its longest may (``max_batch_seconds`` of padded audio, at most
  ``max_batch_size``), as :class:`asr.data.sampler.BucketBatchSampler` sizes them, and the
  partly filled buckets are emitted at the end of the epoch. The number of batches of a slot
  is therefore ``sum over buckets of ceil(n_b / capacity_b)`` whatever the order: computed from
  the index before training.
* **Equal steps.** Every rank runs the same number of batches (DDP's all-reduce needs it): the
  largest rank's planned count. A rank with fewer repeats its first batches to make up the
  difference (those utterances are seen twice that epoch, as the map-style sampler's padding
  does); nothing is ever truncated. Lightning gets this count as the epoch length, so
  validation and checkpoints run at each epoch end as usual.
* **Nothing silently dropped.** Utterances longer than ``data.max_duration`` are known from the
  index and reported before training. Items that cannot be used (unreadable audio, a stale
  duration, untokenizable or CTC-infeasible text, an utterance missing from a damaged shard)
  become :class:`~asr.data.dataset.Unreadable` markers with a reason that the collate lists in
  ``Batch.skipped`` and the trainer counts, like the map-style path's.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from asr.audio import MAX_SAMPLE_MAGNITUDE, AudioError, resample
from asr.data.dataset import Batch, Item, Unreadable, collate, filter_utterances, phone_targets
from asr.data.lexicon import PhoneMap
from asr.data.manifest import Utterance, duration_mismatch
from asr.data.sampler import per_batch
from asr.features import FeatureConfig, LogMel
from asr.text import Tokenizer

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_FORMAT = "asr-shards"
PAD_MEMORY = 8  # a slot keeps at most its first 8 batches for padding (cycled when more are needed)


class ShardError(ValueError):
    """A shard set or its index cannot be used; ``str(e)`` names the file or URL."""


# --- the shard set ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardInfo:
    url: str  # path or URL (pipe:..., http://...) WebDataset opens
    ids: tuple[str, ...]
    durations: tuple[float, ...]
    first: int  # index position (sample key) of the shard's first utterance

    @property
    def seconds(self) -> float:
        return float(sum(self.durations))


@dataclass(frozen=True)
class ShardSet:
    index_path: str
    shards: tuple[ShardInfo, ...]

    @property
    def utterances(self) -> int:
        return sum(len(s.ids) for s in self.shards)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.shards)

    def durations(self) -> list[float]:
        return [d for s in self.shards for d in s.durations]


def _url_name(url: str) -> str:
    """The shard file name a URL or ``pipe:`` command ends in (``pipe:curl -s http://h/a.tar`` -> a.tar)."""
    last = url.split()[-1] if url.split() else url
    return last.rstrip("/").rsplit("/", 1)[-1]


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{path}: shard index not found (write shards with `asr shard MANIFEST --out DIR`)") from None
    except (OSError, ValueError) as e:
        raise ShardError(f"{path}: unreadable shard index ({e})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT or not isinstance(index.get("shards"), list):
        raise ShardError(f"{path}: not a shard index written by `asr shard`")
    for i, s in enumerate(index["shards"]):
        ok = isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("ids"), list) \
            and isinstance(s.get("durations"), list) and len(s["ids"]) == len(s["durations"]) \
            and isinstance(s.get("first"), int)
        if not ok:
            raise ShardError(f"{path}: shard entry {i} is malformed (needs name, first, ids, durations)")
    return index


def open_shard_set(spec: str, index: str = "") -> ShardSet:
    """The shards ``spec`` names, with their index.

    ``spec`` is a folder holding ``index.json`` (every shard it lists), an ``index.json`` file,
    or a brace pattern / URL such as ``/data/train-{000000..000099}.tar`` or ``pipe:curl -s
    http://host/train-{000000..000099}.tar``; a pattern may name a subset of the indexed shards,
    matched by file name, and its index is ``index`` or else ``index.json`` beside a local
    pattern. Raises :class:`ShardError`.
    """
    local = Path(spec).expanduser()
    if not index and local.is_dir():
        index_path, urls = local / INDEX_NAME, None
    elif not index and spec.endswith(".json"):
        index_path, urls = local, None
    else:
        import braceexpand

        urls = list(braceexpand.braceexpand(spec))
        if index:
            index_path = Path(index).expanduser()
        elif ":" in spec.split("/")[0]:  # pipe:..., http://... : nowhere local to look
            raise ShardError(f"{spec}: a shard URL needs its index: set data.shards_index=PATH/index.json")
        else:
            index_path = local.parent / INDEX_NAME
    data = _read_index(index_path)
    base = index_path.resolve().parent
    entries = {s["name"]: s for s in data["shards"]}
    if urls is None:
        chosen = [(str(base / s["name"]), s) for s in data["shards"]]
    else:
        chosen = []
        for url in urls:
            s = entries.get(_url_name(url))
            if s is None:
                raise ShardError(f"{url}: shard not listed in {index_path}")
            chosen.append((url, s))
    shards = tuple(ShardInfo(url, tuple(s["ids"]), tuple(float(d) for d in s["durations"]), s["first"])
                   for url, s in chosen if s["ids"])
    if not shards:
        raise ShardError(f"{index_path}: no utterances in the shards named by {spec}")
    return ShardSet(str(index_path), shards)


# --- the plan: buckets, the split across slots, batch counts ---------------------------------------


@dataclass(frozen=True)
class Buckets:
    edges: tuple[float, ...]  # upper duration bound of each bucket, ascending
    capacity: tuple[int, ...]  # utterances per batch of each bucket

    @classmethod
    def plan(cls, durations: Sequence[float], num_buckets: int, max_batch_seconds: float,
             max_batch_size: int) -> Buckets:
        order = np.sort(np.asarray(durations, dtype=np.float64))
        groups = [g for g in np.array_split(order, min(max(1, num_buckets), max(1, len(order)))) if len(g)]
        edges = sorted({float(g.max()) for g in groups})
        return cls(tuple(edges), tuple(per_batch(e, max_batch_seconds, max_batch_size) for e in edges))

    def of(self, duration: float) -> int:
        """The bucket of an utterance (the first whose edge is >= its duration)."""
        return min(int(np.searchsorted(self.edges, duration, side="left")), len(self.edges) - 1)

    def count(self, durations: Iterable[float]) -> int:
        """Batches a stream of utterances of these durations makes, in any order."""
        n = [0] * len(self.edges)
        for d in durations:
            n[self.of(d)] += 1
        return sum(math.ceil(k / c) for k, c in zip(n, self.capacity))


def split_slots(shards: Sequence[ShardInfo], slots: int) -> tuple[list[list[int]], bool]:
    """Shard indices per slot, and whether utterances (not shards) are split.

    With at least as many shards as slots, each shard goes to one slot: largest first onto the
    slot with the fewest seconds so far. Otherwise every slot reads every shard and keeps the
    utterances at index positions ``p`` with ``p % slots == slot``.
    """
    if len(shards) < slots:
        return [list(range(len(shards))) for _ in range(slots)], True
    load = [0.0] * slots
    out: list[list[int]] = [[] for _ in range(slots)]
    for i in sorted(range(len(shards)), key=lambda i: (-shards[i].seconds, i)):
        s = min(range(slots), key=lambda s: (load[s], s))
        out[s].append(i)
        load[s] += shards[i].seconds
    return [sorted(o) for o in out], False


@dataclass
class EpochPlan:
    """Who reads what and how many batches each reader emits (the same every epoch)."""

    shard_set: ShardSet
    buckets: Buckets
    world: int
    workers: int  # DataLoader workers per rank (0 counts as 1: the main process reads)
    max_duration: float
    slot_shards: list[list[int]] = field(init=False)
    by_utterance: bool = field(init=False)
    planned: list[int] = field(init=False)  # natural batches per slot
    rank_batches: int = field(init=False)  # batches every rank runs per epoch

    def __post_init__(self) -> None:
        self.workers = max(1, self.workers)
        slots = self.world * self.workers
        self.slot_shards, self.by_utterance = split_slots(self.shard_set.shards, slots)
        self.planned = [self.buckets.count(d for _, d in self.members(s)) for s in range(slots)]
        per_rank = [sum(self.planned[r * self.workers:(r + 1) * self.workers]) for r in range(self.world)]
        self.rank_batches = max(max(per_rank), 1)

    @property
    def slots(self) -> int:
        return self.world * self.workers

    def members(self, slot: int) -> Iterator[tuple[str, float]]:
        """(id, duration) of every trainable utterance ``slot`` reads."""
        for i in self.slot_shards[slot]:
            sh = self.shard_set.shards[i]
            for p, (utt_id, d) in enumerate(zip(sh.ids, sh.durations)):
                if (not self.by_utterance or (sh.first + p) % self.slots == slot) and d <= self.max_duration:
                    yield utt_id, d

    def target(self, slot: int) -> int:
        """Batches ``slot`` emits: its own, plus its share of its rank's padding (spread over
        the rank's slots that have batches of their own to repeat)."""
        rank, _ = divmod(slot, self.workers)
        own = list(range(rank * self.workers, (rank + 1) * self.workers))
        deficit = self.rank_batches - sum(self.planned[s] for s in own)
        donors = [s for s in own if self.planned[s] > 0] or own
        share = deficit // len(donors) + (donors.index(slot) < deficit % len(donors) if slot in donors else 0)
        return self.planned[slot] + (share if slot in donors else 0)

    def too_long(self) -> list[tuple[str, str]]:
        """(id, reason) of indexed utterances longer than ``max_duration`` (never read)."""
        return [(i, f"too long: {d:.2f} s > max_duration {self.max_duration} s")
                for sh in self.shard_set.shards for i, d in zip(sh.ids, sh.durations) if d > self.max_duration]


# --- reading ------------------------------------------------------------------------------------


def decode_audio(data: bytes, name: str, sample_rate: int) -> Tensor:
    """Audio bytes -> mono float32 at ``sample_rate``, with load_audio's checks (AudioError names ``name``)."""
    if not data:
        raise AudioError(name, "empty file (0 bytes)")
    try:
        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError) as e:
        raise AudioError(name, f"not a readable audio file ({str(e).strip().splitlines()[-1] if str(e).strip() else e})") from None
    if samples.shape[0] == 0:
        raise AudioError(name, "contains no audio samples")
    if not np.isfinite(samples).all():
        raise AudioError(name, "contains NaN or infinite samples")
    peak = float(np.abs(samples).max())
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise AudioError(name, f"sample magnitude {peak:.3g} is absurd (> {MAX_SAMPLE_MAGNITUDE:.0e}; audio is "
                               "nominally within [-1, 1]): corrupt float data")
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    return resample(torch.from_numpy(np.ascontiguousarray(mono)), int(sr), sample_rate)


def _samples(url: str, errors: list[str], select_files: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """WebDataset samples of one shard; read errors are appended to ``errors`` (not raised)."""
    from webdataset.tariterators import tarfile_samples

    def handler(exn: Exception) -> bool:
        errors.append(str(exn.args[0]) if exn.args else type(exn).__name__)
        return True  # go on with what can still be read

    yield from tarfile_samples([{"url": url}], handler=handler, select_files=select_files)


def _meta(sample: dict) -> dict | None:
    try:
        meta = json.loads(sample["json"])
        return meta if isinstance(meta, dict) and isinstance(meta.get("id"), str) else None
    except (KeyError, ValueError, TypeError):
        return None


def read_texts(shard_set: ShardSet) -> list[str]:
    """Every transcript in the shards (one pass over them, decoding only the metadata)."""
    texts = []
    for sh in shard_set.shards:
        errors: list[str] = []
        for sample in _samples(sh.url, errors, select_files=lambda f: f.endswith(".json")):
            meta = _meta(sample)
            if meta is not None and isinstance(meta.get("text"), str):
                texts.append(meta["text"])
        if errors:
            log.warning("%s: %s (texts read so far kept)", sh.url, errors[0])
    return texts


class ShardStream(IterableDataset):
    """Batches (:class:`~asr.data.dataset.Batch`) of one rank, streamed from the shards.

    Use with ``DataLoader(stream, batch_size=None, num_workers=plan.workers or 0)``; ``len()``
    is the rank's batch count per epoch. Call :meth:`set_epoch` before each epoch (a new shard
    order and shuffle; DataLoader workers must not be persistent so that they see it).
    """

    def __init__(self, plan: EpochPlan, rank: int, tokenizer: Tokenizer, feature_cfg: FeatureConfig,
                 out_lengths: Callable[[Tensor], Tensor], speed_perturb: Sequence[float] = (),
                 shuffle_buffer: int = 1000, seed: int = 0, phone_map: PhoneMap | None = None) -> None:
        self.plan = plan
        self.phone_map = phone_map  # items carry phone targets too (model.phone_ctc_weight)
        self.rank = rank
        self.tokenizer = tokenizer
        self.feature_cfg = feature_cfg
        self.out_lengths = out_lengths
        self.factors = tuple(float(f) for f in speed_perturb) or (1.0,)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.epoch = 0
        self.logmel = LogMel(feature_cfg)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.plan.rank_batches

    def _slot(self) -> int:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.plan.workers:
            raise RuntimeError(f"planned for {self.plan.workers} reader(s) per rank, running in {workers}")
        return self.rank * self.plan.workers + worker

    def _items(self, slot: int, rng: random.Random) -> Iterator[tuple[str, float, dict | None, str]]:
        """(id, indexed duration, sample or None, reason) for each of the slot's utterances:
        the sample as read, or None with why it could not be (reported, never bucketed)."""
        plan = self.plan
        order = list(plan.slot_shards[slot])
        rng.shuffle(order)
        for i in order:
            sh = plan.shard_set.shards[i]
            expected = {}
            for p, (utt_id, d) in enumerate(zip(sh.ids, sh.durations)):
                if (not plan.by_utterance or (sh.first + p) % plan.slots == slot) and d <= plan.max_duration:
                    expected[utt_id] = d
            errors: list[str] = []
            for sample in _samples(sh.url, errors):
                meta = _meta(sample)
                if meta is None:
                    errors.append(f"member {sample.get('__key__')}: no readable metadata")
                    continue
                if meta["id"] in expected:  # others: another slot's, too long, or not in the index (stale index)
                    yield meta["id"], expected.pop(meta["id"]), sample, ""
            why = errors[0] if errors else "not found in the shard (index.json is stale?)"
            for utt_id, d in expected.items():
                yield utt_id, d, None, f"unreadable: {sh.url}: {why}"

    def _example(self, sample: dict, rng: random.Random) -> Item | Unreadable:
        meta = json.loads(sample["json"])
        utt_id, ext = meta["id"], str(meta.get("audio_ext", ""))
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}.{ext}"
        utt = Utterance(utt_id, name, float(meta["duration"]), str(meta.get("text", "")), "", 1)
        keep, targets, skipped = filter_utterances([utt], self.tokenizer, self.feature_cfg, self.out_lengths,
                                                   max_speed=max(self.factors))
        if not keep:
            return Unreadable(utt_id, skipped.items[0][1])
        try:
            sr = self.feature_cfg.sample_rate
            wave = decode_audio(sample.get(ext, b""), name, sr)
            if duration_mismatch(utt.duration, len(wave) / sr):
                raise AudioError(name, f"metadata says {utt.duration:.3f} s but the audio holds {len(wave) / sr:.3f} s")
            factor = self.factors[rng.randrange(len(self.factors))]
            if factor != 1.0:
                wave = torchaudio.functional.resample(wave, int(round(sr * factor)), sr)
            with torch.no_grad():
                feats = self.logmel.single(wave)
            if not torch.isfinite(feats).all():
                raise AudioError(name, "features are not finite (sample values of absurd magnitude?)")
        except AudioError as e:
            return Unreadable(utt_id, f"unreadable: {e}")
        if self.phone_map is not None:
            phones, _, _ = phone_targets([utt], self.phone_map, self.feature_cfg, self.out_lengths, max(self.factors))
            return utt_id, feats, torch.tensor(targets[0], dtype=torch.long), torch.tensor(phones[0], dtype=torch.long)
        return utt_id, feats, torch.tensor(targets[0], dtype=torch.long)

    def _natural(self, slot: int, rng: random.Random) -> Iterator[list]:
        """The slot's own batches, as item lists (the last holds back to carry late reports).

        An utterance that could not be read rides in the next batch's items as an Unreadable
        marker (collate lists it in ``Batch.skipped``); no batch is ever added for it, so the
        count stays the planned one."""
        from webdataset.filters import shuffle

        buckets = self.plan.buckets
        queues: list[list] = [[] for _ in buckets.edges]
        pending: list[Unreadable] = []
        items = self._items(slot, rng)
        if self.shuffle_buffer > 1:
            items = shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(items)
        held: list | None = None
        for utt_id, d, sample, reason in items:
            if sample is None:
                pending.append(Unreadable(utt_id, reason))
                continue
            b = buckets.of(d)
            queues[b].append(self._example(sample, rng))
            if len(queues[b]) >= buckets.capacity[b]:
                if held is not None:
                    yield held
                held, queues[b], pending = pending + queues[b], [], []
        for q in queues:
            if q:
                if held is not None:
                    yield held
                held, pending = pending + q, []
        if held is not None or pending:
            yield (held or []) + pending

    def __iter__(self) -> Iterator[Batch]:
        slot = self._slot()
        rng = random.Random(f"{self.seed}:{self.epoch}:{slot}")
        target = self.plan.target(slot)
        kept: list[Batch] = []
        n = 0
        for items in self._natural(slot, rng):
            batch = collate(items)
            if n >= target:  # the plan counts every indexed utterance: more batches are a bug
                raise RuntimeError(f"slot {slot} made more batches than its planned {target}")
            if len(kept) < PAD_MEMORY and batch.ids:
                kept.append(batch._replace(skipped=()))
            n += 1
            yield batch
        for k in range(target - n):  # the rank's padding: repeat the first batches
            yield kept[k % len(kept)] if kept else collate([])


def cmvn_sample(shard_set: ShardSet, feature_cfg: FeatureConfig, max_utterances: int = 3000,
                max_shards: int = 8) -> Iterator[Tensor]:
    """Features (unperturbed) of up to ``max_utterances`` utterances from up to ``max_shards``
    shards spread over the set, for CMVN statistics. Unreadable items are passed over (training
    counts them when it meets them)."""
    shards = shard_set.shards
    picks = sorted({round(i * (len(shards) - 1) / max(1, max_shards - 1)) for i in range(min(max_shards, len(shards)))})
    per = math.ceil(max_utterances / len(picks))
    logmel = LogMel(feature_cfg)
    for i in picks:
        taken = 0
        for sample in _samples(shards[i].url, []):
            meta = _meta(sample)
            if meta is None:
                continue
            ext = str(meta.get("audio_ext", ""))
            try:
                wave = decode_audio(sample.get(ext, b""), f"{shards[i].url}:{sample.get('__key__')}", feature_cfg.sample_rate)
            except AudioError:
                continue
            with torch.no_grad():
                yield logmel.single(wave)
            taken += 1
            if taken >= per:
                break
