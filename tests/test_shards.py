"""Sharded corpora: writing WebDataset shards + index.json, the exact epoch plan (every
utterance once per epoch across ranks x workers, equal batch counts per rank), streaming
batches with unreadable items counted, and training from shards (slow)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("webdataset")

from asr.data.manifest import Utterance, write_manifest  # noqa: E402
from asr.data.shard_writer import parse_size, write_shards  # noqa: E402
from asr.data.shards import (  # noqa: E402
    Buckets,
    EpochPlan,
    ShardError,
    ShardStream,
    open_shard_set,
    read_texts,
)
from asr.features import FeatureConfig  # noqa: E402
from asr.model import ConvSubsampling  # noqa: E402
from asr.text import CharTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def make_utts(root: Path, n: int = 24, seed: int = 0) -> list[Utterance]:
    """``n`` tiny wavs of 0.2-0.9 s (noise) with short texts."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    utts = []
    for i in range(n):
        dur = round(0.2 + 0.05 * (i % 15), 2)
        path = root / f"u{i:03d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(dur * SR))).astype(np.float32), SR, subtype="PCM_16")
        utts.append(Utterance(f"spk.{i:03d}/x", str(path), dur, "ab ba"[: 1 + i % 5], "spk", SR))
    return utts


def stream(plan: EpochPlan, rank: int, tok: CharTokenizer, **kw) -> ShardStream:
    return ShardStream(plan, rank, tok, FeatureConfig(), functools.partial(ConvSubsampling.out_lengths, factor=1),
                       shuffle_buffer=kw.pop("shuffle_buffer", 5), seed=kw.pop("seed", 0), **kw)


def run_slot(ds: ShardStream, worker: int, monkeypatch) -> list:
    """Iterate ``ds`` as DataLoader worker ``worker`` of ``ds.plan.workers`` would."""

    class Info:
        id = worker
        num_workers = ds.plan.workers

    monkeypatch.setattr("asr.data.shards.get_worker_info", lambda: Info)
    return list(iter(ds))


def test_parse_size():
    assert parse_size("1G") == 10**9 and parse_size("500M") == 5 * 10**8 and parse_size("1e5") == 10**5
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_write_shards_and_index(tmp_path):
    utts = make_utts(tmp_path / "wav", 10)
    res = write_shards(utts, tmp_path / "sh", shard_size=20_000, prefix="train")
    index = json.loads((tmp_path / "sh" / "index.json").read_text())
    assert len(res.shards) > 2 and index["utterances"] == 10
    assert [s["name"] for s in index["shards"]] == [f"train-{i:06d}.tar" for i in range(len(res.shards))]
    assert sum(s["utterances"] for s in index["shards"]) == 10
    assert abs(index["seconds"] - sum(u.duration for u in utts)) < 1e-6
    assert [i for s in index["shards"] for i in s["ids"]] == [u.id for u in utts]
    with tarfile.open(tmp_path / "sh" / "train-000000.tar") as t:
        names = t.getnames()
    assert names[:2] == ["000000000.json", "000000000.wav"]
    assert not list((tmp_path / "sh").glob(".*tmp"))  # temp files renamed
    assert read_texts(open_shard_set(str(tmp_path / "sh"))) == [u.text for u in utts]


def test_write_skips_unreadable_files(tmp_path):
    utts = make_utts(tmp_path / "wav", 3)
    Path(utts[1].audio).write_bytes(b"not audio")
    res = write_shards(utts, tmp_path / "sh")
    assert [i for i, _ in res.skipped] == [utts[1].id] and "u001.wav" in res.skipped[0][1]
    assert json.loads((tmp_path / "sh" / "index.json").read_text())["skipped"][0]["id"] == utts[1].id


