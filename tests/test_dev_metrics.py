"""The dev WER/CER that training logs is the WER/CER `asr evaluate` reports for the same
weights: corpus-level (errors summed over the dev set, divided by its reference words), and
under DDP reduced over ranks the same way, each dev utterance scored once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _logged_dev_metrics(exp: Path) -> dict[int, tuple[float, float]]:
    """epoch -> (val_wer, val_cer) from the CSV logger's epoch-end rows."""
    rows = csv.DictReader((exp / "csv" / "version_0" / "metrics.csv").open())
    return {int(r["epoch"]): (float(r["val_wer"]), float(r["val_cer"])) for r in rows if r.get("val_wer")}


@pytest.fixture(scope="module")
def yesno(shared_data, tmp_path_factory) -> Path:
    src = shared_data / "yesno"
    if not src.is_dir():
        pytest.skip(f"yesno corpus not available: {src} does not exist")
    data = tmp_path_factory.mktemp("yesno")
    assert main(["prepare", "yesno", "--src", str(src), "--out", str(data)]) == 0
    return data


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("devices", [1, 2])
def test_logged_dev_wer_equals_evaluate_greedy_on_each_epoch(yesno, tmp_path, devices, capsys):
    exp = tmp_path / "exp"
    # 5 dev utterances in batches of 2: 3 dev batches, which 2 ranks share unevenly. Four
    # epochs of this model go from WER 1 through values in between (one process: WER 0.625,
    # 0.525; two: CER 0.76), so the comparison is not only of trivial rates.
    cmd = [sys.executable, "-m", "asr", "train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={exp}",
           f"data.train_manifest={yesno / 'train.jsonl'}", f"data.dev_manifest={yesno / 'dev.jsonl'}",
           "data.max_batch_size=2", "trainer.max_epochs=4", "trainer.save_top_k=-1", "trainer.threads=1",
           "trainer.progress_bar=false", "trainer.accelerator=cpu", f"trainer.devices={devices}"]
    if devices > 1:
        cmd.append("trainer.strategy=ddp")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = _logged_dev_metrics(exp)
    assert sorted(logged) == [0, 1, 2, 3]
    assert any(0 < rate < 1 for rates in logged.values() for rate in rates), logged
    for ckpt in sorted((exp / "checkpoints").glob("epoch*.ckpt")):
        epoch = int(ckpt.name[len("epoch"):len("epoch") + 3])
        package, out = tmp_path / f"e{epoch}.asr", tmp_path / f"eval{epoch}"
        assert main(["export", str(ckpt), "--out", str(package)]) == 0  # one checkpoint, no averaging
        assert main(["evaluate", str(package), str(yesno / "dev.jsonl"), "--out", str(out),
                     "--decoder", "greedy", "--resamples", "10"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["num_utterances"] == 5
        # torchmetrics keeps float32: equal to its precision
        assert logged[epoch] == pytest.approx((summary["wer"], summary["cer"]), rel=1e-6, abs=1e-7), epoch
    capsys.readouterr()
