"""Training: a thin LightningModule (CTC loss, AdamW with a warm-up schedule, dev WER/CER)
around :class:`asr.model.AcousticModel`, and :func:`train`, which assembles the data, the
callbacks and the Trainer from an :class:`ExperimentConfig`.

The data side is :mod:`asr.train.datamodule`; callbacks and checkpoint I/O :mod:`asr.train.callbacks`;
the experiment directory and resuming :mod:`asr.train.resume`. ``asr train`` is
:mod:`asr.commands.train`.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import resource
import time
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import CharErrorRate, WordErrorRate

from asr.config import ConfigError, ExperimentConfig, to_dict
from asr.data.dataset import Batch, WaveBatch, wave_batch_features
from asr.data.lexicon import LexiconError, PhoneMap, read_lexicon
from asr.data.manifest import Utterance
from asr.data.shards import ShardError, open_shard_set, read_texts
from asr.decode.decoding import greedy_decode
from asr.features import LogMel
from asr.files import atomic_write_text, os_error_of
from asr.lock import output_lock
from asr.log import is_rank_zero
from asr.model import AcousticModel
from asr.text import BpeTokenizer, CharTokenizer, Tokenizer
from asr.threads import set_threads
from asr.train.callbacks import AtomicCheckpointIO, EpochSummary, SamplerEpoch, SkippedItems
from asr.train.checkpoint import TAIL_DIR
from asr.train.datamodule import CTCDataModule, read_manifest_or_fail
from asr.train.resume import (
    check_resume_config,
    find_resume_checkpoint,
    prepare_exp_dir,
    run_id,
    write_skipped,
)

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


def check_accelerator(accelerator: str) -> None:
    """Refuse a GPU run on a machine without one up front, in one line (Lightning would end
    in a traceback after the data had been prepared)."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA device is visible; "
                          "use trainer.accelerator=cpu or auto")


# Lightning lines every run printed that say nothing about it: an advert, the hardware
# inventory (train_summary.json and the model line say what ran), a deprecation inside
# Lightning's own use of torch's pytree, and a note that our module's on_after_batch_transfer
# is used. Real warnings still come through. (The model summary table, with its "Modules in
# eval mode: 0" and "Total FLOPs: 0", is off: our "model: N M parameters" line replaces it.)
_LIGHTNING_NOISE = ("💡 Tip: For seamless cloud logging", "GPU available: ", "TPU available: ", "HPU available: ")


class _DropLightningNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_LIGHTNING_NOISE)


