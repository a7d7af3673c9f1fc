"""Training data for ``asr train``: manifests (or streamed WebDataset shards) -> filtered,
feature-cached datasets -> duration-bucketed DataLoaders, and the CMVN statistics."""

from __future__ import annotations

import functools
import logging

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from asr.audio import AudioError
from asr.config import ConfigError, ExperimentConfig
from asr.data.dataset import (
    FeatureDataset,
    Skipped,
    collate,
    collate_waves,
    fill_cache,
    filter_utterances,
    phone_targets,
)
from asr.data.lexicon import PhoneMap
from asr.data.manifest import ManifestError, Utterance, read_manifest
from asr.data.sampler import BucketBatchSampler
from asr.data.shards import Buckets, EpochPlan, ShardError, ShardStream, cmvn_sample, open_shard_set
from asr.features import compute_cmvn_stats
from asr.model import AcousticModel, ConvSubsampling
from asr.text import Tokenizer

log = logging.getLogger(__name__)

CMVN_MAX_UTTERANCES = 3000  # without a feature cache, CMVN stats come from a sample this big


def read_manifest_or_fail(path: str) -> list[Utterance]:
    """The manifest's utterances, or :class:`ConfigError` in one ``path[:line]: problem`` line
    (bytes that are not UTF-8 are a ManifestError naming the line: :func:`asr.data.manifest.utf8_lines`)."""
    try:
        utts = read_manifest(path)
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: manifest not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read manifest ({e.strerror or e})") from None
    if not utts:
        raise ConfigError(f"{path}: manifest has no utterances")
    return utts



def _list_skipped(skipped: Skipped, n: int = 5) -> None:
    """The first ``n`` skipped items, one line each (all of them go to skipped.jsonl)."""
    for utt_id, reason in skipped.items[:n]:
        log.info("  skipped %s: %s", utt_id, reason)


