#!/usr/bin/env python
"""What one DataLoader worker produces without the feature cache (``data.cache_features=false``).

    python benchmarks/bench_loader.py [--seconds 600] [--fsdd 300] [--batch 16] [--loader]

Per stage, for what :class:`asr.data.dataset.FeatureDataset` and :mod:`asr.features` do per
item, on one thread (a DataLoader worker runs ``torch.set_num_threads(1)``):

- decode: ``load_audio`` at the file's own rate (soundfile/libsndfile + the checks);
- resample: 8 kHz -> 16 kHz (FSDD WAV rows only; speechocean762 is 16 kHz FLAC);
- speed perturb: ``torchaudio.functional.resample`` at factor 0.9 or 1.1 (every item here:
  with ``speed_perturb=[0.9, 1.0, 1.1]`` two items in three pay it);
- log-mel: ``LogMel.single`` (n_fft 512, 80 mels);
- SpecAugment: the model's :class:`asr.features.SpecAugment` on one utterance's log-mels
  (it runs in the model, i.e. on the accelerator, not in the worker; timed here for scale);
- collate: padding ``--batch`` items, of features (features in the worker) or of waveforms
  (``data.features_on_device``).

Rates are audio seconds per wall second and per CPU second of this process
(``time.process_time``): the machine is shared, so the CPU-time rate is the one that says what
a worker costs. ``--loader`` also runs the real thing: a DataLoader with one worker over a
cache-less FeatureDataset (speed perturbation on), once with features in the worker and once
with waveforms only, reporting the worker's CPU time and peak RSS (``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import soundfile as sf
import torch
import torchaudio

from asr.audio import SAMPLE_RATE, load_audio, resample
from asr.data.dataset import FeatureDataset, collate, collate_waves
from asr.data.manifest import Utterance
from asr.data.sampler import BucketBatchSampler
from asr.features import FeatureConfig, LogMel, SpecAugment, SpecAugmentConfig

_HERE = Path(__file__).resolve()
# ../shared/data beside the checkout (or beside a worktree's parent folder).
DATA = next((p for p in (Path(os.environ.get("ASR_DATA_DIR", "/nonexistent")), _HERE.parents[2] / "shared" / "data",
                         _HERE.parents[3] / "shared" / "data") if p.is_dir()), _HERE.parents[2] / "shared" / "data")
STAGES = ("decode", "resample", "speed perturb", "log-mel", "SpecAugment", "collate")


class Clock:
    """Wall and CPU seconds spent per stage."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(STAGES + ("collate (waves)",), 0.0)
        self.cpu = dict(self.wall)

    def run(self, stage: str, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.wall[stage] += time.perf_counter() - w
        self.cpu[stage] += time.process_time() - c
        return out


def files(corpus: str, seconds: float, limit: int) -> list[tuple[str, float]]:
    """(path, duration) of about ``seconds`` of audio (at most ``limit`` files), spread over speakers."""
    if corpus == "speechocean762":
        paths = sorted((DATA / "speechocean762" / "WAVE").glob("*/*.flac"))
    else:
        paths = sorted((DATA / "fsdd").rglob("*.wav"))
    out, total = [], 0.0
    for p in paths[:: max(1, len(paths) // limit)]:
        d = sf.info(str(p)).duration
        out.append((str(p), d))
        total += d
        if total >= seconds or len(out) >= limit:
            break
    return out


def stage_table(items: list[tuple[str, float]], batch: int, clock: Clock) -> float:
    """Run every stage over ``items``; returns the audio seconds processed."""
    cfg = FeatureConfig()
    logmel = LogMel(cfg)
    specaug = SpecAugment(SpecAugmentConfig()).train()
    pending_feats, pending_waves, audio = [], [], 0.0
    tok = torch.tensor([1, 2, 3])
    for k, (path, dur) in enumerate(items):
        sr = sf.info(path).samplerate
        wave = clock.run("decode", load_audio, path, sr)
        if sr != SAMPLE_RATE:
            wave = clock.run("resample", resample, wave, sr, SAMPLE_RATE)
        factor = (0.9, 1.1)[k % 2]
        wave = clock.run("speed perturb", torchaudio.functional.resample, wave, int(round(SAMPLE_RATE * factor)),
                         SAMPLE_RATE)
        with torch.no_grad():
            feats = clock.run("log-mel", logmel.single, wave)
            clock.run("SpecAugment", specaug, feats[None], torch.tensor([feats.shape[0]]))
        pending_feats.append((str(k), feats, tok))
        pending_waves.append((str(k), wave, tok))
        if len(pending_feats) == batch:
            clock.run("collate", collate, pending_feats)
            clock.run("collate (waves)", collate_waves, pending_waves)
            pending_feats, pending_waves = [], []
        audio += dur
    return audio


def print_stages(name: str, audio: float, clock: Clock) -> None:
    print(f"\n{name}: {audio:.0f} s of audio, one thread")
    print("| stage | wall s | CPU s | audio-s per wall-s | audio-s per CPU-s |")
    print("|---|---:|---:|---:|---:|")
    for stage in (*STAGES, "collate (waves)"):
        w, c = clock.wall[stage], clock.cpu[stage]
        if w == 0:
            continue
        print(f"| {stage} | {w:.2f} | {c:.2f} | {audio / w:.0f} | {audio / max(c, 1e-9):.0f} |")
    for label, stages in (
        ("worker, features in worker", ("decode", "resample", "speed perturb", "log-mel", "collate")),
        ("worker, waveforms only", ("decode", "resample", "speed perturb", "collate (waves)")),
    ):
        w = sum(clock.wall[s] for s in stages)
        c = sum(clock.cpu[s] for s in stages)
        print(f"| **{label}** | {w:.2f} | {c:.2f} | **{audio / w:.0f}** | **{audio / max(c, 1e-9):.0f}** |")


def loader_run(items: list[tuple[str, float]], batch_seconds: float,
               on_device: bool) -> tuple[float, float, float, float, float]:
    """One epoch of a 1-worker DataLoader: (audio s, wall s, worker CPU s, worker peak RSS MiB,
    worker private (anonymous) RSS MiB). Peak RSS counts the pages shared with the parent
    (torch's libraries, mapped before the fork); the private part is what each worker adds."""
    utts = [Utterance(str(k), p, d, "a", "s", 16000) for k, (p, d) in enumerate(items)]
    ds = FeatureDataset(utts, [[1, 2]] * len(utts), FeatureConfig(), cache=False, speed_perturb=(0.9, 1.0, 1.1),
                        waveforms=on_device)
    sampler = BucketBatchSampler(ds.durations, max_batch_seconds=batch_seconds, num_buckets=5)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=1,
                                         collate_fn=collate_waves if on_device else collate)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = time.perf_counter()
    it = iter(loader)
    pid = it._workers[0].pid  # noqa: SLF001 - the worker's own memory, read while it lives
    n, hwm, anon = 0, 0, 0
    for b in it:
        n += len(b.ids)
        mem = _status(pid)
        hwm, anon = max(hwm, mem.get("VmHWM", 0)), max(anon, mem.get("RssAnon", 0))
    wall = time.perf_counter() - w
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker has exited and been reaped
    assert n == len(utts)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return sum(d for _, d in items), wall, cpu, hwm / 1024, anon / 1024


def _status(pid: int) -> dict[str, int]:
    """kB fields of /proc/PID/status (empty once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in f) if v.strip().endswith("kB")}
    except OSError:
        return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="speechocean762 audio to use (s)")
    ap.add_argument("--fsdd", type=int, default=300, help="FSDD files (8 kHz) to use")
    ap.add_argument("--batch", type=int, default=16, help="items per collated batch")
    ap.add_argument("--loader", action="store_true", help="also time a real 1-worker DataLoader")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    so = files("speechocean762", args.seconds, int(args.seconds / 3) + 1)  # ~3 s per utterance
    fsdd = files("fsdd", 1e9, args.fsdd)
    for name, items in (("speechocean762 (16 kHz FLAC)", so), ("FSDD (8 kHz WAV)", fsdd)):
        clock = Clock()
        if not items:
            print(f"\n{name}: not found under {DATA}; skipped")
            continue
        audio = stage_table(items, args.batch, clock)
        print_stages(name, audio, clock)
    if args.loader:
        print("\nDataLoader, num_workers=1, speed_perturb=[0.9, 1.0, 1.1], speechocean762")
        print("| worker does | audio s | wall s | audio-s per wall-s | worker CPU s | audio-s per worker CPU-s "
              "| worker peak RSS (MiB) | worker private RSS (MiB) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for on_device in (False, True):
            audio, wall, cpu, rss, anon = loader_run(so, 200.0, on_device)
            label = "decode + perturb (waveforms)" if on_device else "decode + perturb + log-mel"
            print(f"| {label} | {audio:.0f} | {wall:.2f} | {audio / wall:.0f} | {cpu:.2f} | {audio / cpu:.0f} "
                  f"| {rss:.0f} | {anon:.0f} |")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
