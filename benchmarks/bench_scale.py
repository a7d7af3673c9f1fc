#!/usr/bin/env python
"""The data path at LibriSpeech-960 scale: manifests, filtering, dataset, sampler, prepare.

    python benchmarks/bench_scale.py manifest [--utts 281241]
    python benchmarks/bench_scale.py prepare --files 50000 [--workers 1 2] [--keep]

``manifest``: a generated manifest with LibriSpeech-960's shape (281 241 utterances, 0.8-35 s,
mean ~12.3 s, ~200-character transcripts; no audio needed) goes through what ``asr train``
does with it before the first step: write_manifest, read_manifest, filter_utterances (char
tokenizer, x4 conv subsampling), FeatureDataset construction (no cache),
BucketBatchSampler construction, len(), one epoch of batches (``__iter__``), ``set_epoch`` and
the next epoch. Each step: wall seconds and the process's RSS after it (peak RSS at the end).
It also forks a process that touches every item's metadata, as a DataLoader worker does over
an epoch, and reports the private memory that worker gained (copy-on-write of the pages
Python's reference counts write to).

``prepare``: a LibriSpeech-layout tree (``train-clean-100/SPK/CHAP/SPK-CHAP-NNNN.flac`` +
``SPK-CHAP.trans.txt``) of ``--files`` short noise FLACs (0.1-0.5 s) is generated under /tmp,
``asr prepare librispeech`` is run on it with each ``--workers`` value (a subprocess, timed;
its peak RSS from RUSAGE_CHILDREN), and the tree is deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = "the of and to a in he that was it his i with had for you as her on at but she not be is".split()


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def transcript(rng: np.random.Generator, chars: int) -> str:
    words, n = [], 0
    while n < chars:
        w = WORDS[rng.integers(len(WORDS))]
        words.append(w)
        n += len(w) + 1
    return " ".join(words)


def librispeech_like(n: int, seed: int = 0):
    """``n`` Utterances shaped like LibriSpeech 960 h (durations, ids, paths, text lengths)."""
    from asr.data.manifest import Utterance

    rng = np.random.default_rng(seed)
    pool = transcript(rng, 200_000)  # transcripts are slices of it: generating is not what we time
    starts = rng.integers(0, len(pool) - 600, n)
    dur = np.clip(rng.lognormal(np.log(12.5), 0.45, n), 0.8, 35.0)
    dur = np.where(rng.random(n) < 0.55, np.clip(rng.normal(15.0, 1.2, n), 10, 17.5), dur)  # many ~15 s
    utts = []
    for i in range(n):
        spk, chap = 100 + i // 120, 1000 + i // 30
        uid = f"{spk}-{chap}-{i % 30:04d}"
        chars = int(dur[i] * 15)  # ~15 characters per second of read speech
        utts.append(Utterance(uid, f"/data/LibriSpeech/train-960/{spk}/{chap}/{uid}.flac", round(float(dur[i]), 6),
                              pool[starts[i]:starts[i] + chars].strip(), str(spk), 16000))
    return utts


def bench_manifest(n: int) -> None:
    from asr.data.dataset import FeatureDataset, filter_utterances
    from asr.data.manifest import read_manifest, write_manifest
    from asr.data.sampler import BucketBatchSampler
    from asr.features import FeatureConfig
    from asr.model import ConvSubsampling
    from asr.text import CharTokenizer

    rows = []

    def step(name: str, fn):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t, rss_mb()))
        return out

    print(f"{n} utterances; RSS at start {rss_mb():.0f} MiB, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        utts = step("generate (not part of the data path)", lambda: librispeech_like(n))
        step("write_manifest", lambda: write_manifest(path, utts))
        size = path.stat().st_size
        utts = None  # only the manifest read back stays in memory
        utts = step("read_manifest", lambda: read_manifest(path))
    hours = sum(u.duration for u in utts) / 3600
    tok = CharTokenizer.from_texts(["abcdefghijklmnopqrstuvwxyz'"])
    keep, targets, skipped = step("filter_utterances", lambda: filter_utterances(
        utts, tok, FeatureConfig(), lambda x: ConvSubsampling.out_lengths(x, 4), 35.0, 1.1))
    utts = None
    ds = step("FeatureDataset(cache=False)", lambda: FeatureDataset(keep, targets, FeatureConfig(), cache=False))
    targets = None
    sampler = step("BucketBatchSampler(...)", lambda: BucketBatchSampler(ds.durations, max_batch_seconds=600,
                                                                         max_batch_size=64, num_buckets=50))
    batches = step("len(sampler) (first: plans buckets)", lambda: len(sampler))
    step("len(sampler) again", lambda: len(sampler))
    step("epoch 0: list(iter(sampler))", lambda: list(sampler))
    step("set_epoch(1) + epoch 1", lambda: (sampler.set_epoch(1), list(sampler)))
    ddp = BucketBatchSampler(ds.durations, max_batch_seconds=600, max_batch_size=64, num_buckets=50,
                             num_replicas=8, rank=3)
    step("rank 3 of 8: len + epoch", lambda: (len(ddp), list(ddp)))
    rnd = BucketBatchSampler(ds.durations, max_batch_seconds=600, max_batch_size=64, bucketing=False)
    step("bucketing=False: len (20 packings) + epoch", lambda: (len(rnd), list(rnd)))
    worker_mb = step("worker touching every item (fork)", lambda: touch_in_child(ds))

    print(f"manifest: {size / 2**20:.0f} MiB, {hours:.0f} h, kept {len(keep)}, skipped {len(skipped)}, "
          f"{batches} batches per epoch")
    print("| step | wall s | RSS after (MiB) |")
    print("|---|---:|---:|")
    for name, sec, rss in rows:
        print(f"| {name} | {sec:.2f} | {rss:.0f} |")
    print(f"| peak RSS | | {peak_mb():.0f} |")
    print(f"worker's private memory gained by touching every item: {worker_mb:.0f} MiB")


def touch_in_child(ds) -> float:
    """Fork; the child reads every item's metadata and target (what __getitem__ touches
    besides the audio) and reports how much private memory (Private_Dirty) that cost it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        before = _anon_kb()
        for i in range(len(ds)):
            u = ds.utts[i]
            _ = (u.id, u.audio, u.duration, u.offset, ds.targets[i])
        os.write(w, str((_anon_kb() - before) / 1024).encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 100)
    os.waitpid(pid, 0)
    return float(out)


