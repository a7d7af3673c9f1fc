"""scripts/gpu_check.sh --dry-run: the one-shot GPU check runs end to end on CPU at toy sizes.

The real check runs once, unattended, on a remote GPU machine; this is what makes sure every
code path there (throughput bench, flip/packed agreement, DataLoader rate, CLI prepare ->
train -> --resume -> export -> evaluate, report writing) works before that one chance.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.data
def test_gpu_check_dry_run(tmp_path: Path, shared_data: Path) -> None:
    yesno = shared_data / "yesno"
    if not yesno.is_dir():
        pytest.skip(f"{yesno} not found")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--yesno-data", str(yesno),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert "errors" not in result, result.get("errors")
    assert result["dry_run"] is True

    variants = result["bench"]["variants"]
    assert set(variants) == {f"{v}/{p}" for v in ("flip", "packed", "padded") for p in ("fp32", "bf16")}
    for name, v in variants.items():
        assert v["error"] is None, name
        assert v["steps"] >= 1, name
        for key in ("step_ms", "audio_s_per_s"):
            assert isinstance(v[key], float) and math.isfinite(v[key]) and v[key] > 0, (name, key)

    agree = result["agreement"]
    for p in ("fp32", "bf16"):
        for pair in ("packed", "padded"):
            row = agree[p][pair]
            for key in ("max_abs_diff_log_probs", "max_abs_diff_grads"):
                assert math.isfinite(row[key]), (p, pair, key)
    # Exactness is a property of the code, so it must hold on CPU in fp32 too.
    assert agree["fp32"]["packed"]["pass"] is True, agree["fp32"]
    assert agree["fp32"]["padded"]["max_abs_diff_log_probs"] > agree["fp32"]["packed"]["max_abs_diff_log_probs"]

    train = result["train"]
    assert train["epochs_run"] == 2  # one timed epoch, then --resume for one more
    assert train["skipped_steps_nonfinite"] == 0
    assert 0.0 <= train["dev_wer"] <= 1.0 or train["dev_wer"] >= 0.0
    assert set(result["loader"]["workers"]) == {"1", "2"}
    assert all(w["audio_s_per_s"] > 0 for w in result["loader"]["workers"].values())
    assert result["epoch_estimate"]["variants"]["flip/bf16"]["bound_by"] in ("GPU (training step)", "data loading (CPU)")

    targets = {t["target"]: t["verdict"] for t in result["targets"]}
    perf = [v for k, v in targets.items() if "agree" not in k]
    assert perf and all(v == "n/a (dry run)" for v in perf), targets
    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in md and "| flip/bf16 |" in md and "n/a (dry run)" in md
    assert (out / "cli.log").stat().st_size > 0 and (out / "gpu_check.log").stat().st_size > 0
