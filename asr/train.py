"""Training: a thin LightningModule around :class:`asr.model.AcousticModel`, a DataModule
with the duration-bucketed sampler, and Trainer assembly from :mod:`asr.config`.

``asr train conf/<recipe>.yaml key=value ...``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import pickle
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader
from torchmetrics.text import CharErrorRate, WordErrorRate

from asr.audio import AudioError
from asr.config import ConfigError, ExperimentConfig, load_config, to_dict
from asr.data.dataset import (
    Batch,
    FeatureDataset,
    Skipped,
    WaveBatch,
    collate,
    collate_waves,
    fill_cache,
    filter_utterances,
    wave_batch_features,
)
from asr.data.manifest import ManifestError, Utterance, read_manifest
from asr.data.sampler import BucketBatchSampler
from asr.data.shards import (
    Buckets,
    EpochPlan,
    ShardError,
    ShardStream,
    cmvn_sample,
    open_shard_set,
    read_texts,
)
from asr.decoding import greedy_decode
from asr.features import LogMel, compute_cmvn_stats
from asr.files import atomic_write, atomic_write_text, remove_stale_temp_files
from asr.model import AcousticModel, ConvSubsampling
from asr.text import BpeTokenizer, CharTokenizer, Tokenizer

CMVN_MAX_UTTERANCES = 3000  # without a feature cache, CMVN stats come from a sample this big
# A run stops with an error when more than half of an epoch's steps, or this many in a row,
# have a non-finite loss: it is not learning, and its checkpoints would be worthless.
MAX_CONSECUTIVE_NONFINITE = 50
class CheckpointLoadError(Exception):
    """A checkpoint to resume from cannot be read, or is refused; ``str(e)`` names the file."""


class DivergedError(Exception):
    """Most training steps have a non-finite loss: the run stops instead of saving a broken model."""


# --- safe checkpoint loads --------------------------------------------------------------------


@contextlib.contextmanager
def _env_without(name: str) -> Iterator[None]:
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``: tensors and plain values only.

    torch 2.14 lets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turn full unpickling back on only
    when ``weights_only`` is not passed; we pass it, and also hide the variable while loading,
    so that no environment makes resuming run code pickled into a planted checkpoint.
    Raises :class:`CheckpointLoadError` with a one-line reason naming the file.
    """
    path = Path(path)
    try:
        with _env_without("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it pickles {m.group(1)}, which" if m else "it holds objects that"
        raise CheckpointLoadError(f"{path}: refusing to load: {what} weights-only loading does not allow "
                                  "(checkpoints written by `asr train` hold only tensors and plain values)") from None
    except Exception as e:  # noqa: BLE001 - any failure to read a file is a bad file here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointLoadError(f"{path}: unreadable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointLoadError(f"{path}: not a checkpoint written by `asr train` (no state_dict)")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes with :func:`atomic_write` and loads with
    :func:`load_checkpoint_file` (always ``weights_only=True``).

    Lightning's default stages the file through fsspec in the temp dir; with the temp dir on
    another filesystem (tmpfs /tmp) the final move copies over last.ckpt, truncating it first,
    so a kill mid-copy destroyed it and left the temp file behind.
    """

    def __init__(self) -> None:
        super().__init__()
        self.preloaded: dict[str, dict] = {}  # path -> checkpoint already read (to pick a resume point)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_write(Path(path), lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        ckpt = self.preloaded.pop(str(path), None)
        return ckpt if ckpt is not None else load_checkpoint_file(path)


def find_resume_checkpoint(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """last.ckpt, or when it cannot be read the newest readable checkpoint in ``ckpt_dir``.

    ``None`` when there is no checkpoint at all. A fallback is announced in one line; when no
    checkpoint is readable, :class:`CheckpointLoadError` names the first (last.ckpt).
    """
    last = ckpt_dir / "last.ckpt"
    others = sorted((p for p in ckpt_dir.glob("*.ckpt") if p != last), key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.is_file() else []) + others
    problems: list[CheckpointLoadError] = []
    for path in candidates:
        try:
            ckpt = load_checkpoint_file(path)
        except CheckpointLoadError as e:
            problems.append(e)
            continue
        if problems:
            more = f" ({len(problems) - 1} other unreadable checkpoint(s) skipped)" if len(problems) > 1 else ""
            print(f"warning: {problems[0]}; resuming from {path} instead{more}", file=sys.stderr, flush=True)
        return path, ckpt
    if problems:
        more = f" (and {len(problems) - 1} other checkpoint(s) in {ckpt_dir} unreadable)" if len(problems) > 1 else ""
        raise CheckpointLoadError(f"{problems[0]}{more}")
    return None


def read_manifest_or_fail(path: str) -> list[Utterance]:
    """The manifest's utterances, or :class:`ConfigError` in one ``path[:line]: problem`` line."""
    try:
        utts = read_manifest(path)
    except ManifestError as e:
        raise ConfigError(str(e)) from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: manifest not found") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read manifest ({e.strerror or e})") from None
    if not utts:
        raise ConfigError(f"{path}: manifest has no utterances")
    return utts


