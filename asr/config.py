"""Typed, frozen configuration filled from YAML with ``key=value`` overrides.

Config flows one way: YAML -> dataclasses -> code. Unknown keys and type changes are
errors that name the key; cross-field rules live in :meth:`ExperimentConfig.validate`.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from asr.features import ConfigError, FeatureConfig
from asr.files import atomic_write_text
from asr.model import ModelConfig

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "save_config", "to_dict"]


@dataclass(frozen=True)
class DataConfig:
    train_manifest: str = ""  # JSONL manifest of the training set (required unless train_shards is set)
    train_shards: str = ""  # shards from `asr shard`: a folder with index.json, or a brace pattern / pipe: URL; streamed instead of train_manifest
    shards_index: str = ""  # index.json of train_shards given as a URL (default: index.json beside a local pattern)
    shard_shuffle_buffer: int = 1000  # utterances in the streaming shuffle buffer (train_shards)
    dev_manifest: str = ""  # JSONL manifest used for model selection (required)
    tokenizer: str = "char"  # char | bpe
    bpe_vocab_size: int = 256  # sentencepiece vocabulary size when tokenizer=bpe
    max_batch_seconds: float = 200.0  # cap on padded audio seconds per batch (bucketing)
    max_batch_size: int = 64  # cap on utterances per batch
    num_buckets: int = 20  # duration buckets for the batch sampler
    bucketing: bool = True  # False = random batches (for benchmarking the sampler)
    max_duration: float = 30.0  # longer training utterances are skipped and counted
    num_workers: int = 0  # worker processes (0 = the main process): they fill the feature cache before training; the training DataLoader uses them only without the cache (a cache lookup needs no worker) or with train_shards (streamed)
    cache_features: bool = True  # compute the log-mels of every train and dev utterance (every speed_perturb version) before the first epoch and keep them in memory; streamed train_shards are never cached (their dev set is)
    speed_perturb: tuple[float, ...] = ()  # e.g. [0.9, 1.0, 1.1]: each epoch uses one speed per utterance at random; with the cache every version is kept
    lexicon: str = ""  # pronunciation lexicon (WORD PHONE PHONE ... per line) for model.phone_ctc_weight; only the training transcripts' words are looked up
    features_on_device: bool | str = "auto"  # without the cache: workers only decode (+ resample, speed-perturb) and log-mels are computed on the accelerator after the batch is moved there; auto = when cache_features is false and training runs on a GPU

    def validate(self) -> None:
        if not (self.train_manifest or self.train_shards) or not self.dev_manifest:
            raise ConfigError("data.train_manifest (or data.train_shards) and data.dev_manifest are required")
        if self.train_shards and not self.bucketing:
            raise ConfigError("data.bucketing=false is not available with data.train_shards (streamed batches "
                              "are always bucketed: their count must be known before the epoch)")
        if self.shard_shuffle_buffer < 1:
            raise ConfigError(f"data.shard_shuffle_buffer must be >= 1 (is {self.shard_shuffle_buffer})")
        if self.tokenizer not in ("char", "bpe"):
            raise ConfigError(f"data.tokenizer must be char or bpe (is {self.tokenizer!r})")
        if self.bpe_vocab_size < 2:
            raise ConfigError(f"data.bpe_vocab_size must be >= 2 (is {self.bpe_vocab_size})")
        if self.max_batch_seconds <= 0 or self.max_batch_size < 1:
            raise ConfigError("data.max_batch_seconds must be > 0 and data.max_batch_size >= 1")
        if self.num_buckets < 1 or self.num_workers < 0 or self.max_duration <= 0:
            raise ConfigError("data.num_buckets must be >= 1, data.num_workers >= 0 and data.max_duration > 0")
        if any(f <= 0 for f in self.speed_perturb):
            raise ConfigError(f"data.speed_perturb factors must be > 0 (are {list(self.speed_perturb)})")
        if self.features_on_device not in (True, False, "auto"):
            raise ConfigError(f"data.features_on_device must be true, false or auto (is {self.features_on_device!r})")
        if self.features_on_device is True and self.cache_features:
            raise ConfigError("data.features_on_device=true needs data.cache_features=false (cached features are "
                              "computed once, so there is nothing to move to the device)")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    warmup_steps: int = 200  # linear warm-up from 0 to lr
    schedule: str = "cosine"  # cosine | constant | noam, applied after warm-up
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    # SWA's learning-rate half: the last N epochs hold the rate the schedule reached when they
    # began, instead of decaying further; average them with trainer.keep_last=N and
    # `asr export --average-last N` (SWA's weight averaging). 0 = off.
    swa_epochs: int = 0

    def validate(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("optim.lr must be > 0, optim.weight_decay and optim.warmup_steps >= 0")
        if self.schedule not in ("cosine", "constant", "noam"):
            raise ConfigError(f"optim.schedule must be cosine, constant or noam (is {self.schedule!r})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1] (is {self.min_lr_ratio})")
        if self.swa_epochs < 0:
            raise ConfigError(f"optim.swa_epochs must be >= 0 (is {self.swa_epochs})")


@dataclass(frozen=True)
class TrainerConfig:
    max_epochs: int = 30  # training epochs
    max_steps: int = -1  # stop after this many optimiser steps (-1 = no limit)
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: Any = "auto"  # number of devices or "auto"
    num_nodes: int = 1  # machines for DDP
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    precision: str = "32-true"  # 32-true | bf16-mixed | 16-mixed
    gradient_clip_val: float = 5.0  # clip gradient norm (0 = off)
    accumulate_grad_batches: int = 1  # gradient accumulation
    check_val_every_n_epoch: int = 1  # validation frequency
    log_every_n_steps: int = 10  # logging frequency
    save_top_k: int = 3  # keep the k best checkpoints by dev WER
    keep_last: int = 0  # also keep the last N epochs' checkpoints (checkpoints/tail/) for `asr export --average-last N`
    early_stopping_patience: int = 0  # epochs without dev WER improvement before stopping (0 = off)
    progress_bar: bool = True  # rich progress bar
    threads: int = 0  # torch CPU threads (0 = asr.threads.default_threads: half the cores, at most 4)
    # Truncated backpropagation through time for a streaming model (model.chunk_frames): the
    # forward state carried from chunk to chunk is detached every N chunks (0 = never).
    tbptt_chunks: int = 1

    def validate(self) -> None:
        if self.max_epochs < 1 and self.max_epochs != -1:
            raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1: no limit) (is {self.max_epochs})")
        if self.max_epochs == -1 and self.max_steps < 1:
            raise ConfigError("trainer.max_epochs=-1 needs trainer.max_steps >= 1")
        if self.max_steps < 1 and self.max_steps != -1:
            raise ConfigError(f"trainer.max_steps must be >= 1 (or -1: no limit) (is {self.max_steps})")
        for key in ("num_nodes", "accumulate_grad_batches", "check_val_every_n_epoch", "log_every_n_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1 (is {getattr(self, key)})")
        if self.save_top_k < -1:
            raise ConfigError(f"trainer.save_top_k must be >= -1 (is {self.save_top_k})")
        if self.keep_last < 0:
            raise ConfigError(f"trainer.keep_last must be >= 0 (is {self.keep_last})")
        if self.tbptt_chunks < 0:
            raise ConfigError(f"trainer.tbptt_chunks must be >= 0 (is {self.tbptt_chunks})")
        if self.gradient_clip_val < 0 or self.early_stopping_patience < 0 or self.threads < 0:
            raise ConfigError("trainer.gradient_clip_val, trainer.early_stopping_patience and trainer.threads must be >= 0")


@dataclass(frozen=True)
class ExperimentConfig:
    exp_dir: str = "exp/default"  # where checkpoints, logs and the resolved config go
    seed: int = 1234  # everything random is seeded from this
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key, section by section."""
        if not self.exp_dir:
            raise ConfigError("exp_dir must not be empty")
        for section in (self.data, self.features, self.model, self.optim, self.trainer):
            section.validate()
        if self.optim.swa_epochs and self.trainer.max_epochs == -1:
            raise ConfigError("optim.swa_epochs counts the last epochs, so it needs trainer.max_epochs >= 1 "
                              "(is -1: no limit)")
        if self.model.phone_ctc_weight > 0:
            if not self.data.lexicon:
                raise ConfigError("model.phone_ctc_weight > 0 needs data.lexicon (a pronunciation lexicon: "
                                  "WORD PHONE PHONE ... per line)")
            if not Path(self.data.lexicon).is_file():
                raise ConfigError(f"data.lexicon: {self.data.lexicon}: no such file")