def test_open_shard_set_pattern_and_errors(tmp_path):
    write_shards(make_utts(tmp_path / "wav", 10), tmp_path / "sh", shard_size=20_000)
    n = len(open_shard_set(str(tmp_path / "sh")).shards)
    sub = open_shard_set(str(tmp_path / "sh" / "shard-{000000..000001}.tar"))
    assert len(sub.shards) == 2 and n > 2
    piped = open_shard_set(f"pipe:cat {tmp_path}/sh/shard-{{000000..000001}}.tar", index=str(tmp_path / "sh/index.json"))
    assert [s.url.split()[-1] for s in piped.shards] == [s.url for s in sub.shards]
    with pytest.raises(ShardError, match="needs its index"):
        open_shard_set("pipe:cat x-{0..1}.tar")
    with pytest.raises(ShardError, match="not listed"):
        open_shard_set(str(tmp_path / "sh" / "other-{000000..000001}.tar"))
    with pytest.raises(ShardError, match="index not found"):
        open_shard_set(str(tmp_path))


@pytest.mark.parametrize("shard_size", [20_000, 10**9])  # many shards (split by shard) / one (split by utterance)
def test_every_utterance_once_per_epoch_equal_batches_per_rank(tmp_path, monkeypatch, shard_size):
    utts = make_utts(tmp_path / "wav", 24)
    write_shards(utts, tmp_path / "sh", shard_size=shard_size)
    shards = open_shard_set(str(tmp_path / "sh"))
    buckets = Buckets.plan(shards.durations(), 3, max_batch_seconds=2.0, max_batch_size=4)
    plan = EpochPlan(shards, buckets, world=2, workers=2, max_duration=30.0)
    assert plan.by_utterance == (shard_size == 10**9)
    tok = CharTokenizer.from_texts([u.text for u in utts])
    for epoch in (0, 1):
        per_rank, seen = [], []
        for rank in (0, 1):
            ds = stream(plan, rank, tok)
            ds.set_epoch(epoch)
            by_worker = [run_slot(ds, w, monkeypatch) for w in (0, 1)]
            per_rank.append(sum(len(b) for b in by_worker))
            assert per_rank[-1] == len(ds) == plan.rank_batches
            for w, batches in enumerate(by_worker):
                assert len(batches) == plan.target(rank * 2 + w)
                for b in batches[: plan.planned[rank * 2 + w]]:  # the rest repeats them (padding)
                    assert not b.skipped
                    assert max(u.duration for u in utts if u.id in b.ids) * len(b.ids) <= 2.0 + 1e-9
                    seen += b.ids
        assert per_rank[0] == per_rank[1]
        assert sorted(seen) == sorted(u.id for u in utts)  # each exactly once


def test_unreadable_and_untrainable_items_are_reported(tmp_path, monkeypatch):
    utts = make_utts(tmp_path / "wav", 8)
    write_shards(utts[:7], tmp_path / "sh")
    # Damage one shard member after writing: the reader must report it, not stop.
    src, dst = tmp_path / "sh" / "shard-000000.tar", tmp_path / "bad.tar"
    with tarfile.open(src) as t_in, tarfile.open(dst, "w") as t_out:
        for m in t_in.getmembers():
            data = t_in.extractfile(m).read()
            if m.name == "000000002.wav":
                data = b"garbage" * 10
            m.size = len(data)
            t_out.addfile(m, __import__("io").BytesIO(data))
    dst.replace(src)
    shards = open_shard_set(str(tmp_path / "sh"))
    plan = EpochPlan(shards, Buckets.plan(shards.durations(), 1, 3.0, 4), world=1, workers=1, max_duration=0.8)
    tok = CharTokenizer.from_texts(["ab"])  # no space: text "ab " untokenizable? char tokenizer knows "a", "b"
    batches = run_slot(stream(plan, 0, tok), 0, monkeypatch)
    assert len(batches) == plan.rank_batches
    skipped = dict(s for b in batches for s in b.skipped)
    assert "unreadable" in skipped[utts[2].id] and "000000002.wav" in skipped[utts[2].id]
    too_long = dict(plan.too_long())
    assert set(too_long) == {u.id for u in utts[:7] if u.duration > 0.8}
    trained = {i for b in batches for i in b.ids}
    reported = set(skipped) | set(too_long)
    assert trained | reported == {u.id for u in utts[:7]} and not trained & reported


