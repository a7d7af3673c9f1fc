"""Training a streaming model: truncated BPTT in the training step, `asr train --init-from`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tone_corpus import make_corpus

from asr.config import ConfigError, TrainerConfig
from asr.package import load_package

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path: Path, exp: str, *args: str) -> subprocess.CompletedProcess:
    if not (tmp_path / "train.jsonl").exists():
        make_corpus(tmp_path)
    cmd = [sys.executable, "-m", "asr", "train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={tmp_path / exp}",
           f"data.train_manifest={tmp_path / 'train.jsonl'}", f"data.dev_manifest={tmp_path / 'dev.jsonl'}",
           "model.hidden=16", "model.num_layers=2", "trainer.progress_bar=false", "data.max_batch_seconds=8", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))


def _export(exp: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "asr", "export", str(exp), "--out", str(exp / "model.asr")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return exp / "model.asr"


@pytest.mark.slow
def test_init_from_turns_a_full_context_model_into_a_streaming_one(tmp_path: Path) -> None:
    proc = _train(tmp_path, "full", "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = _export(tmp_path / "full")
    # A learning rate of ~0: the streaming run's weights are the package's after its one step.
    proc = _train(tmp_path, "lc", "model.chunk_frames=3", "model.right_context_frames=2", "model.cmvn=global",
                  "trainer.max_steps=1", "trainer.max_epochs=-1", "optim.lr=1e-12", "optim.warmup_steps=0",
                  "--init-from", str(base))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "lc" / "train_summary.json").read_text())
    assert summary["init_from"]["path"] == str(base.resolve())
    streaming = load_package(_export(tmp_path / "lc"))
    full = load_package(base)
    assert streaming.info["kind"].startswith("streaming LC-BLSTM: chunks of 3 frames + 2")
    assert full.info["kind"].startswith("full context")
    for (name, a), (_, b) in zip(full.model.state_dict().items(), streaming.model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    # Weights of another shape: one line, exit 2.
    proc = _train(tmp_path, "bad", "model.hidden=24", "--init-from", str(base))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--init-from" in errors[0] and "do not fit" in errors[0]


def test_tbptt_chunks_is_checked() -> None:
    with pytest.raises(ConfigError, match="trainer.tbptt_chunks"):
        TrainerConfig(tbptt_chunks=-1).validate()