def to_dict(cfg: Any) -> dict:
    """Dataclass -> plain dict (tuples as lists) suitable for YAML/JSON."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(typing.cast(type, tp), value, prefix=key + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the float it means.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if tp is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


# Keys that configs once had, with what replaced them. A YAML file or override using one is
# an error that says so; configs stored inside checkpoints and model packages written by an
# older version have them dropped on load (drop_retired_keys), so old models keep loading.
RETIRED_KEYS: dict[str, str] = {
    "data.test_manifest": "the test split is scored by `asr evaluate MODEL TEST.jsonl`, never during training",
}


def drop_retired_keys(data: dict) -> dict:
    """A copy of a nested config dict without the keys in :data:`RETIRED_KEYS`."""
    out = copy.deepcopy(data)
    for key in RETIRED_KEYS:
        *sections, leaf = key.split(".")
        node: Any = out
        for s in sections:
            node = node.get(s) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    retired = [prefix + k for k in unknown if prefix + k in RETIRED_KEYS]
    if retired:
        raise ConfigError("; ".join(f"{k} is no longer a config key: {RETIRED_KEYS[k]}" for k in retired))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in unknown)}; valid keys: {', '.join(sorted(prefix + n for n in names))}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    data = apply_overrides(data, list(overrides))
    cfg = from_dict(ExperimentConfig, data)
    cfg.validate()
    return cfg


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
