"""Training and shards when the disk fills, a path is unusable or two runs collide: one
`error: PATH: reason` line and exit 2, never a traceback, and nothing that was good is lost.

A full disk is simulated without root: a file object whose write() raises ENOSPC after a few
bytes (what a real full disk does to torch.save), or a patched call raising ENOSPC/EROFS.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tone_corpus import make_corpus

from asr.cli import main
from asr.data.manifest import read_manifest, write_manifest
from asr.evaluate.reports.data import ReportError

ROOT = Path(__file__).resolve().parents[2]


def train_args(tmp: Path, *overrides: str) -> list[str]:
    return ["train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={tmp / 'exp'}",
            f"data.train_manifest={tmp / 'train.jsonl'}", f"data.dev_manifest={tmp / 'dev.jsonl'}",
            "model.hidden=8", "model.num_layers=1", "trainer.progress_bar=false", "data.max_batch_seconds=8",
            "trainer.threads=1", *overrides]


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


class FullDisk:
    """A file whose write() fails with ENOSPC once ``room`` bytes were written."""

    def __init__(self, f, room: int = 1000) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name: str):
        return getattr(self.f, name)


# --- two runs, one exp dir ---------------------------------------------------------------------


@pytest.mark.slow
def test_second_train_into_a_held_exp_dir_exits_2_naming_the_first_and_a_dead_runs_lock_is_taken_over(
        tmp_path, capsys):
    make_corpus(tmp_path)
    lock = tmp_path / "exp" / ".lock"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, "-m", "asr", *train_args(tmp_path, "trainer.max_epochs=1000")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and f"pid {first.pid}" in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        assert main(train_args(tmp_path, "trainer.max_epochs=1")) == 2
        line = one_error_line(capsys.readouterr().err)
        assert str(tmp_path / "exp") in line and f"pid {first.pid}: asr train" in line
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    # Killed: its .lock file is left behind, but the kernel dropped its flock: the next run goes.
    assert lock.exists()
    assert main(train_args(tmp_path, "trainer.max_epochs=1") + ["--overwrite"]) == 0
    assert not lock.exists()  # released (and removed) on exit
    assert json.loads((tmp_path / "exp" / "train_summary.json").read_text())["epochs"] == 1


# --- no space left, unusable exp dirs ----------------------------------------------------------


@pytest.mark.slow
def test_no_space_while_writing_a_checkpoint_is_one_line_and_resume_finishes(tmp_path, capsys, monkeypatch):
    import asr.train.callbacks
    from asr.files import atomic_write

    make_corpus(tmp_path)
    writes: list[Path] = []

    def disk_fills_after_epoch_0(path, write):
        writes.append(Path(path))
        full = len(writes) > 2  # epoch 0's ranked checkpoint and last.ckpt fit
        atomic_write(path, (lambda f: write(FullDisk(f))) if full else write)

    monkeypatch.setattr(asr.train.callbacks, "atomic_write", disk_fills_after_epoch_0)
    assert main(train_args(tmp_path, "trainer.max_epochs=3")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == f"error: {writes[2]}: No space left on device"
    last = tmp_path / "exp" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # the good one survives
    assert not list((tmp_path / "exp").rglob("*.tmp"))

    monkeypatch.undo()
    assert main(train_args(tmp_path, "trainer.max_epochs=3") + ["--resume"]) == 0
    assert json.loads((tmp_path / "exp" / "train_summary.json").read_text())["epochs"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("case", ["is a file", "under a file", "read-only, new", "read-only, existing"])
def test_unusable_exp_dir_is_one_line_exit_2(tmp_path, capsys, monkeypatch, case):
    make_corpus(tmp_path)
    exp = tmp_path / "exp"
    args = train_args(tmp_path)
    if case == "is a file":
        exp.write_text("not a folder")
    elif case == "under a file":
        exp.write_text("not a folder")
        exp = exp / "run1"
        args = [a if not a.startswith("exp_dir=") else f"exp_dir={exp}" for a in args]
    elif case == "read-only, new":  # chmod does not stop root: the filesystem's answer, patched in
        real_mkdir = Path.mkdir

        def mkdir(self, *a, **kw):
            if self == exp:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
            return real_mkdir(self, *a, **kw)

        monkeypatch.setattr(Path, "mkdir", mkdir)
    else:
        exp.mkdir()
        real_open = os.open

        def os_open(path, *a, **kw):
            if Path(path).parent == exp:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *a, **kw)

        monkeypatch.setattr(os, "open", os_open)
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {exp}") and ("Read-only" in line or "not a directory" in line.lower()), line


def test_lock_that_cannot_be_written_on_a_full_disk_is_a_report_error(tmp_path, monkeypatch):
    from asr.cli import known_error_message
    from asr.lock import output_lock

    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(ReportError) as e, output_lock(tmp_path / "out", "asr evaluate x"):
        pass
    assert known_error_message(e.value) == f"{tmp_path / 'out' / '.lock'}: cannot write the lock file " \
                                           "(No space left on device)"
    assert not (tmp_path / "out" / ".lock").exists()


def test_environment_errors_naming_a_path_are_one_line_others_keep_their_traceback():
    from asr.cli import known_error_message

    assert known_error_message(OSError(errno.ENOSPC, "No space left on device", "/x/y")) == \
        "/x/y: No space left on device"
    assert known_error_message(OSError(errno.ENOSPC, "No space left on device")) is None  # no path: a bug
    assert known_error_message(OSError(errno.EBADF, "Bad file descriptor", "/x")) is None


# --- resume sets damaged checkpoints aside -----------------------------------------------------


@pytest.mark.slow
def test_resume_moves_damaged_checkpoints_aside_and_export_averages_only_good_ones(tmp_path, capsys):
    make_corpus(tmp_path)
    assert main(train_args(tmp_path, "trainer.max_epochs=2", "trainer.save_top_k=3")) == 0
    ckpts = tmp_path / "exp" / "checkpoints"
    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # torn
    planted = ckpts / "epoch001-wer0.0001.ckpt"  # the best-ranked name, and unreadable
    planted.write_bytes(b"PK\x03\x04 truncated")
    capsys.readouterr()
    assert main(train_args(tmp_path, "trainer.max_epochs=3", "trainer.save_top_k=3") + ["--resume"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    damaged = ckpts / "damaged"
    assert len(warnings) == 1 and f"moved the unreadable checkpoint(s) to {damaged}" in warnings[0], warnings
    assert sorted(p.name for p in damaged.iterdir()) == ["epoch001-wer0.0001.ckpt", "last.ckpt"]
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2
    assert main(["export", str(tmp_path / "exp"), "--average", "3", "--out", str(tmp_path / "m.asr")]) == 0
    assert "from 3 checkpoint(s) (averaged)" in capsys.readouterr().out


# --- shards ------------------------------------------------------------------------------------


@pytest.fixture
def sharded(tmp_path) -> tuple[Path, Path]:
    """A manifest of 4 files and its shards in tmp_path/sh (2 shards)."""
    make_corpus(tmp_path, n=4)
    out = tmp_path / "sh"
    assert main(["shard", str(tmp_path / "train.jsonl"), "--out", str(out), "--shard-size", "40k"]) == 0
    return tmp_path / "train.jsonl", out


def shard_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_shard_overwrite_with_a_bad_manifest_keeps_the_old_shards(sharded, tmp_path, capsys):
    manifest, out = sharded
    before = shard_files(out)
    assert len([n for n in before if n.endswith(".tar")]) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(manifest.read_text()[:50])  # truncated mid-line
    capsys.readouterr()
    assert main(["shard", str(bad), "--out", str(out), "--overwrite"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {bad}:1")
    assert main(["shard", str(tmp_path / "nope.jsonl"), "--out", str(out), "--overwrite"]) == 2
    assert shard_files(out) == before


def test_shard_overwrite_that_runs_out_of_space_keeps_the_old_shards(sharded, capsys, monkeypatch):
    import webdataset

    manifest, out = sharded
    before = shard_files(out)
    real = webdataset.TarWriter.write
    calls = []

    def write(self, sample):
        calls.append(sample["__key__"])
        if len(calls) > 3:  # the first shard of the new set is complete by now
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, sample)

    monkeypatch.setattr(webdataset.TarWriter, "write", write)
    capsys.readouterr()
    assert main(["shard", str(manifest), "--out", str(out), "--overwrite", "--shard-size", "20k"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out}: cannot write the shards (No space left on device)")
    assert shard_files(out) == before  # the staging folder is gone too

    monkeypatch.undo()
    assert main(["shard", str(manifest), "--out", str(out), "--overwrite", "--shard-size", "20k"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["index.json"] + [s["name"] for s in index["shards"]]
    assert len(index["shards"]) == 4 and index["utterances"] == len(read_manifest(manifest))


@pytest.mark.parametrize("case", ["prefix with /", "out is a file", "out under a file"])
def test_shard_bad_prefix_or_out_is_one_line_exit_2(tmp_path, capsys, case):
    make_corpus(tmp_path, n=2)
    manifest, out, extra = tmp_path / "train.jsonl", tmp_path / "sh", []
    if case == "prefix with /":
        extra = ["--prefix", "a/b"]
    else:
        (tmp_path / "f").write_text("a file")
        out = tmp_path / "f" if case == "out is a file" else tmp_path / "f" / "sh"
    write_manifest(manifest, read_manifest(manifest))
    assert main(["shard", str(manifest), "--out", str(out), *extra]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert ("--prefix 'a/b'" in line) if extra else line.startswith(f"error: {out}: ")
