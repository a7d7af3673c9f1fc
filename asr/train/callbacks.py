"""Lightning plumbing of ``asr train``: callbacks (sampler epochs, the per-epoch summary line,
unreadable items) and atomic checkpoint I/O."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from asr.data.dataset import Batch, Skipped
from asr.files import atomic_write
from asr.train.resume import load_checkpoint_file

log = logging.getLogger(__name__)


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


class SamplerEpoch(pl.Callback):
    """Reshuffle the bucketing sampler every epoch.

    Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler``
    but not on a custom ``batch_sampler`` itself; without this every epoch would replay the
    first epoch's batches. Runs before the epoch's iterator is created.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        for obj in (getattr(loader, "batch_sampler", None), getattr(loader, "dataset", None)):
            set_epoch = getattr(obj, "set_epoch", None)  # BucketBatchSampler; ShardStream
            if set_epoch is not None:
                set_epoch(trainer.current_epoch)


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
        phone = f" val/phone_ctc {fmt('val/phone_ctc')}" if "val/phone_ctc" in m else ""
        log.info("epoch %d step %d: train/loss %s val/loss %s val_wer %s val_cer %s%s [%.0f s]",
                 trainer.current_epoch, trainer.global_step, fmt("train/loss"), fmt("val/loss"),
                 fmt("val_wer"), fmt("val_cer"), phone, time.time() - self.start)


class SkippedItems(pl.Callback):
    """Count utterances dropped from batches for unreadable audio, once each, in the main process.

    The dataset runs in DataLoader workers (separate processes) without the feature cache, so
    the ids travel in ``Batch.skipped`` and are collected here. Under DDP each rank sees only
    its share of the batches: at the end of every training and validation epoch (hooks all
    ranks run) the ranks exchange what they noted since the last exchange, so rank zero's
    skipped.jsonl and train_summary.json count every rank's (a run killed mid-epoch reports
    rank zero's items of that epoch and everyone's before it).
    """

    def __init__(self, skipped: dict[str, Skipped]) -> None:
        self.skipped = skipped
        self.seen = {split: {utt_id for utt_id, _ in sk.items} for split, sk in skipped.items()}
        self.unshared: dict[str, list[tuple[str, str]]] = {split: [] for split in skipped}

    def _add(self, split: str, utt_id: str, reason: str) -> bool:
        if utt_id in self.seen[split]:
            return False
        self.seen[split].add(utt_id)
        self.skipped[split].add(utt_id, reason)
        return True

    def _note(self, split: str, batch: Batch) -> None:
        for utt_id, reason in getattr(batch, "skipped", ()):
            if self._add(split, utt_id, reason):
                self.unshared[split].append((utt_id, reason))
                log.warning("%s: skipped %s: %s", split, utt_id, reason)

    def _share(self, trainer: pl.Trainer, split: str) -> None:
        mine, self.unshared[split] = self.unshared.get(split, []), []
        if trainer.world_size < 2 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        every: list[list[tuple[str, str]] | None] = [None] * trainer.world_size
        torch.distributed.all_gather_object(every, mine)
        for items in every:
            for utt_id, reason in items or ():
                self._add(split, utt_id, reason)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch,
                             batch_idx: int) -> None:
        self._note("train", batch)

    def on_validation_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._note("dev", batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._share(trainer, "train")

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._share(trainer, "dev")