def _anon_kb() -> int:
    """Private dirty kB: pages this process has written since the fork (copy-on-write copies)."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    return 0


def make_tree(root: Path, files: int, seed: int = 0) -> float:
    """A LibriSpeech-layout subset of ``files`` short noise FLACs; returns seconds of audio."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    subset = root / "LibriSpeech" / "train-clean-100"
    per_chapter, chapters_per_speaker = 50, 4
    total, k = 0.0, 0
    while k < files:
        spk, chap = 100 + k // (per_chapter * chapters_per_speaker), 1000 + k // per_chapter
        folder = subset / str(spk) / str(chap)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for j in range(min(per_chapter, files - k)):
            uid = f"{spk}-{chap}-{j:04d}"
            dur = float(rng.uniform(0.1, 0.5))
            wave = (0.1 * rng.standard_normal(int(16000 * dur))).astype("float32")
            sf.write(folder / f"{uid}.flac", wave, 16000, subtype="PCM_16")
            lines.append(f"{uid} {transcript(rng, max(1, int(dur * 100) // 4)).upper()}\n")
            total += dur
            k += 1
        (folder / f"{spk}-{chap}.trans.txt").write_text("".join(lines))
    return total


def bench_prepare(files: int, workers: list[int], keep: bool, tree: Path | None) -> None:
    reuse = tree is not None and (tree / "LibriSpeech").is_dir()
    root = tree if tree is not None else Path(tempfile.mkdtemp(prefix="ls-tree-", dir="/tmp"))
    keep = keep or reuse
    try:
        t = time.perf_counter()
        audio = files * 0.3 if reuse else make_tree(root, files)
        print(f"{'reused' if reuse else 'generated'} {files} FLACs ({audio / 3600:.2f} h) under {root} in {time.perf_counter() - t:.0f} s; "
              f"load average {os.getloadavg()[0]:.2f}")
        print("| asr prepare librispeech | files | wall s | files per s | CPU s (all processes) | peak RSS (MiB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for n in workers:
            out = root / f"out{n}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "asr", "prepare", "librispeech", "--src", str(root),
                                   "--out", str(out), "--workers", str(n), "--allow-rejected"],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                print(proc.stdout[-2000:], proc.stderr[-2000:])
                raise SystemExit(f"asr prepare failed ({proc.returncode})")
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            print(f"| --workers {n} | {files} | {wall:.1f} | {files / wall:.0f} | {cpu:.1f} | "
                  f"{after.ru_maxrss / 1024:.0f} |")
            print("  " + " ".join(proc.stdout.split()[-12:]))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("manifest")
    m.add_argument("--utts", type=int, default=281241)
    p = sub.add_parser("prepare")
    p.add_argument("--files", type=int, default=50000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--keep", action="store_true", help="keep the generated tree")
    p.add_argument("--tree", type=Path, default=None, help="generate the tree here (or reuse it if there)")
    args = ap.parse_args()
    if args.what == "manifest":
        bench_manifest(args.utts)
    else:
        bench_prepare(args.files, args.workers, args.keep, args.tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