def _progress(iterable, description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        yield from progress.track(iterable, total=total, description=description)



class CTCDataModule(pl.LightningDataModule):
    """Manifests -> filtered, feature-cached datasets -> bucketed DataLoaders.

    With ``data.train_shards`` the training set is streamed from WebDataset shards instead
    (:mod:`asr.data.shards`; see :meth:`_setup_shards`); the dev set is always a manifest.
    """

    def __init__(self, cfg: ExperimentConfig, tokenizer: Tokenizer, model: AcousticModel,
                 manifests: dict[str, list[Utterance]] | None = None, phone_map: PhoneMap | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.phone_map = phone_map  # phone CTC targets ride in the batches (model.phone_ctc_weight > 0)
        d = cfg.data
        self.skipped: dict[str, Skipped] = {}
        self.datasets: dict[str, FeatureDataset] = {}
        self.shards: EpochPlan | None = None
        splits = [("train", d.train_manifest), ("dev", d.dev_manifest)]
        if d.train_shards:
            self._setup_shards()
            splits = splits[1:]
        for split, path in splits:
            utts = manifests[split] if manifests is not None else read_manifest_or_fail(path)
            max_dur = d.max_duration if split == "train" else float("inf")
            speeds = d.speed_perturb if split == "train" else ()
            keep, targets, skipped = filter_utterances(utts, tokenizer, cfg.features, model.out_lengths, max_dur,
                                                       max_speed=max(speeds, default=1.0))
            self.skipped[split] = skipped
            if not keep:
                raise ConfigError(f"{path}: no usable utterances ({skipped.summary()})")
            phones = None
            if phone_map is not None:
                phones, cov, short = phone_targets(keep, phone_map, cfg.features, model.out_lengths,
                                                   max(speeds, default=1.0))
                log.info("%s: phone targets for %d of %d utterances (%d lack a word of the training "
                         "pronunciations, %d are too short for their phones: masked out of the phone loss)",
                         split, sum(map(bool, phones)), len(keep), cov.utterances - cov.covered, short)
            self.datasets[split] = FeatureDataset(
                keep,
                targets,
                cfg.features,
                cache=d.cache_features,
                speed_perturb=speeds,
                phones=phones,
            )
            log.info("%s: %d utterances (%.2f h) from %s; skipped %d: %s", split, len(keep),
                     sum(u.duration for u in keep) / 3600, path, len(skipped), skipped.summary())
            _list_skipped(skipped)

    def _setup_shards(self) -> None:
        """Plan the streamed training epoch from the shards' index (no audio is read)."""
        d = self.cfg.data
        try:
            shard_set = open_shard_set(d.train_shards, d.shards_index)
        except ShardError as e:
            raise ConfigError(str(e)) from None
        buckets = Buckets.plan([x for x in shard_set.durations() if x <= d.max_duration] or [d.max_duration],
                               d.num_buckets, d.max_batch_seconds, d.max_batch_size)
        # The world size is only known once the Trainer exists: plan for one rank now (for
        # the report), again in train_dataloader.
        self.shards = EpochPlan(shard_set, buckets, world=1, workers=d.num_workers, max_duration=d.max_duration)
        skipped = Skipped()
        for utt_id, reason in self.shards.too_long():
            skipped.add(utt_id, reason)
        self.skipped["train"] = skipped
        kept = sum(1 for x in shard_set.durations() if x <= d.max_duration)
        if not kept:
            raise ConfigError(f"{shard_set.index_path}: no usable utterances ({skipped.summary()})")
        log.info("train: %d utterances (%.2f h) in %d shard(s) from %s, streamed; skipped %d: %s (unreadable "
                 "and untrainable items are counted as training meets them)", kept, self.train_seconds / 3600,
                 len(shard_set.shards), d.train_shards, len(skipped), skipped.summary())

    @property
    def train_seconds(self) -> float:
        if self.shards is not None:
            return sum(x for x in self.shards.shard_set.durations() if x <= self.cfg.data.max_duration)
        return sum(self.datasets["train"].durations)

    def precompute(self) -> None:
        """Fill the feature caches (in parallel worker processes when configured)."""
        for split, ds in self.datasets.items():
            if ds.cache is None:
                continue
            bad = fill_cache(ds, self.cfg.data.num_workers,
                             lambda it, total, split=split: _progress(it, f"features ({split})", total))
            if not bad:
                continue
            self.skipped[split].items.extend(bad.items)
            log.warning("%s: skipped %d utterance(s) with unreadable audio (listed in skipped.jsonl):",
                        split, len(bad))
            _list_skipped(bad)
            if len(ds) == 0:
                path = self.cfg.data.train_manifest if split == "train" else self.cfg.data.dev_manifest
                raise ConfigError(f"{path}: no usable utterances ({self.skipped[split].summary()})")

    def cmvn_stats(self):
        """CMVN statistics of the training set (a sample of it without the feature cache).

        Without the cache this is the first time the sampled files are read: unreadable ones
        (features that are not finite included) are removed and counted like fill_cache's.
        """
        if self.shards is not None:
            try:
                return compute_cmvn_stats(cmvn_sample(self.shards.shard_set, self.cfg.features, CMVN_MAX_UTTERANCES))
            except ValueError:
                raise ConfigError(f"{self.cfg.data.train_shards}: no readable audio in the shards sampled for "
                                  "CMVN statistics") from None
        ds = self.datasets["train"]
        n = len(ds) if ds.cache is not None else min(len(ds), CMVN_MAX_UTTERANCES)
        step = max(1, len(ds) // n)
        bad = Skipped()
        bad_indices: list[int] = []

        def readable():
            for i in range(0, len(ds), step):
                try:
                    # Statistics of the unperturbed audio: that is what the model sees at inference.
                    yield ds.features(i, 1.0)
                except AudioError as e:
                    bad.add(ds.utts[i].id, f"unreadable: {e}")
                    bad_indices.append(i)

        try:
            stats = compute_cmvn_stats(readable())
        except ValueError:
            stats = None
        if bad:
            self.skipped["train"].items.extend(bad.items)
            ds.remove(bad_indices)
            log.warning("train: skipped %d utterance(s) with unreadable audio (listed in skipped.jsonl):", len(bad))
            _list_skipped(bad)
        if stats is None or len(ds) == 0:
            raise ConfigError(f"{self.cfg.data.train_manifest}: no usable utterances ({self.skipped['train'].summary()})")
        return stats

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.datasets[split]
        d = self.cfg.data
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = BucketBatchSampler(
            ds.durations,
            max_batch_seconds=d.max_batch_seconds,
            max_batch_size=d.max_batch_size,
            num_buckets=d.num_buckets,
            shuffle=shuffle,
            bucketing=d.bucketing,
            seed=self.cfg.seed,
            num_replicas=world,
            rank=rank,
            pad_to_replicas=shuffle,  # dev batches are not duplicated; metrics sync at epoch end
        )
        # With a feature cache the work per item is a dict lookup: workers would only add IPC.
        workers = 0 if ds.cache is not None else d.num_workers
        on_device = d.features_on_device
        if on_device == "auto":  # the accelerator computes log-mels far faster than a worker
            on_device = ds.cache is None and self.trainer is not None and self.trainer.strategy.root_device.type != "cpu"
        ds.waveforms = bool(on_device) and ds.cache is None
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_waves if ds.waveforms else collate,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.shards is not None:
            return self._shard_loader()
        return self._loader("train", shuffle=True)

    def _shard_loader(self) -> DataLoader:
        """The streamed training loader: each rank's workers read their planned shards and
        batch them; every rank gets the same number of batches (``len()``, the epoch length)."""
        d = self.cfg.data
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        plan = self.shards
        assert plan is not None, "the streamed loader is only made after setup() planned the shards"
        self.shards = EpochPlan(plan.shard_set, plan.buckets, world=world, workers=d.num_workers,
                                max_duration=d.max_duration)
        stream = ShardStream(self.shards, rank, self.tokenizer, self.cfg.features,
                             functools.partial(ConvSubsampling.out_lengths, factor=self.cfg.model.subsampling),
                             speed_perturb=d.speed_perturb, shuffle_buffer=d.shard_shuffle_buffer, seed=self.cfg.seed,
                             phone_map=self.phone_map)
        if self.shards.by_utterance and self.shards.slots > 1:
            log.info("note: fewer shards (%d) than ranks x workers (%d): every reader reads every shard and "
                     "keeps its share; write more, smaller shards for real data",
                     len(plan.shard_set.shards), self.shards.slots)
        log.info("train: %d batches per epoch on each of %d rank(s) (%d in all, the rest repeats to even out "
                 "ranks)", self.shards.rank_batches, world, sum(self.shards.planned))
        # Not persistent: each epoch's workers get the stream with its new epoch (set_epoch).
        return DataLoader(stream, batch_size=None, num_workers=d.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", shuffle=False)
