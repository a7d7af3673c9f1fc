"""benchmarks/gpu_check.sh --dry-run: the one-shot GPU check runs end to end on CPU at toy sizes.

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
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run", "--yesno-data", str(yesno),
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
    assert isinstance(train["dev_wer"], float) and train["dev_wer"] >= 0.0
    assert set(result["loader"]["workers"]) == {"1", "2"}
    assert all(w["audio_s_per_s"] > 0 for w in result["loader"]["workers"].values())
    assert result["epoch_estimate"]["variants"]["flip/bf16"]["bound_by"] in ("training step", "data loading (CPU)")

    targets = {t["target"]: t["verdict"] for t in result["targets"]}
    perf = [v for k, v in targets.items() if "agree" not in k]
    assert perf and all(v == "n/a (dry run)" for v in perf), targets
    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in md and "| flip/bf16 |" in md and "n/a (dry run)" in md
    assert (out / "cli.log").stat().st_size > 0 and (out / "gpu_check.log").stat().st_size > 0


def _load_script():
    """benchmarks/gpu_check.py as a module (registered first: its dataclasses look it up)."""
    import importlib.util

    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_epoch_marks_time_epochs_from_line_arrival() -> None:
    gc = _load_script()
    lines = ["train: 3 utterances", "model: 0.01 M parameters", "noise",
             "epoch 0 step 7: train/loss 1.0 [1 s]", "epoch 1 step 14: train/loss 0.9 [2 s]"]
    fit, marks = gc.epoch_marks(lines, [0.5, 2.0, 2.1, 3.25, 4.0])
    assert fit == 2.0
    assert marks == [(0, 7, 3.25), (1, 14, 4.0)]


def test_targets_pass_fail_on_a_real_run_and_na_in_dry_run() -> None:
    gc = _load_script()
    rate = {"flip": 3500.0, "packed": 2000.0, "padded": 3000.0}
    result = {
        "bench": {"variants": {f"{v}/{p}": {"audio_s_per_s": r} for v, r in rate.items() for p in ("fp32", "bf16")}},
        "agreement": {p: {"packed": {"max_abs_diff_log_probs": 1e-4, "max_abs_diff_grads": 2e-3, "pass": False}}
                      for p in ("fp32", "bf16")},
    }
    verdicts = [t["verdict"] for t in gc.targets(result, dry=False)]
    assert verdicts == ["PASS", "PASS", "PASS", "PASS", "FAIL", "FAIL"]
    result["bench"]["variants"]["flip/bf16"]["audio_s_per_s"] = 1000.0
    verdicts = [t["verdict"] for t in gc.targets(result, dry=False)]
    assert verdicts[1:4] == ["FAIL", "FAIL", "FAIL"]
    dry = [t["verdict"] for t in gc.targets(result, dry=True)]
    assert dry[:4] == ["n/a (dry run)"] * 4
    assert gc.targets({}, dry=False)[0]["verdict"] == "n/a (no data)"


def test_pack_speechocean_copies_whole_speakers_up_to_the_limit(tmp_path: Path) -> None:
    gc = _load_script()
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "train").mkdir(parents=True)
    utts = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    for uid, spk in utts.items():
        (src / "WAVE" / spk).mkdir(parents=True, exist_ok=True)
        (src / "WAVE" / spk / f"{uid}.flac").write_bytes(b"x" * 400_000)
    (src / "train" / "wav.scp").write_text("".join(f"{u}\tWAVE/{s}/{u}.flac\n" for u, s in utts.items()))
    (src / "train" / "text").write_text("".join(f"{u}\tHELLO\n" for u in utts))
    (src / "train" / "utt2spk").write_text("".join(f"{u}\t{s}\n" for u, s in utts.items()))
    gc.pack_speechocean(src, dest, max_mb=1.0)  # A (0.8 MB) fits, A + B does not
    assert (dest / "train" / "wav.scp").read_text().split("\n")[:2] == ["a1 WAVE/A/a1.flac", "a2 WAVE/A/a2.flac"]
    assert sorted(p.name for p in (dest / "WAVE").rglob("*.flac")) == ["a1.flac", "a2.flac"]
    assert (dest / "train" / "utt2spk").read_text() == "a1 A\na2 A\n"
