"""Training: :func:`train` assembles the data, the callbacks and the Trainer from an
:class:`ExperimentConfig`, fits the LightningModule (:class:`asr.train.module.CTCModule`) and
writes the run's summary.

The module itself is :mod:`asr.train.module`; the data side :mod:`asr.train.datamodule`;
callbacks and checkpoint I/O :mod:`asr.train.callbacks`; the experiment directory and resuming
:mod:`asr.train.resume`. ``asr train`` is :mod:`asr.commands.train`.
"""

from __future__ import annotations

import json
import logging
import resource
import time
import typing
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from asr.config import ConfigError, ExperimentConfig, to_dict
from asr.data.lexicon import LexiconError, PhoneMap, read_lexicon
from asr.data.manifest import Utterance
from asr.data.shards import ShardError, open_shard_set, read_texts
from asr.files import atomic_write_text, os_error_of
from asr.lock import output_lock
from asr.log import is_rank_zero
from asr.model import AcousticModel
from asr.package import ModelPackage, PackageError, load_package, weights_mismatch
from asr.text import BpeTokenizer, CharTokenizer, Tokenizer
from asr.threads import set_threads
from asr.train.callbacks import AtomicCheckpointIO, EpochSummary, SamplerEpoch, SkippedItems
from asr.train.checkpoint import TAIL_DIR
from asr.train.datamodule import CTCDataModule, read_manifest_or_fail
from asr.train.module import CTCModule
from asr.train.resume import (
    check_resume_config,
    find_resume_checkpoint,
    prepare_exp_dir,
    run_id,
    write_skipped,
)

log = logging.getLogger(__name__)

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


def load_init_package(path: str, cfg: ExperimentConfig) -> ModelPackage:
    """The package ``--init-from`` names, checked against the config (one-line PackageError:
    missing, unreadable, or weights of other shapes than the config builds)."""
    package = load_package(path, quantize=False)
    if package.info.get("quantize") == "int8":
        raise PackageError(f"{path}: an int8 package cannot initialise training; export it without --int8")
    shapes = {k: tuple(v.shape) for k, v in package.model.state_dict().items()}
    why = weights_mismatch(cfg, package.tokenizer.vocab_size, shapes)
    if package.config.features != cfg.features:
        why = f"its features are {package.config.features}, the config's {cfg.features}"
    if why:
        raise PackageError(f"{path}: --init-from: its weights do not fit this config's model: {why}")
    return package


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False,
          init_from: str | None = None) -> dict:
    """Train a model as configured; returns a summary (also written to exp_dir/train_summary.json).

    Raises :class:`ConfigError` for unusable input (manifests, an exp dir holding another run),
    :class:`CheckpointLoadError` when ``resume`` finds only unreadable checkpoints, and
    :class:`DivergedError` when most steps have a non-finite loss. Another run training into
    the same exp dir (it holds the exp dir's lock), or an exp dir that cannot be created or
    written, is a :class:`~asr.evaluate.reports.data.ReportError`; a checkpoint or other file that
    cannot be written (no space left) an OSError that names it.

    ``init_from``: a model package whose weights (and vocabulary) the new model starts from,
    e.g. a full-context model fine-tuned into a streaming one (``model.chunk_frames``). The
    config may change anything that keeps the weights' shapes (chunking, CMVN mode, dropout,
    augmentation); a package whose shapes do not fit is a :class:`PackageError`. Ignored when
    ``resume`` finds a checkpoint: that run's own weights win.
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
        return _train(cfg, resume, overwrite, manifests, start, cpu_start, init_from)
    # Two runs into one exp dir would interleave their checkpoints, logs and summaries: the
    # second one stops at once, naming the first (the lock of `asr evaluate`, whose flock the
    # kernel releases when its holder dies, so a killed run's lock is simply taken over).
    with output_lock(cfg.exp_dir, f"asr train, exp_dir={cfg.exp_dir}"):
        return _train(cfg, resume, overwrite, manifests, start, cpu_start, init_from)


def _train(cfg: ExperimentConfig, resume: bool, overwrite: bool, manifests: dict[str, list[Utterance]],
           start: float, cpu_start: float, init_from: str | None = None) -> dict:
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
    init = None
    if init_from is not None and resumed is None:
        init = load_init_package(init_from, cfg)
    if isinstance(hp.get("tokenizer"), dict):
        tokenizer = Tokenizer.from_dict(hp["tokenizer"])  # the resumed network's own vocabulary
    elif init is not None:
        tokenizer = init.tokenizer  # the vocabulary its weights were trained on
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
    if init is not None:
        # Every weight and the CMVN statistics the package was trained with (shapes checked).
        model.load_state_dict(init.model.state_dict(), strict=True)
        log.info("initialised from %s (sha256 %s)", init_from, str(init.info.get("sha256", ""))[:12])
    log.info("model: %.2f M parameters, vocabulary %d, output frame %.0f ms", model.num_parameters() / 1e6,
             tokenizer.vocab_size, cfg.features.frame_shift * model.subsampling * 1000)

    checkpoint_io = AtomicCheckpointIO()
    module = CTCModule(model, tokenizer, cfg, run_id=rid, phones=phone_map.phones if phone_map else (),
                       pronunciations=phone_map.prons if phone_map else None)
    if init is not None and module.phone_head is not None and init.phone_head is not None:
        if phone_map is not None and tuple(init.phone_head.phones) == tuple(phone_map.phones):
            module.phone_head.load_state_dict(init.phone_head.linear.state_dict())
        else:
            log.info("the phone head starts afresh: %s was trained on other phones", init_from)
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
    summary: dict[str, Any] = {
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
    if init is not None:
        summary["init_from"] = {"path": str(init.info["path"]), "sha256": init.info["sha256"]}
    if trainer.is_global_zero:
        atomic_write_text(exp / "train_summary.json", json.dumps(summary, indent=2))
        log.info("best dev WER %s at %s", summary["best_dev_wer"], summary["best_checkpoint"])
        log.info("results in %s (config.yaml, tokenizer.json, checkpoints/, tb/, csv/, train_summary.json, "
                 "skipped.jsonl)", exp)
    return summary
