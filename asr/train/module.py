"""The LightningModule of training: CTC loss (with the intermediate and phone CTC losses when
configured), AdamW with a warm-up schedule (:func:`lr_factor`), dev WER/CER from greedy
decoding, and the stop on a diverged run (:class:`DivergedError`).

:func:`asr.train.training.train` builds it around an :class:`asr.model.AcousticModel` and runs
it; checkpoints it writes are read back by :mod:`asr.train.checkpoint`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import CharErrorRate, WordErrorRate

from asr.config import ExperimentConfig, to_dict
from asr.data.dataset import Batch, WaveBatch, wave_batch_features
from asr.decode.decoding import greedy_decode
from asr.features import LogMel
from asr.model import AcousticModel
from asr.text import Tokenizer

log = logging.getLogger(__name__)

# A run stops with an error when more than half of an epoch's steps, or this many in a row,
# have a non-finite loss: it is not learning, and its checkpoints would be worthless.
MAX_CONSECUTIVE_NONFINITE = 50
SCHEDULES = ("cosine", "noam", "constant")


class DivergedError(Exception):
    """Most training steps have a non-finite loss: the run stops instead of saving a broken model."""


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_lr_ratio: float = 0.0,
              hold_from: int | None = None) -> float:
    """The learning rate at optimiser step ``step`` (0-based) as a fraction of ``optim.lr``.

    A linear warm-up over ``warmup`` steps (at least 1, at most ``total``) reaches 1.0 at its
    last step, then: ``constant`` stays at 1; ``noam`` decays as sqrt(warmup / step);
    ``cosine`` follows a half cosine from 1 down to ``min_lr_ratio`` at step ``total``.
    From step ``hold_from`` on (``optim.swa_epochs``) the rate stays at its value there.
    """
    if hold_from is not None and step > hold_from:
        step = hold_from
    warm = max(1, min(warmup, total))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    if schedule == "noam":
        return math.sqrt(warm / (step + 1))
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Losses(NamedTuple):
    loss: torch.Tensor  # what training optimises (validation: the final layer's CTC loss)
    log_probs: torch.Tensor  # (N, T', V) final layer
    out_lens: torch.Tensor  # (N,)
    phone: torch.Tensor | None  # phone CTC loss, mean over phone_n utterances (None: no phone head)
    phone_n: int  # utterances with phone targets in the batch


class CTCModule(pl.LightningModule):
    """CTC loss, AdamW with warm-up + decay, corpus-level greedy WER/CER on the dev set."""

    def __init__(self, model: AcousticModel, tokenizer: Tokenizer, cfg: ExperimentConfig,
                 run_id: str | None = None, phones: Sequence[str] = (),
                 pronunciations: dict[str, tuple[str, ...]] | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        # Everything needed to rebuild the network travels inside each checkpoint; the run id
        # lets `asr export` refuse to average checkpoints of different runs.
        hparams: dict[str, Any] = {"config": to_dict(cfg), "tokenizer": tokenizer.to_dict()}
        if run_id is not None:
            hparams["run_id"] = run_id
        if phones:
            hparams["phones"] = list(phones)
            # The training words' pronunciations: `asr export` puts them in the package with
            # the phone head, as the lexicon of its phone beam search (asr.decode.phones).
            hparams["pronunciations"] = {w: list(ps) for w, ps in sorted((pronunciations or {}).items())}
        self.save_hyperparameters(hparams)
        self.val_wer = WordErrorRate()  # corpus-level, synced across DDP ranks
        self.val_cer = CharErrorRate()
        # The auxiliary phone CTC head (model.phone_ctc_weight > 0): a linear layer on one
        # recurrent layer's output to the phones + blank (id 0). It lives here, not in the
        # AcousticModel, so checkpoints hold it (resume); `asr export` copies it into the
        # package beside the network, for `--phone-weight` decoding (asr.decode.phones).
        self.phone_head: nn.Linear | None = None
        if cfg.model.phone_ctc_weight > 0:
            assert phones, "model.phone_ctc_weight > 0 needs the phone inventory"
            self.phone_head = nn.Linear(model.layer_dim, len(phones) + 1)
            self.phone_dropout = nn.Dropout(cfg.model.dropout)
            self.val_phone = MeanMetric()  # mean over dev utterances with phone targets, synced
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

    def phone_ctc(self, hidden: torch.Tensor, mask: torch.Tensor, out_lens: torch.Tensor,
                  batch: Batch) -> tuple[torch.Tensor, int]:
        """Phone CTC loss (mean over the utterances with phone targets) of the phone head on
        ``hidden`` (N, T', D), and how many utterances it averages (0: the loss is a zero
        that still reaches the head, so every DDP rank's backward sees its parameters)."""
        assert self.phone_head is not None and batch.phones is not None and batch.phone_lens is not None
        logits = self.phone_head(self.phone_dropout(hidden)).float()
        log_probs = logits.log_softmax(dim=-1) * mask.unsqueeze(-1)
        valid = batch.phone_lens > 0
        n = int(valid.sum())
        if n == 0:
            return log_probs.sum() * 0.0, 0
        per_utt = F.ctc_loss(log_probs.transpose(0, 1), batch.phones, out_lens, batch.phone_lens, blank=0,
                             reduction="none", zero_infinity=True)
        return torch.where(valid, per_utt, torch.zeros_like(per_utt)).sum() / n, n

    def losses(self, batch: Batch) -> Losses:
        """The CTC loss to optimise (per utterance), the final layer's log-probs, and the
        phone CTC loss with the number of utterances it averages (None, 0 without the head).

        In training, with ``model.inter_ctc_weight = wi`` and ``model.phone_ctc_weight = wp``
        (each 0 = off), the loss is ``(1 - wi - wp) * final + wi * middle + wp * phone``; with
        the phone head alone that is ``(1 - w) * final + w * phone``, the form the
        intermediate CTC loss has. Validation reports the final layer's loss alone, so dev
        losses stay comparable across configurations (the phone loss is logged apart).
        """
        tap = self.model.phone_layer if self.phone_head is not None else None
        tbptt = self.cfg.trainer.tbptt_chunks if self.training else 0
        out = self.model.forward_outputs(batch.feats, batch.feat_lens, tap=tap, tbptt=tbptt)
        final = self._ctc(out.log_probs, out.lens, batch)
        aux: list[tuple[float, torch.Tensor]] = []  # (weight, loss) of the auxiliary losses
        if out.inter is not None:  # only computed in training mode
            aux.append((self.model.cfg.inter_ctc_weight, self._ctc(out.inter, out.lens, batch)))
        phone, n = None, 0
        if out.tapped is not None:
            phone, n = self.phone_ctc(out.tapped, out.mask, out.lens, batch)
            if self.training:
                aux.append((self.model.cfg.phone_ctc_weight, phone))
        loss = final
        if aux:
            loss = (1 - sum(w for w, _ in aux)) * final + sum(w * x for w, x in aux)
        return Losses(loss, out.log_probs, out.lens, phone, n)

    def _skip_step(self):
        if self.trainer.world_size == 1:
            return None  # Lightning skips the optimiser step
        # Under DDP every rank must step together: contribute zero gradients instead.
        return sum(p.sum() for p in self.parameters()) * 0.0

    def on_train_epoch_start(self) -> None:
        self.epoch_steps = self.epoch_nonfinite = 0

    def training_step(self, batch: Batch, batch_idx: int):
        if not batch.ids:  # every utterance of the batch was unreadable (counted by SkippedItems)
            return self._skip_step()
        self.epoch_steps += 1
        out = self.losses(batch)
        loss = out.loss
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            self.epoch_nonfinite += 1
            self.consecutive_nonfinite += 1
            self.log("train/skipped_nonfinite", float(self.skipped_steps))
            log.warning("non-finite loss at step %d (batch %s...): step skipped", self.global_step, batch.ids[:3])
            if self.consecutive_nonfinite >= MAX_CONSECUTIVE_NONFINITE:
                raise DivergedError(f"training stopped: {self.consecutive_nonfinite} steps in a row had a "
                                    "non-finite loss; check the training data or lower optim.lr")
            return self._skip_step()
        self.consecutive_nonfinite = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.ids))
        if out.phone_n and out.phone is not None:
            self.log("train/phone_ctc", out.phone, batch_size=out.phone_n)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.epoch_nonfinite * 2 > self.epoch_steps:
            raise DivergedError(f"training stopped: {self.epoch_nonfinite} of {self.epoch_steps} steps of epoch "
                                f"{self.current_epoch} had a non-finite loss; the model is not learning: check "
                                "the training data or lower optim.lr")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if not batch.ids:
            return
        loss, log_probs, out_lens, phone, phone_n = self.losses(batch)
        if self.phone_head is not None and phone is not None:
            self.val_phone.update(phone.detach(), phone_n)
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
        if self.phone_head is not None:
            value = self.val_phone.compute()
            if torch.isfinite(value):  # nan when no dev utterance had phone targets
                self.log("val/phone_ctc", value, sync_dist=False)
            self.val_phone.reset()

    def configure_optimizers(self):
        o = self.cfg.optim
        opt = torch.optim.AdamW(self.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        hold_from = None
        if o.swa_epochs:
            # The last swa_epochs epochs hold the rate the schedule reached at their start.
            epochs = max(1, int(self.trainer.max_epochs or 1))
            hold_from = max(0, total - min(o.swa_epochs, epochs) * (total // epochs))
            log.info("optim.swa_epochs=%d: the learning rate stays at %.3g from step %d of %d", o.swa_epochs,
                     o.lr * lr_factor(hold_from, o.warmup_steps, total, o.schedule, o.min_lr_ratio), hold_from, total)
        factor = functools.partial(lr_factor, warmup=o.warmup_steps, total=total, schedule=o.schedule,
                                   min_lr_ratio=o.min_lr_ratio, hold_from=hold_from)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

