"""Training under faults: kills at any moment, bad audio, planted checkpoints,
reused exp dirs and bad input all end in a finished run or one `error:` line, never in a
traceback, a lost checkpoint or a silently broken model.

The corpus is 16 synthetic two-word tone files (1.1 s each): a tiny model trains an epoch
in about a second, so the kill/resume tests stay short.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tone_corpus import make_corpus

from asr.audio import AudioError
from asr.config import ConfigError, load_config
from asr.data.dataset import FeatureDataset, Unreadable, collate
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.features import FeatureConfig, GlobalCMVN, compute_cmvn_stats

ROOT = Path(__file__).resolve().parents[2]
STEPS_PER_EPOCH = 4  # 16 utterances of 1.1 s, at most 4 (yesno.yaml) and 8 s per batch


def add_bad_files(root: Path, manifest: Path) -> list[str]:
    """Append a 0-byte file and a float WAV with huge finite samples (~1e29) to ``manifest``."""
    empty = root / "empty.wav"
    empty.write_bytes(b"")
    huge = root / "huge.wav"
    sf.write(huge, np.full(17600, 1e29, dtype="float32"), 16000, subtype="FLOAT")
    utts = read_manifest(manifest) + [
        Utterance("empty", str(empty), 1.1, "lo hi", "spk0", 16000),
        Utterance("huge", str(huge), 1.1, "hi lo", "spk0", 16000),
    ]
    write_manifest(manifest, utts)
    return ["empty", "huge"]


def train_cmd(tmp: Path, *overrides: str, config: str = "conf/yesno.yaml") -> list[str]:
    return [sys.executable, "-m", "asr", "train", str(ROOT / config), f"exp_dir={tmp / 'exp'}",
            f"data.train_manifest={tmp / 'train.jsonl'}", f"data.dev_manifest={tmp / 'dev.jsonl'}",
            "model.hidden=16", "model.num_layers=1", "trainer.progress_bar=false", "data.max_batch_seconds=8",
            "trainer.threads=1", *overrides]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1",
             PYTHONPATH=str(ROOT))
    e.pop("ASR_TEST_CHECKPOINT_WRITE_DELAY", None)
    e.update(extra)
    return e


def run(cmd: list[str], **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(**extra_env), timeout=300, cwd=ROOT)


def start(cmd: list[str], log: Path, **extra_env: str) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env(**extra_env), cwd=ROOT)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition()`` until true; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def summary(tmp: Path) -> dict:
    return json.loads((tmp / "exp" / "train_summary.json").read_text())


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


# --- kills -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_finishes_the_planned_epochs(tmp_path):
    make_corpus(tmp_path)
    last = tmp_path / "exp" / "checkpoints" / "last.ckpt"
    proc = start(train_cmd(tmp_path, "trainer.max_epochs=3"), tmp_path / "log")
    wait_for(last.exists, proc, "the first last.ckpt")
    kill9(proc)  # in epoch 1, after epoch 0's checkpoints
    done = run(train_cmd(tmp_path, "trainer.max_epochs=3") + ["--resume"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resuming from" in done.stderr  # progress is logged to stderr
    s = summary(tmp_path)
    assert s["epochs"] == 3 and s["steps"] == 3 * STEPS_PER_EPOCH


def staged(tmpdir: Path) -> list[Path]:
    """Files in TMPDIR big enough to be (part of) a checkpoint: none may be staged there."""
    return [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size > 4096]


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_last_ckpt_and_resume_cleans_up(tmp_path):
    make_corpus(tmp_path)
    ckpts = tmp_path / "exp" / "checkpoints"
    last = ckpts / "last.ckpt"
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    tmpdir = Path(tempfile.mkdtemp(dir=shm))  # another filesystem than the exp dir
    proc = start(train_cmd(tmp_path, "trainer.max_epochs=3"), tmp_path / "log",
                 TMPDIR=str(tmpdir), ASR_TEST_CHECKPOINT_WRITE_DELAY="1.0")
    # The second write of last.ckpt: an intact last.ckpt exists and its replacement is pending.
    wait_for(lambda: last.exists() and any(ckpts.glob("last.ckpt.*.tmp")), proc, "a pending last.ckpt write")
    kill9(proc)
    orphans = list(ckpts.glob("*.tmp"))
    assert orphans and not staged(tmpdir)
    intact = torch.load(last, map_location="cpu", weights_only=True)
    assert intact["epoch"] == 0
    assert intact["hyper_parameters"]["run_id"] == json.loads((tmp_path / "exp" / "run.json").read_text())["run_id"]

    # The damage a non-atomic write used to do: resume must fall back, in one warning line.
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    done = run(train_cmd(tmp_path, "trainer.max_epochs=3") + ["--resume"], TMPDIR=str(tmpdir))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(last) in warnings[0] and "resuming from" in warnings[0], done.stderr
    assert "removed 1 temp file(s)" in done.stderr
    assert summary(tmp_path)["epochs"] == 3
    assert not list((tmp_path / "exp").rglob("*.tmp")) and not staged(tmpdir)
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2
    shutil.rmtree(tmpdir)


@pytest.mark.slow
def test_kill_during_feature_caching_then_resume(tmp_path):
    make_corpus(tmp_path, repeats=8)
    log = tmp_path / "log"
    proc = start(train_cmd(tmp_path, "trainer.max_epochs=1"), log)
    # "dev: ..." is printed just before the feature caches are filled.
    wait_for(lambda: "\ndev: " in log.read_text(), proc, "feature caching")
    kill9(proc)
    assert not list((tmp_path / "exp").rglob("*.ckpt"))
    done = run(train_cmd(tmp_path, "trainer.max_epochs=1") + ["--resume"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "starting from scratch" in done.stderr
    assert summary(tmp_path)["epochs"] == 1 and not list((tmp_path / "exp").rglob("*.tmp"))


# --- bad audio ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["true", "false"])
def test_unreadable_and_huge_sample_files_are_skipped_and_counted(tmp_path, cache):
    train_m, dev_m = make_corpus(tmp_path)
    bad = add_bad_files(tmp_path, train_m)
    # Without the cache, a bad dev file is only met inside a DataLoader worker (dev audio is not
    # read for CMVN): its id must still reach skipped.jsonl.
    (tmp_path / "dev_empty.wav").write_bytes(b"")
    write_manifest(dev_m, read_manifest(dev_m) + [Utterance("dev_empty", str(tmp_path / "dev_empty.wav"), 1.1,
                                                            "lo lo", "spk0", 16000)])
    proc = run(train_cmd(tmp_path, "trainer.max_epochs=1", f"data.cache_features={cache}",
                         f"data.num_workers={0 if cache == 'true' else 1}"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "exp" / "skipped.jsonl").read_text().splitlines()]
    assert sorted((r["split"], r["id"]) for r in rows) == [("dev", "dev_empty"), ("train", bad[0]), ("train", bad[1])]
    reasons = {r["id"]: r["reason"] for r in rows}
    # load_audio refuses the 1e29 peak itself (asr.audio.MAX_SAMPLE_MAGNITUDE); the dataset's
    # own non-finite feature guard is tested below with that bound lifted.
    assert "empty file" in reasons["empty"] and "huge.wav" in reasons["huge"]
    assert "absurd" in reasons["huge"] or "not finite" in reasons["huge"]
    s = summary(tmp_path)
    assert s["skipped_utterances"] == {"train": 2, "dev": 1} and s["skipped_steps_nonfinite"] == 0
    ckpt = torch.load(tmp_path / "exp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def _in_process_cfg(tmp_path, *overrides):
    return load_config(ROOT / "conf" / "yesno.yaml", [
        f"exp_dir={tmp_path / 'exp'}", f"data.train_manifest={tmp_path / 'train.jsonl'}",
        f"data.dev_manifest={tmp_path / 'dev.jsonl'}", "model.hidden=8", "model.num_layers=1",
        "trainer.progress_bar=false", "data.max_batch_seconds=8", "trainer.threads=1", *overrides])


@pytest.mark.slow
def test_file_truncated_mid_run_without_cache_is_skipped_on_train_and_resume(tmp_path, monkeypatch):
    from asr.train.datamodule import CTCDataModule
    from asr.train.training import train

    make_corpus(tmp_path)
    real = CTCDataModule.cmvn_stats

    def then_truncate(self):  # the file goes bad after it was read for CMVN, as during a run
        stats = real(self)
        (tmp_path / "utt5.wav").write_bytes(b"")  # a training file only (dev is utt0-utt3)
        return stats

    monkeypatch.setattr(CTCDataModule, "cmvn_stats", then_truncate)
    s = train(_in_process_cfg(tmp_path, "trainer.max_epochs=2", "data.cache_features=false"))
    assert s["epochs"] == 2 and s["skipped_utterances"]["train"] == 1
    rows = [json.loads(line) for line in (tmp_path / "exp" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["id"], r["split"]) for r in rows] == [("utt5", "train")] and "empty file" in rows[0]["reason"]
    monkeypatch.setattr(CTCDataModule, "cmvn_stats", real)
    s = train(_in_process_cfg(tmp_path, "trainer.max_epochs=3", "data.cache_features=false"), resume=True)
    assert s["epochs"] == 3 and s["skipped_utterances"]["train"] == 1  # found before training this time


@pytest.mark.slow
def test_run_with_mostly_nonfinite_steps_stops_with_an_error(tmp_path, monkeypatch):
    from asr.train.module import CTCModule, DivergedError
    from asr.train.training import train

    make_corpus(tmp_path)
    real = CTCModule.losses

    def poisoned(self, batch):
        out = real(self, batch)
        return out._replace(loss=out.loss * float("nan")) if self.training else out

    monkeypatch.setattr(CTCModule, "losses", poisoned)
    with pytest.raises(DivergedError, match=f"{STEPS_PER_EPOCH} of {STEPS_PER_EPOCH} steps of epoch 0"):
        train(_in_process_cfg(tmp_path, "trainer.max_epochs=3"))
    assert (tmp_path / "exp" / "skipped.jsonl").exists()


@pytest.mark.slow
def test_a_run_of_nonfinite_steps_across_epochs_stops_with_an_error(tmp_path, monkeypatch):
    """The second stop: never more than half of an epoch, but MAX_CONSECUTIVE_NONFINITE steps
    in a row (3 here, 50 in real runs), counted across the epoch boundary."""
    import asr.train.module
    from asr.train.module import CTCModule, DivergedError
    from asr.train.training import train

    make_corpus(tmp_path)
    monkeypatch.setattr(asr.train.module, "MAX_CONSECUTIVE_NONFINITE", 3)
    real = CTCModule.losses
    steps = []

    def poisoned(self, batch):
        out = real(self, batch)
        if not self.training:
            return out
        steps.append(len(steps))
        # Epoch 0: its last 2 of 4 steps; epoch 1: its first, the third in a row.
        return out._replace(loss=out.loss * float("nan")) if steps[-1] in (2, 3, 4) else out

    monkeypatch.setattr(CTCModule, "losses", poisoned)
    with pytest.raises(DivergedError, match="3 steps in a row had a non-finite loss"):
        train(_in_process_cfg(tmp_path, "trainer.max_epochs=3"))
    assert len(steps) == STEPS_PER_EPOCH + 1


def test_features_that_are_not_finite_make_the_item_unreadable(tmp_path, monkeypatch):
    # load_audio rejects peaks above MAX_SAMPLE_MAGNITUDE first; lift that bound so that the
    # dataset's own guard (the last line of defence for any other route to NaN) is what acts.
    monkeypatch.setattr("asr.audio.MAX_SAMPLE_MAGNITUDE", float("inf"))
    train_m, _ = make_corpus(tmp_path, n=2)
    add_bad_files(tmp_path, train_m)
    utts = read_manifest(train_m)
    ds = FeatureDataset(utts, [[1, 2]] * len(utts), FeatureConfig(), cache=False)
    with pytest.raises(AudioError, match="huge.wav: features are not finite"):
        ds.compute(3)
    items = [ds[i] for i in range(4)]
    assert [type(it) is Unreadable for it in items] == [False, False, True, True]
    batch = collate(items)
    assert batch.ids == ["utt0", "utt1"] and [i for i, _ in batch.skipped] == ["empty", "huge"]
    assert batch.feats.shape[0] == 2 and torch.isfinite(batch.feats).all()
    empty = collate(items[2:])
    assert empty.ids == [] and len(empty.skipped) == 2


def test_cmvn_statistics_never_include_non_finite_values():
    good = torch.randn(50, 4)
    total, total_sq, count = compute_cmvn_stats([good, torch.full((10, 4), float("nan")), torch.full((5, 4), 1e300, dtype=torch.float64)])
    assert count == 50 and torch.isfinite(total).all() and torch.isfinite(total_sq).all()
    with pytest.raises(ValueError, match="no .*finite"):
        compute_cmvn_stats([torch.full((3, 4), float("inf"))])
    with pytest.raises(ValueError, match="not finite"):
        GlobalCMVN(4).set_stats(torch.full((4,), float("nan")), torch.ones(4), 3)


# --- checkpoints: atomic writes, stale temp files, refusal, fallback ---------------------------


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_malicious_checkpoint(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "payload": _Evil(marker)}, path)


def test_atomic_write_and_stale_temp_cleanup(tmp_path):
    from asr.files import atomic_write, atomic_write_text, remove_stale_temp_files

    target = tmp_path / "last.ckpt"
    atomic_write_text(target, "old")

    def fails(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"last.ckpt.{dead.pid}.tmp").write_bytes(b"x")  # writer gone
    (tmp_path / f"last.ckpt.{os.getppid()}.tmp").write_bytes(b"x")  # writer alive
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [f"last.ckpt.{dead.pid}.tmp"]
    assert (tmp_path / f"last.ckpt.{os.getppid()}.tmp").exists()


def test_resume_falls_back_to_newest_readable_checkpoint_and_refuses_pickled_code(tmp_path, monkeypatch, capsys):
    from asr import log
    from asr.train.resume import CheckpointLoadError, find_resume_checkpoint, load_checkpoint_file

    log.setup()  # as `asr` does: warnings to (the captured) stderr in the "warning: ..." form

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    ckpts = tmp_path / "checkpoints"
    plant_malicious_checkpoint(ckpts / "last.ckpt", marker)
    with pytest.raises(CheckpointLoadError, match=r"last.ckpt: refusing to load: it pickles posix.system"):
        load_checkpoint_file(ckpts / "last.ckpt")
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"  # restored after the load
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 0}, ckpts / "epoch000-wer0.5.ckpt")
    time.sleep(0.01)
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 1}, ckpts / "epoch001-wer0.4.ckpt")
    (ckpts / "epoch002-wer0.3.ckpt").write_bytes(b"PK\x03\x04 truncated")
    os.utime(ckpts / "epoch000-wer0.5.ckpt", (1, 1))
    path, ckpt = find_resume_checkpoint(ckpts)
    assert path.name == "epoch001-wer0.4.ckpt" and ckpt["epoch"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {ckpts / 'last.ckpt'}: refusing") and "1 other" in err[0]
    assert not marker.exists()
    # trainer.keep_last's tail/ holds the newest epoch: it is a fallback too.
    time.sleep(0.01)
    (ckpts / "tail").mkdir()
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, ckpts / "tail" / "epoch003.ckpt")
    path, ckpt = find_resume_checkpoint(ckpts)
    assert path == ckpts / "tail" / "epoch003.ckpt" and ckpt["epoch"] == 3


@pytest.mark.slow
def test_planted_malicious_last_ckpt_is_refused_in_one_line(tmp_path):
    make_corpus(tmp_path)
    marker = tmp_path / "pwned"
    last = tmp_path / "exp" / "checkpoints" / "last.ckpt"
    plant_malicious_checkpoint(last, marker)
    proc = run(train_cmd(tmp_path) + ["--resume"], TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    assert proc.returncode == 2 and not marker.exists()
    line = one_error_line(proc.stderr)
    assert str(last) in line and "refusing to load" in line


# --- exp dir reuse, config and manifest errors -------------------------------------------------


@pytest.mark.slow
def test_existing_exp_dir_needs_resume_or_overwrite(tmp_path):
    make_corpus(tmp_path)
    old = tmp_path / "exp" / "checkpoints" / "epoch007-wer0.1000.ckpt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"an earlier run's model")
    proc = run(train_cmd(tmp_path, "trainer.max_epochs=1"))
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert str(tmp_path / "exp") in line and "--resume" in line and "exp_dir=" in line and "--overwrite" in line

    proc = run(train_cmd(tmp_path, "trainer.max_epochs=1") + ["--overwrite"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not old.exists()
    run_id = json.loads((tmp_path / "exp" / "run.json").read_text())["run_id"]
    assert len(run_id) == 32

    # Overrides after a flag; the run id is kept on resume.
    cmd = train_cmd(tmp_path)
    proc = run(cmd[:5] + ["--resume"] + cmd[5:] + ["trainer.max_epochs=2"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert summary(tmp_path)["epochs"] == 2 and summary(tmp_path)["run_id"] == run_id
    for p in (tmp_path / "exp" / "checkpoints").glob("*.ckpt"):
        assert torch.load(p, map_location="cpu", weights_only=True)["hyper_parameters"]["run_id"] == run_id


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["model.cell=x", "missing manifest"])
def test_bad_model_value_or_missing_manifest_is_one_line_exit_2(tmp_path, problem):
    make_corpus(tmp_path)
    override = problem if "=" in problem else f"data.train_manifest={tmp_path / 'nope.jsonl'}"
    proc = run(train_cmd(tmp_path, override))
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert ("model.cell" in line) if "=" in problem else (f"error: {tmp_path / 'nope.jsonl'}: manifest not found" == line)
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_bad_manifest_is_one_line_exit_2(tmp_path, capsys):
    from asr.cli import main

    make_corpus(tmp_path)
    (tmp_path / "dev.jsonl").write_text('{"id": "a"\n')
    assert main(train_cmd(tmp_path)[3:]) == 2
    err = capsys.readouterr().err
    assert one_error_line(err).startswith(f"error: {tmp_path / 'dev.jsonl'}:1: invalid JSON")


@pytest.mark.parametrize("override", ["model.cell=x", "features.hop_ms=0", "features.n_mels=0",
                                      "features.sample_rate=0", "trainer.max_epochs=0",
                                      "model.spec_augment.time_width=-1", "optim.lr=0"])
def test_every_bad_config_value_is_a_config_error(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[-1]):
        load_config(ROOT / "conf" / "yesno.yaml", [override])


def test_manifest_duration_that_disagrees_with_the_file_is_a_skipped_item(tmp_path):
    # Bucketing, max_duration and the CTC feasibility filter trust the manifest's duration, so
    # a file of another length (either way) is skipped with a reason, not trained on.
    sr = 16000
    wav = tmp_path / "one_second.wav"
    sf.write(wav, np.random.default_rng(0).normal(0, 0.1, sr).astype("float32"), sr)
    utts = [Utterance("ok", str(wav), 1.0, "a", "s", sr),
            Utterance("rounded", str(wav), 1.004, "a", "s", sr),  # rounding: tolerated
            Utterance("too_long", str(wav), 3.0, "a", "s", sr),
            Utterance("too_short", str(wav), 0.5, "a", "s", sr)]
    ds = FeatureDataset(utts, [[1]] * len(utts), FeatureConfig(), cache=False)
    assert [type(ds[i]) is Unreadable for i in range(4)] == [False, False, True, True]
    with pytest.raises(AudioError, match=r"one_second.wav: manifest says 3.000 s but the file holds 1.000 s"):
        ds.compute(2)