def test_missing_shard_items_are_reported(tmp_path, monkeypatch):
    utts = make_utts(tmp_path / "wav", 6)
    write_shards(utts, tmp_path / "sh")
    tar = tmp_path / "sh" / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # truncated upload
    shards = open_shard_set(str(tmp_path / "sh"))
    plan = EpochPlan(shards, Buckets.plan(shards.durations(), 2, 3.0, 4), world=1, workers=1, max_duration=30)
    tok = CharTokenizer.from_texts([u.text for u in utts])
    batches = run_slot(stream(plan, 0, tok), 0, monkeypatch)
    assert len(batches) == plan.rank_batches
    trained = {i for b in batches for i in b.ids}
    skipped = {i for b in batches for i, _ in b.skipped}
    assert skipped and trained | skipped == {u.id for u in utts} and not trained & skipped


@pytest.mark.slow
def test_shard_cli(tmp_path):
    utts = make_utts(tmp_path / "wav", 4)
    Path(utts[0].audio).unlink()
    write_manifest(tmp_path / "m.jsonl", utts)
    cmd = [sys.executable, "-m", "asr", "shard", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "sh")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and "u000.wav" in proc.stderr and "Traceback" not in proc.stderr
    assert "3 utterances" in proc.stdout
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    proc = subprocess.run(cmd + ["--overwrite", "--shard-size", "x"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "error: --shard-size" in proc.stderr and "Traceback" not in proc.stderr


def _train(tmp_path: Path, name: str, *overrides: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "asr", "train", str(ROOT / "conf" / "yesno.yaml"),
                           f"exp_dir={tmp_path / name}", "trainer.threads=1", "trainer.progress_bar=false",
                           "trainer.max_epochs=10", *overrides], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / name / "train_summary.json").read_text()) | {"stdout": proc.stdout + proc.stderr}


@pytest.mark.slow
@pytest.mark.data
def test_yesno_from_shards_learns_like_the_manifest(tmp_path, shared_data):
    """Sharded training learns, small: the same model from shards and from the manifest both reach
    a near-zero dev WER on yesno in 10 epochs (each ~10 s on one thread)."""
    data = tmp_path / "yesno"
    subprocess.run([sys.executable, "-m", "asr", "prepare", "yesno", "--src", str(shared_data / "yesno"),
                    "--out", str(data)], check=True, capture_output=True, cwd=ROOT, timeout=120)
    subprocess.run([sys.executable, "-m", "asr", "shard", str(data / "train.jsonl"), "--out", str(data / "shards"),
                    "--shard-size", "200k"], check=True, capture_output=True, cwd=ROOT, timeout=120)
    dev = f"data.dev_manifest={data / 'dev.jsonl'}"
    manifest = _train(tmp_path, "m", f"data.train_manifest={data / 'train.jsonl'}", dev)
    shards = _train(tmp_path, "s", "data.train_manifest=", f"data.train_shards={data / 'shards'}", dev)
    assert "streamed" in shards["stdout"]
    assert shards["steps"] == manifest["steps"]  # same batches per epoch (one bucket, 4 per batch)
    assert manifest["best_dev_wer"] <= 0.1 and shards["best_dev_wer"] <= 0.1


@pytest.mark.slow
def test_ddp_two_ranks_from_shards(tmp_path):
    """Two CPU ranks x one worker each stream an uneven split and still step together (no hang)."""
    utts = make_utts(tmp_path / "wav", 20)
    write_shards(utts[:16], tmp_path / "sh", shard_size=30_000)
    write_manifest(tmp_path / "dev.jsonl", utts[16:])
    summary = _train(tmp_path, "exp", "data.train_manifest=", f"data.train_shards={tmp_path / 'sh'}",
                     f"data.dev_manifest={tmp_path / 'dev.jsonl'}", "data.num_workers=1", "data.max_batch_seconds=2",
                     "data.num_buckets=2", "trainer.max_epochs=2", "trainer.strategy=ddp", "trainer.devices=2",
                     "trainer.accelerator=cpu")
    lines = [ln for ln in summary["stdout"].splitlines() if "batches per epoch on each of 2 rank(s)" in ln]
    per_rank = int(lines[0].split("train: ")[1].split()[0])
    assert summary["epochs"] == 2 and summary["steps"] == 2 * per_rank