class CTCModule(pl.LightningModule):
    """CTC loss, AdamW with warm-up + decay, corpus-level greedy WER/CER on the dev set."""

    def __init__(self, model: AcousticModel, tokenizer: Tokenizer, cfg: ExperimentConfig,
                 run_id: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        # Everything needed to rebuild the network travels inside each checkpoint; the run id
        # lets `asr export` refuse to average checkpoints of different runs.
        hparams = {"config": to_dict(cfg), "tokenizer": tokenizer.to_dict()}
        if run_id is not None:
            hparams["run_id"] = run_id
        self.save_hyperparameters(hparams)
        self.val_wer = WordErrorRate()  # corpus-level, synced across DDP ranks
        self.val_cer = CharErrorRate()
        self.skipped_steps = 0
        self.epoch_steps = self.epoch_nonfinite = self.consecutive_nonfinite = 0
        # Log-mel extractors for data.features_on_device, one per device; a plain dict, not a
        # submodule, so that checkpoints and packages keep the same state dict either way.
        self._logmels: dict[torch.device, LogMel] = {}

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Waveform batches (data.features_on_device) become feature batches on the device."""
        if not isinstance(batch, WaveBatch):
            return batch
        device = batch.waves.device
        if device not in self._logmels:
            self._logmels[device] = LogMel(self.cfg.features).to(device)
        return wave_batch_features(batch, self._logmels[device])

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor):
        return self.model(feats, feat_lens)

    def _ctc(self, log_probs: torch.Tensor, out_lens: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.ctc_loss(
            log_probs.transpose(0, 1),  # (T, N, V)
            batch.targets,
            out_lens,
            batch.target_lens,
            blank=self.tokenizer.blank_id,
            reduction="sum",
            zero_infinity=True,
        ) / len(batch.ids)

    def ctc_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The CTC loss to optimise (per utterance) and the final layer's log-probs.

        With ``model.inter_ctc_weight = w > 0`` the loss is ``(1 - w) * final + w * middle``
        in training; validation reports the final layer's loss alone, so dev losses stay
        comparable across configurations.
        """
        log_probs, out_lens, inter = self.model.forward_with_intermediate(batch.feats, batch.feat_lens)
        loss = self._ctc(log_probs, out_lens, batch)
        if inter is not None:  # only computed in training mode
            w = self.model.cfg.inter_ctc_weight
            loss = (1 - w) * loss + w * self._ctc(inter, out_lens, batch)
        return loss, log_probs, out_lens

    def _skip_step(self):
        if self.trainer.world_size == 1:
            return None  # Lightning skips the optimiser step
        # Under DDP every rank must step together: contribute zero gradients instead.
        return sum(p.sum() for p in self.model.parameters()) * 0.0

    def on_train_epoch_start(self) -> None:
        self.epoch_steps = self.epoch_nonfinite = 0

    def training_step(self, batch: Batch, batch_idx: int):
        if not batch.ids:  # every utterance of the batch was unreadable (counted by SkippedItems)
            return self._skip_step()
        self.epoch_steps += 1
        loss, _, _ = self.ctc_loss(batch)
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            self.epoch_nonfinite += 1
            self.consecutive_nonfinite += 1
            self.log("train/skipped_nonfinite", float(self.skipped_steps))
            print(f"warning: non-finite loss at step {self.global_step} (batch {batch.ids[:3]}...): step skipped")
            if self.consecutive_nonfinite >= MAX_CONSECUTIVE_NONFINITE:
                raise DivergedError(f"training stopped: {self.consecutive_nonfinite} steps in a row had a "
                                    "non-finite loss; check the training data or lower optim.lr")
            return self._skip_step()
        self.consecutive_nonfinite = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.ids))
        return loss

    def on_train_epoch_end(self) -> None:
        if self.epoch_nonfinite * 2 > self.epoch_steps:
            raise DivergedError(f"training stopped: {self.epoch_nonfinite} of {self.epoch_steps} steps of epoch "
                                f"{self.current_epoch} had a non-finite loss; the model is not learning: check "
                                "the training data or lower optim.lr")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if not batch.ids:
            return
        loss, log_probs, out_lens = self.ctc_loss(batch)
        hyps = [h.text for h in greedy_decode(log_probs, out_lens, self.tokenizer)]
        refs = [self.tokenizer.decode(t[:n].tolist()) for t, n in zip(batch.targets, batch.target_lens)]
        self.val_wer.update(hyps, refs)
        self.val_cer.update(hyps, refs)
        self.log("val/loss", loss, sync_dist=True, batch_size=len(batch.ids))

    def on_validation_epoch_end(self) -> None:
        self.log("val_wer", self.val_wer.compute(), prog_bar=True, sync_dist=False)
        self.log("val_cer", self.val_cer.compute(), prog_bar=True, sync_dist=False)
        self.val_wer.reset()
        self.val_cer.reset()

    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warm = max(1, min(o.warmup_steps, total))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if o.schedule == "constant":
                return 1.0
            if o.schedule == "noam":
                return math.sqrt(warm / (step + 1))
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def build_tokenizer(cfg: ExperimentConfig, train_texts: list[str]) -> Tokenizer:
    if cfg.data.tokenizer == "bpe":
        return BpeTokenizer.train(train_texts, vocab_size=cfg.data.bpe_vocab_size)
    return CharTokenizer.from_texts(train_texts)


