#!/usr/bin/env python
"""Training throughput: duration-bucketed vs random batching on real speech.

Takes a sample of a training manifest (default: speechocean762 as prepared by
`asr prepare speechocean762 --out data/speechocean762`), precomputes log-mels, then runs
optimiser steps of the configured model (default: conf/speechocean762.yaml) under both batch
samplers, interleaved so machine load hits both alike. Prints audio-seconds per wall-second,
padding efficiency (real frames / padded frames) and the speed-up of bucketing.

    python benchmarks/bench_train.py [--config conf/speechocean762.yaml] [--utts 400] [--threads 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from asr.config import load_config
from asr.data.dataset import FeatureDataset, collate, filter_utterances
from asr.data.manifest import read_manifest
from asr.data.sampler import BucketBatchSampler
from asr.model import AcousticModel
from asr.text import CharTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="conf/speechocean762.yaml")
    ap.add_argument("--utts", type=int, default=400, help="utterances sampled from the manifest")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=120.0, help="wall seconds of training per sampler")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    utts = read_manifest(cfg.data.train_manifest)
    random.Random(0).shuffle(utts)
    utts = utts[: args.utts]
    tok = CharTokenizer.from_texts(u.text for u in utts)
    model = AcousticModel(cfg.model, cfg.features.n_mels, tok.vocab_size)
    keep, targets, _ = filter_utterances(utts, tok, cfg.features, model.out_lengths, cfg.data.max_duration)
    ds = FeatureDataset(keep, targets, cfg.features, cache=True)
    for i in range(len(ds)):
        ds.features(i)
    print(f"{len(ds)} utterances, {sum(ds.durations) / 60:.1f} min audio; model {model.num_parameters() / 1e6:.2f} M "
          f"params ({cfg.model.num_layers}x{cfg.model.hidden} {cfg.model.cell}, x{cfg.model.subsampling}); "
          f"max_batch_seconds={cfg.data.max_batch_seconds}, threads={args.threads}")

    runs = {}
    for name, bucketing in (("bucketed", True), ("random", False)):
        torch.manual_seed(0)
        m = AcousticModel(cfg.model, cfg.features.n_mels, tok.vocab_size).train()
        sampler = BucketBatchSampler(ds.durations, cfg.data.max_batch_seconds, cfg.data.max_batch_size,
                                     cfg.data.num_buckets, bucketing=bucketing, seed=0)
        runs[name] = {"model": m, "opt": torch.optim.AdamW(m.parameters(), 1e-3), "sampler": sampler,
                      "batches": iter(list(sampler)), "epoch": 0,
                      "eff": sampler.padding_efficiency(), "audio": 0.0, "time": 0.0, "steps": 0}
    # Alternate single steps between the two samplers until each has had its time budget.
    while any(r["time"] < args.seconds for r in runs.values()):
        for r in runs.values():
            if r["time"] >= args.seconds:
                continue
            b = next(r["batches"], None)
            if b is None:  # next epoch: reshuffled batches
                r["epoch"] += 1
                r["sampler"].set_epoch(r["epoch"])
                r["batches"] = iter(list(r["sampler"]))
                b = next(r["batches"])
            batch = collate([ds[i] for i in b])
            t0 = time.perf_counter()
            lp, out = r["model"](batch.feats, batch.feat_lens)
            loss = F.ctc_loss(lp.transpose(0, 1), batch.targets, out, batch.target_lens, zero_infinity=True)
            r["opt"].zero_grad()
            loss.backward()
            r["opt"].step()
            r["time"] += time.perf_counter() - t0
            r["audio"] += sum(ds.durations[i] for i in b)
            r["steps"] += 1
    print(f"{'sampler':9} {'steps':>6} {'audio-s/s':>10} {'padding eff.':>13} {'vs random':>10}")
    base = runs["random"]["audio"] / runs["random"]["time"]
    for name, r in runs.items():
        rate = r["audio"] / r["time"]
        print(f"{name:9} {r['steps']:6d} {rate:10.1f} {r['eff']:13.3f} {rate / base:9.2f}x")


if __name__ == "__main__":
    main()