def quiet_lightning() -> None:
    """Silence the specific Lightning messages in :data:`_LIGHTNING_NOISE` (idempotent)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLightningNoise) for f in logger.filters):
            logger.addFilter(_DropLightningNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # CTCModule overrides on_after_batch_transfer (data.features_on_device) and the DataModule
    # does not: Lightning says on every run that the module's is used, which is the design.
    warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule` "
                                              r"but have passed in a `LightningDataModule`")
    # Only reached with --resume (a fresh run into a directory with checkpoints is refused
    # before Lightning starts), where the checkpoints being there is the point.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


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
        out = self.model.forward_outputs(batch.feats, batch.feat_lens, tap=tap)
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


def build_tokenizer(cfg: ExperimentConfig, train_texts: list[str]) -> Tokenizer:
    if cfg.data.tokenizer == "bpe":
        return BpeTokenizer.train(train_texts, vocab_size=cfg.data.bpe_vocab_size)
    return CharTokenizer.from_texts(train_texts)


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
            log.warning("%d sharded utterance(s) are not in %s: the tokenizer is built from that manifest's texts "
                        "(characters only the shards have make items untokenizable)", strangers,
                        cfg.data.train_manifest)
        return [u.text for u in manifests["train"]]
    log.info("tokenizer: reading the transcripts of %d shard(s) (set data.train_manifest to the sharded "
             "manifest to skip this pass)", len(shard_set.shards))
    texts = read_texts(shard_set)
    if not texts:
        raise ConfigError(f"{cfg.data.train_shards}: no transcripts could be read from the shards")
    return texts


def build_phone_map(cfg: ExperimentConfig, train_texts: list[str]) -> PhoneMap:
    """The phone targets' map for ``model.phone_ctc_weight``: ``data.lexicon``'s pronunciations
    of the training transcripts' words (only those are looked up), stress stripped."""
    try:
        lexicon = read_lexicon(cfg.data.lexicon)
    except LexiconError as e:
        raise ConfigError(str(e)) from None
    phone_map, cov = PhoneMap.build(lexicon, train_texts)
    if not phone_map.num_phones:
        raise ConfigError(f"{cfg.data.lexicon}: none of the training transcripts' words is in the lexicon")
    log.info("phone targets: %s", cov.summary("training utterances"))
    log.info("phones: %d (stress stripped) from the pronunciations of %d training words; layer %d of %d feeds "
             "the phone CTC head, weight %g", phone_map.num_phones, len(phone_map.prons),
             cfg.model.phone_ctc_layer or (cfg.model.num_layers + 1) // 2, cfg.model.num_layers,
             cfg.model.phone_ctc_weight)
    return phone_map


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train a model as configured; returns a summary (also written to exp_dir/train_summary.json).

    Raises :class:`ConfigError` for unusable input (manifests, an exp dir holding another run),
    :class:`CheckpointLoadError` when ``resume`` finds only unreadable checkpoints, and
    :class:`DivergedError` when most steps have a non-finite loss. Another run training into
    the same exp dir (it holds the exp dir's lock), or an exp dir that cannot be created or
    written, is a :class:`~asr.evaluate.reports.data.ReportError`; a checkpoint or other file that
    cannot be written (no space left) an OSError that names it.
    """
    start, cpu_start = time.time(), _cpu_seconds()
    check_accelerator(cfg.trainer.accelerator)
    quiet_lightning()
    manifests = {"dev": read_manifest_or_fail(cfg.data.dev_manifest)}
    if cfg.data.train_manifest:  # with train_shards too: only the tokenizer's texts come from it
        manifests["train"] = read_manifest_or_fail(cfg.data.train_manifest)
    pl.seed_everything(cfg.seed, workers=True)
    set_threads(cfg.trainer.threads)  # 0: asr.threads.default_threads (never degrades under load)
    if not is_rank_zero():
        # The DDP ranks that rank zero (or torchrun beside it) started: rank zero holds the lock.
        return _train(cfg, resume, overwrite, manifests, start, cpu_start)
    # Two runs into one exp dir would interleave their checkpoints, logs and summaries: the
    # second one stops at once, naming the first (the lock of `asr evaluate`, whose flock the
    # kernel releases when its holder dies, so a killed run's lock is simply taken over).
    with output_lock(cfg.exp_dir, f"asr train, exp_dir={cfg.exp_dir}"):
        return _train(cfg, resume, overwrite, manifests, start, cpu_start)


def _train(cfg: ExperimentConfig, resume: bool, overwrite: bool, manifests: dict[str, list[Utterance]],
           start: float, cpu_start: float) -> dict:
    """:func:`train` once the manifests are read and (on rank zero) the exp dir is held."""
    exp = Path(cfg.exp_dir)
    lead = is_rank_zero()
    if lead:
        prepare_exp_dir(exp, resume, overwrite)
    ckpt_dir = exp / "checkpoints"
    found = find_resume_checkpoint(ckpt_dir, set_aside=lead) if resume else None
    if resume and found is None:
        log.info("--resume: no checkpoint in %s, starting from scratch", ckpt_dir)
    resumed = found[1] if found is not None else None
    if found is not None:
        check_resume_config((found[1].get("hyper_parameters") or {}).get("config"), cfg, found[0])

    tok_path = exp / "tokenizer.json"
    hp = (resumed or {}).get("hyper_parameters") or {}
    if isinstance(hp.get("tokenizer"), dict):
        tokenizer = Tokenizer.from_dict(hp["tokenizer"])  # the resumed network's own vocabulary
    elif resume and tok_path.exists():
        tokenizer = Tokenizer.from_dict(json.loads(tok_path.read_text()))
    else:
        tokenizer = build_tokenizer(cfg, _train_texts(cfg, manifests))
    phone_map = None
    if cfg.model.phone_ctc_weight > 0:
        phone_map = build_phone_map(cfg, _train_texts(cfg, manifests))
        stored = hp.get("phones")
        if resumed is not None and stored is not None and list(stored) != list(phone_map.phones):
            raise ConfigError(f"data.lexicon: {cfg.data.lexicon} now gives {phone_map.num_phones} phones for the "
                              f"training words, the checkpoint resumed was trained on {len(stored)} other ones")
    if lead:
        atomic_write_text(tok_path, json.dumps(tokenizer.to_dict()))
        atomic_write_text(exp / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    rid = run_id(exp, resumed, lead)

    model = AcousticModel(cfg.model, cfg.features.n_mels, tokenizer.vocab_size)
    dm = CTCDataModule(cfg, tokenizer, model, manifests, phone_map=phone_map)
    dm.precompute()
    model.cmvn.set_stats(*dm.cmvn_stats())
    log.info("model: %.2f M parameters, vocabulary %d, output frame %.0f ms", model.num_parameters() / 1e6,
             tokenizer.vocab_size, cfg.features.frame_shift * model.subsampling * 1000)

    checkpoint_io = AtomicCheckpointIO()
    module = CTCModule(model, tokenizer, cfg, run_id=rid, phones=phone_map.phones if phone_map else (),
                       pronunciations=phone_map.prons if phone_map else None)
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
    if cfg.trainer.keep_last > 0:
        # The last N epochs, whatever their dev WER, for `asr export --average-last N` (the
        # weight averaging of SWA over the tail of the schedule). Lightning offers "epoch" as
        # a monitor, so the N highest epochs are the ones kept. A folder of their own: these
        # are not ranked by WER and must not compete with the top-k at `--average`.
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir / TAIL_DIR, filename="epoch{epoch:03d}", monitor="epoch",
                                         mode="max", save_top_k=cfg.trainer.keep_last,
                                         auto_insert_metric_name=False, enable_version_counter=False))
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
        precision=typing.cast(Any, t.precision),  # a str from YAML; Lightning checks the value
        gradient_clip_val=t.gradient_clip_val or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        log_every_n_steps=t.log_every_n_steps,
        callbacks=callbacks,
        logger=[TensorBoardLogger(str(exp), name="tb"), CSVLogger(str(exp), name="csv")],
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,  # the "model: ..." line above says what matters
        use_distributed_sampler=False,  # BucketBatchSampler shards by rank itself
        deterministic=False,
        plugins=[checkpoint_io],
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = None
    if found is not None:
        ckpt_path = str(found[0])
        checkpoint_io.preloaded[ckpt_path] = found[1]
        log.info("resuming from %s (epoch %s, step %s)", ckpt_path, found[1].get("epoch", "?"),
                 found[1].get("global_step", "?"))
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except BaseException as e:
        if trainer.is_global_zero:  # what was skipped is reported even when training fails
            try:
                write_skipped(exp / "skipped.jsonl", dm.skipped)
            except OSError as again:  # the same full disk: the first failure is the one to report
                log.warning("could not write %s (%s)", exp / "skipped.jsonl", again.strerror or again)
        failed = os_error_of(e)
        if failed is not None and failed.errno is not None and failed.filename is None:
            # A write inside Lightning (its CSV log, say) that failed without naming its file.
            raise OSError(failed.errno, failed.strerror, str(exp)) from e
        raise
    if trainer.is_global_zero:
        write_skipped(exp / "skipped.jsonl", dm.skipped)

    ckpt_cb = typing.cast(ModelCheckpoint, callbacks[0])
    summary = {
        "exp_dir": str(exp),
        "run_id": rid,
        "best_checkpoint": ckpt_cb.best_model_path,
        "best_dev_wer": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
        "last_checkpoint": str(last),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_seconds": round(time.time() - start, 1),
        # This process and its finished children (feature workers): the cost that does not
        # depend on what else shares the cores. A resumed run counts its own part only.
        "cpu_seconds": round(_cpu_seconds() - cpu_start, 1),
        "parameters": model.num_parameters(),
        "skipped_utterances": {k: len(v) for k, v in dm.skipped.items()},
        "skipped_steps_nonfinite": module.skipped_steps,
        "train_hours": dm.train_seconds / 3600,
    }
    if trainer.is_global_zero:
        atomic_write_text(exp / "train_summary.json", json.dumps(summary, indent=2))
        log.info("best dev WER %s at %s", summary["best_dev_wer"], summary["best_checkpoint"])
        log.info("results in %s (config.yaml, tokenizer.json, checkpoints/, tb/, csv/, train_summary.json, "
                 "skipped.jsonl)", exp)
    return summary
