"""Shared test inputs for the fault suites: a tiny untrained model package and noise audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.config import ExperimentConfig, to_dict
from asr.model import AcousticModel, ModelConfig
from asr.text import CharTokenizer
from asr.train.export import export

SR = 16000
TOKENIZER = CharTokenizer("abcdefghijklmnopqrstuvwxyz'")


def make_tiny_package(folder: Path, name: str = "model.asr", **model: object) -> Path:
    """A tiny untrained model package (random weights): enough for every fault path.
    ``model``: ModelConfig fields to change (a streaming package: chunk_frames=...)."""
    base: dict = {"hidden": 8, "num_layers": 1, "conv_channels": 4, "dropout": 0.0, **model}
    cfg = ExperimentConfig(model=ModelConfig(**base))
    torch.manual_seed(0)
    model = AcousticModel(cfg.model, cfg.features.n_mels, TOKENIZER.vocab_size)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": to_dict(cfg), "tokenizer": TOKENIZER.to_dict()}}
    torch.save(ckpt, folder / "a.ckpt")
    return export([folder / "a.ckpt"], folder / name)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def wav(path: Path, seconds: float = 0.5, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, noise(seconds, seed), SR)
    return path
