"""Training: a thin LightningModule around :class:`asr.model.AcousticModel`, a DataModule
with the duration-bucketed sampler, and Trainer assembly from :mod:`asr.config`.

``asr train conf/<recipe>.yaml key=value ...``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader
from torchmetrics.text import CharErrorRate, WordErrorRate

from asr.config import ConfigError, ExperimentConfig, load_config, save_config, to_dict
from asr.data.dataset import Batch, FeatureDataset, Skipped, collate, fill_cache, filter_utterances
from asr.data.manifest import read_manifest
from asr.data.sampler import BucketBatchSampler
from asr.decoding import greedy_decode
from asr.features import compute_cmvn_stats
from asr.model import AcousticModel
from asr.text import BpeTokenizer, CharTokenizer, Tokenizer

CMVN_MAX_UTTERANCES = 3000  # without a feature cache, CMVN stats come from a sample this big


class CTCModule(pl.LightningModule):
    """CTC loss, AdamW with warm-up + decay, corpus-level greedy WER/CER on the dev set."""

    def __init__(self, model: AcousticModel, tokenizer: Tokenizer, cfg: ExperimentConfig) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        # Everything needed to rebuild the network travels inside each checkpoint.
        self.save_hyperparameters({"config": to_dict(cfg), "tokenizer": tokenizer.to_dict()})
        self.val_wer = WordErrorRate()  # corpus-level, synced across DDP ranks
        self.val_cer = CharErrorRate()
        self.skipped_steps = 0

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

    def training_step(self, batch: Batch, batch_idx: int):
        loss, _, _ = self.ctc_loss(batch)
        if not torch.isfinite(loss):
            self.skipped_steps += 1
            self.log("train/skipped_nonfinite", float(self.skipped_steps))
            print(f"warning: non-finite loss at step {self.global_step} (batch {batch.ids[:3]}...): step skipped")
            if self.trainer.world_size == 1:
                return None  # Lightning skips the optimiser step
            # Under DDP every rank must step together: contribute zero gradients instead.
            return sum(p.sum() for p in self.model.parameters()) * 0.0
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch.ids))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
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
    """Manifests -> filtered, feature-cached datasets -> bucketed DataLoaders."""

    def __init__(self, cfg: ExperimentConfig, tokenizer: Tokenizer, model: AcousticModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        d = cfg.data
        self.skipped: dict[str, Skipped] = {}
        self.datasets: dict[str, FeatureDataset] = {}
        for split, path in (("train", d.train_manifest), ("dev", d.dev_manifest)):
            utts = read_manifest(path)
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
        ds = self.datasets["train"]
        n = len(ds) if ds.cache is not None else min(len(ds), CMVN_MAX_UTTERANCES)
        step = max(1, len(ds) // n)
        # Statistics of the unperturbed audio: that is what the model sees at inference.
        return compute_cmvn_stats(ds.features(i, 1.0) for i in range(0, len(ds), step))

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
        return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                          persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", shuffle=False)


class SamplerEpoch(pl.Callback):
    """Reshuffle the bucketing sampler every epoch.

    Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler``
    but not on a custom ``batch_sampler`` itself; without this every epoch would replay the
    first epoch's batches. Runs before the epoch's iterator is created.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        batch_sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if hasattr(batch_sampler, "set_epoch"):
            batch_sampler.set_epoch(trainer.current_epoch)


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


def _progress(iterable, description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True) as progress:
        yield from progress.track(iterable, total=total, description=description)


def train(cfg: ExperimentConfig, resume: bool = False) -> dict:
    """Train a model as configured; returns a summary (also written to exp_dir/train_summary.json)."""
    start = time.time()
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    exp = Path(cfg.exp_dir)
    exp.mkdir(parents=True, exist_ok=True)

    tok_path = exp / "tokenizer.json"
    if resume and tok_path.exists():
        tokenizer = Tokenizer.from_dict(json.loads(tok_path.read_text()))
    else:
        tokenizer = build_tokenizer(cfg, [u.text for u in read_manifest(cfg.data.train_manifest)])
        tok_path.write_text(json.dumps(tokenizer.to_dict()))
    save_config(cfg, exp / "config.yaml")

    model = AcousticModel(cfg.model, cfg.features.n_mels, tokenizer.vocab_size)
    dm = CTCDataModule(cfg, tokenizer, model)
    dm.precompute()
    model.cmvn.set_stats(*dm.cmvn_stats())
    print(f"model: {model.num_parameters() / 1e6:.2f} M parameters, vocabulary {tokenizer.vocab_size}, "
          f"output frame {cfg.features.frame_shift * model.subsampling * 1000:.0f} ms")

    module = CTCModule(model, tokenizer, cfg)
    ckpt_dir = exp / "checkpoints"
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}-wer{val_wer:.4f}", monitor="val_wer",
                        mode="min", save_top_k=cfg.trainer.save_top_k, auto_insert_metric_name=False),
        # last.ckpt every epoch: Lightning's save_last only rewrites it when a top-k checkpoint
        # was saved, so --resume would restart from the last improvement.
        ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        EpochSummary(),
        SamplerEpoch(),
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
    )
    last = ckpt_dir / "last.ckpt"
    ckpt_path = str(last) if resume and last.exists() else None
    if resume and ckpt_path is None:
        print(f"--resume: no {last}, starting from scratch")
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)

    ckpt_cb = callbacks[0]
    summary = {
        "exp_dir": str(exp),
        "best_checkpoint": ckpt_cb.best_model_path,
        "best_dev_wer": float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None,
        "last_checkpoint": str(last),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_seconds": round(time.time() - start, 1),
        "parameters": model.num_parameters(),
        "skipped_utterances": {k: len(v) for k, v in dm.skipped.items()},
        "skipped_steps_nonfinite": module.skipped_steps,
        "train_hours": sum(dm.datasets["train"].durations) / 3600,
    }
    if trainer.is_global_zero:
        (exp / "train_summary.json").write_text(json.dumps(summary, indent=2))
        skipped_path = exp / "skipped.jsonl"
        with skipped_path.open("w") as f:
            for split, sk in dm.skipped.items():
                for utt_id, reason in sk.items:
                    f.write(json.dumps({"id": utt_id, "split": split, "reason": reason}) + "\n")
        print(f"best dev WER {summary['best_dev_wer']} at {summary['best_checkpoint']}")
        print(f"results in {exp} (config.yaml, tokenizer.json, checkpoints/, tb/, csv/, train_summary.json)")
    return summary


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config, e.g. conf/yesno.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_epochs=5 model.cell=gru")
    parser.add_argument("--resume", action="store_true", help="continue from EXP_DIR/checkpoints/last.ckpt")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}")
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    train(cfg, resume=args.resume)
    return 0