class CTCDataModule(pl.LightningDataModule):
    """Manifests -> filtered, feature-cached datasets -> bucketed DataLoaders.

    With ``data.train_shards`` the training set is streamed from WebDataset shards instead
    (:mod:`asr.data.shards`; see :meth:`_setup_shards`); the dev set is always a manifest.
    """

    def __init__(self, cfg: ExperimentConfig, tokenizer: Tokenizer, model: AcousticModel,
                 manifests: dict[str, list[Utterance]] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
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
            self.datasets[split] = FeatureDataset(
                keep,
                targets,
                cfg.features,
                cache=d.cache_features,
                speed_perturb=speeds,
            )
            print(f"{split}: {len(keep)} utterances ({sum(u.duration for u in keep) / 3600:.2f} h) from {path}; "
                  f"skipped {len(skipped)}: {skipped.summary()}")
            for utt_id, reason in skipped.items[:5]:
                print(f"  skipped {utt_id}: {reason}")

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
        print(f"train: {kept} utterances ({self.train_seconds / 3600:.2f} h) in {len(shard_set.shards)} shard(s) "
              f"from {d.train_shards}, streamed; skipped {len(skipped)}: {skipped.summary()} (unreadable and "
              "untrainable items are counted as training meets them)")

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
            print(f"warning: {split}: skipped {len(bad)} utterance(s) with unreadable audio "
                  f"(listed in skipped.jsonl):")
            for utt_id, reason in bad.items[:5]:
                print(f"  skipped {utt_id}: {reason}")
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
            print(f"warning: train: skipped {len(bad)} utterance(s) with unreadable audio (listed in skipped.jsonl):")
            for utt_id, reason in bad.items[:5]:
                print(f"  skipped {utt_id}: {reason}")
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
        self.shards = EpochPlan(plan.shard_set, plan.buckets, world=world, workers=d.num_workers,
                                max_duration=d.max_duration)
        stream = ShardStream(self.shards, rank, self.tokenizer, self.cfg.features,
                             functools.partial(ConvSubsampling.out_lengths, factor=self.cfg.model.subsampling),
                             speed_perturb=d.speed_perturb, shuffle_buffer=d.shard_shuffle_buffer, seed=self.cfg.seed)
        if self.shards.by_utterance and self.shards.slots > 1:
            print(f"note: fewer shards ({len(plan.shard_set.shards)}) than ranks x workers ({self.shards.slots}): "
                  "every reader reads every shard and keeps its share; write more, smaller shards for real data")
        print(f"train: {self.shards.rank_batches} batches per epoch on each of {world} rank(s) "
              f"({sum(self.shards.planned)} in all, the rest repeats to even out ranks)")
        # Not persistent: each epoch's workers get the stream with its new epoch (set_epoch).
        return DataLoader(stream, batch_size=None, num_workers=d.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", shuffle=False)


class SamplerEpoch(pl.Callback):
    """Reshuffle the bucketing sampler every epoch.

    Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler``
    but not on a custom ``batch_sampler`` itself; without this every epoch would replay the
    first epoch's batches. Runs before the epoch's iterator is created.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        for obj in (getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)):
            if hasattr(obj, "set_epoch"):  # BucketBatchSampler; ShardStream (an IterableDataset)
                obj.set_epoch(trainer.current_epoch)


class EpochSummary(pl.Callback):
    """One line per validated epoch (loss, dev WER/CER, elapsed) for logs without a progress bar."""

    def __init__(self) -> None:
        self.start = time.time()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # Validation has run by now (callbacks' on_validation_epoch_end runs before the
        # module logs its metrics).
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        fmt = lambda k: f"{float(m[k]):.4f}" if k in m else "-"  # noqa: E731
        print(f"epoch {trainer.current_epoch} step {trainer.global_step}: train/loss {fmt('train/loss')} "
              f"val/loss {fmt('val/loss')} val_wer {fmt('val_wer')} val_cer {fmt('val_cer')} "
              f"[{time.time() - self.start:.0f} s]", flush=True)


class SkippedItems(pl.Callback):
    """Count utterances dropped from batches for unreadable audio, once each, in the main process.

    The dataset runs in DataLoader workers (separate processes) without the feature cache, so
    the ids travel in ``Batch.skipped`` and are collected here.
    """

    def __init__(self, skipped: dict[str, Skipped]) -> None:
        self.skipped = skipped
        self.seen = {split: {utt_id for utt_id, _ in sk.items} for split, sk in skipped.items()}

    def _note(self, split: str, batch: Batch) -> None:
        for utt_id, reason in getattr(batch, "skipped", ()):
            if utt_id in self.seen[split]:
                continue
            self.seen[split].add(utt_id)
            self.skipped[split].add(utt_id, reason)
            print(f"warning: {split}: skipped {utt_id}: {reason}", flush=True)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch,
                             batch_idx: int) -> None:
        self._note("train", batch)

    def on_validation_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._note("dev", batch)


def _progress(iterable, description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        yield from progress.track(iterable, total=total, description=description)


# Files of a run in its exp dir that --overwrite deletes (nothing else there is touched).
RUN_FILES = ("checkpoints", "tb", "csv", "train_summary.json", "skipped.jsonl", "run.json",
             "tokenizer.json", "config.yaml")


def prepare_exp_dir(exp: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a new run with an earlier run's checkpoints (export would pick the old
    ones), unless resuming it or told to delete it; remove temp files of killed writers."""
    ckpt_dir = exp / "checkpoints"
    old = sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
    if overwrite:
        for name in RUN_FILES:
            p = exp / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if old:
            print(f"--overwrite: deleted the earlier run in {exp} ({len(old)} checkpoint(s), logs, summaries)")
    elif old and not resume:
        raise ConfigError(f"{exp}: already holds checkpoints of an earlier run ({len(old)} in {ckpt_dir}); "
                          f"continue it with --resume, train into another exp_dir=..., or pass --overwrite "
                          f"to delete them")
    exp.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temp_files(exp, ckpt_dir)
    if removed:
        print(f"removed {len(removed)} temp file(s) left by an interrupted write: {', '.join(p.name for p in removed)}")


# Environment variables that launchers set to a process's rank (global, per node, or node):
# Lightning's own DDP launcher sets LOCAL_RANK and NODE_RANK; torchrun sets RANK, LOCAL_RANK
# and GROUP_RANK (the node) but no NODE_RANK; srun sets SLURM_PROCID (global) only.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def _is_rank_zero() -> bool:
    """Before the Trainer exists: is this the one process that may clear the exp dir and name
    the run? Yes when every rank variable that a launcher set is 0.

    Lightning's launcher starts ranks > 0 as copies of this command after rank 0 got here;
    torchrun and srun start every rank at once, so a check of LOCAL_RANK/NODE_RANK alone
    made rank 0 of every node (torchrun: NODE_RANK unset) a "rank zero" that cleared the exp
    dir and named the run while the others were starting.
    """
    return all(os.environ.get(name, "0").strip() in ("", "0") for name in RANK_VARIABLES)


def _run_id(exp: Path, resumed: dict[str, Any] | None, lead: bool = True) -> str:
    """The run's id: kept across --resume (from the checkpoint, else run.json), new otherwise.
    Ranks > 0 (``lead=False``) take the one rank 0 wrote to run.json before starting them
    (under torchrun/srun, which start all ranks at once, they may read it before rank 0 wrote
    it; their id is never saved: only global rank 0 writes checkpoints and summaries)."""
    run_file = exp / "run.json"
    run_id = None
    if resumed is not None or not lead:
        run_id = ((resumed or {}).get("hyper_parameters") or {}).get("run_id")
        if run_id is None and run_file.is_file():
            with contextlib.suppress(ValueError, OSError, AttributeError):
                run_id = json.loads(run_file.read_text()).get("run_id")
    run_id = str(run_id) if run_id else uuid.uuid4().hex
    if lead:
        atomic_write_text(run_file, json.dumps({"run_id": run_id}) + "\n")
    return run_id


def _write_skipped(path: Path, skipped: dict[str, Skipped]) -> None:
    atomic_write_text(path, "".join(json.dumps({"id": utt_id, "split": split, "reason": reason}) + "\n"
                                    for split, sk in skipped.items() for utt_id, reason in sk.items))


def _train_texts(cfg: ExperimentConfig, manifests: dict[str, list[Utterance]]) -> list[str]:
    """The texts the tokenizer is built from: the training manifest's, or with only
    ``data.train_shards`` the shards' metadata (one pass over the shards, audio not decoded)."""
    if not cfg.data.train_shards:
        return [u.text for u in manifests["train"]]
    try:
        shard_set = open_shard_set(cfg.data.train_shards, cfg.data.shards_index)
    except ShardError as e:
        raise ConfigError(str(e)) from None
    if "train" in manifests:
        known = {u.id for u in manifests["train"]}
        strangers = sum(1 for sh in shard_set.shards for i in sh.ids if i not in known)
        if strangers:
            print(f"warning: {strangers} sharded utterance(s) are not in {cfg.data.train_manifest}: the tokenizer "
                  "is built from that manifest's texts (characters only the shards have make items untokenizable)")
        return [u.text for u in manifests["train"]]
    print(f"tokenizer: reading the transcripts of {len(shard_set.shards)} shard(s) "
          f"(set data.train_manifest to the sharded manifest to skip this pass)")
    texts = read_texts(shard_set)
    if not texts:
        raise ConfigError(f"{cfg.data.train_shards}: no transcripts could be read from the shards")
    return texts


def train(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train a model as configured; returns a summary (also written to exp_dir/train_summary.json).

    Raises :class:`ConfigError` for unusable input (manifests, an exp dir holding another run),
    :class:`CheckpointLoadError` when ``resume`` finds only unreadable checkpoints, and
    :class:`DivergedError` when most steps have a non-finite loss.
    """
    start = time.time()
    manifests = {"dev": read_manifest_or_fail(cfg.data.dev_manifest)}
    if cfg.data.train_manifest:  # with train_shards too: only the tokenizer's texts come from it
        manifests["train"] = read_manifest_or_fail(cfg.data.train_manifest)
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    exp = Path(cfg.exp_dir)
    lead = _is_rank_zero()
    if lead:
        prepare_exp_dir(exp, resume, overwrite)
    ckpt_dir = exp / "checkpoints"
    found = find_resume_checkpoint(ckpt_dir) if resume else None
    if resume and found is None:
        print(f"--resume: no checkpoint in {ckpt_dir}, starting from scratch")
    resumed = found[1] if found is not None else None

    tok_path = exp / "tokenizer.json"
    hp = (resumed or {}).get("hyper_parameters") or {}
    if isinstance(hp.get("tokenizer"), dict):
        tokenizer = Tokenizer.from_dict(hp["tokenizer"])  # the resumed network's own vocabulary
    elif resume and tok_path.exists():
        tokenizer = Tokenizer.from_dict(json.loads(tok_path.read_text()))
    else:
        tokenizer = build_tokenizer(cfg, _train_texts(cfg, manifests))
    if lead:
        atomic_write_text(tok_path, json.dumps(tokenizer.to_dict()))
        atomic_write_text(exp / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    run_id = _run_id(exp, resumed, lead)

    model = AcousticModel(cfg.model, cfg.features.n_mels, tokenizer.vocab_size)
    dm = CTCDataModule(cfg, tokenizer, model, manifests)
    dm.precompute()
    model.cmvn.set_stats(*dm.cmvn_stats())
    print(f"model: {model.num_parameters() / 1e6:.2f} M parameters, vocabulary {tokenizer.vocab_size}, "
          f"output frame {cfg.features.frame_shift * model.subsampling * 1000:.0f} ms")

    checkpoint_io = AtomicCheckpointIO()
    module = CTCModule(model, tokenizer, cfg, run_id=run_id)
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}-wer{val_wer:.4f}", monitor="val_wer",
                        mode="min", save_top_k=cfg.trainer.save_top_k, auto_insert_metric_name=False),
        # last.ckpt every epoch: Lightning's save_last only rewrites it when a top-k checkpoint
        # was saved, so --resume would restart from the last improvement.
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        EpochSummary(),
        SamplerEpoch(),
        SkippedItems(dm.skipped),
    ]
    if cfg.trainer.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor="val_wer", mode="min", patience=cfg.trainer.early_stopping_patience))
    if cfg.trainer.progress_bar:
        from pytorch_lightning.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    t = cfg.trainer
    trainer = pl.Trainer(
        default_root_dir=str(exp),
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=callbacks,
        logger=[TensorBoardLogger(str(exp), name="tb"), CSVLogger(str(exp), name="csv")],
        enable_progress_bar=t.progress_bar,
        use_distributed_sampler=False,  # BucketBatchSampler shards by rank itself
        deterministic=False,
        plugins=[checkpoint_io],
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if found is not None:
        ckpt_path = str(found[0])
        checkpoint_io.preloaded[ckpt_path] = found[1]
        print(f"resuming from {ckpt_path} (epoch {found[1].get('epoch', '?')}, step {found[1].get('global_step', '?')})")
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    finally:
        if trainer.is_global_zero:  # what was skipped is reported even when training fails
            _write_skipped(exp / "skipped.jsonl", dm.skipped)

    ckpt_cb = callbacks[0]
    summary = {
        "exp_dir": str(exp),
        "run_id": run_id,
        "best_checkpoint": ckpt_cb.best_model_path,
        "best_dev_wer": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
        "last_checkpoint": str(last),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_seconds": round(time.time() - start, 1),
        "parameters": model.num_parameters(),
        "skipped_utterances": {k: len(v) for k, v in dm.skipped.items()},
        "skipped_steps_nonfinite": module.skipped_steps,
        "train_hours": dm.train_seconds / 3600,
    }
    if trainer.is_global_zero:
        atomic_write_text(exp / "train_summary.json", json.dumps(summary, indent=2))
        print(f"best dev WER {summary['best_dev_wer']} at {summary['best_checkpoint']}")
        print(f"results in {exp} (config.yaml, tokenizer.json, checkpoints/, tb/, csv/, train_summary.json, "
              "skipped.jsonl)")
    return summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config, e.g. conf/yesno.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_epochs=5 model.cell=gru")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from EXP_DIR/checkpoints/last.ckpt (or the newest readable checkpoint)")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete the checkpoints, logs and summaries of an earlier run in EXP_DIR first")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        _error(e)
        return 2
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        train(cfg, resume=args.resume, overwrite=getattr(args, "overwrite", False))
    except (ConfigError, CheckpointLoadError) as e:
        _error(e)
        return 2
    except DivergedError as e:
        _error(e)
        return 1
    return 0
