#!/usr/bin/env python
"""Recurrent-layer implementations: packed sequences vs the exact padded "flip" path.

Times forward+backward training steps (forward, CTC, backward, AdamW) of the acoustic model
built from a recipe config's ``model`` section (default conf/speechocean762.yaml) on random
log-mels shaped like a bucketed speechocean762 batch (4-5 s utterances), both implementations
interleaved in one run so that machine load hits both alike. Prints exactly what it ran,
audio-seconds processed per wall-second and the ratio.

    python benchmarks/bench_rnn.py [--config conf/speechocean762.yaml] [--threads 2] [--steps 5] [--cells lstm]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from asr.config import load_config
from asr.model import AcousticModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="conf/speechocean762.yaml", help="recipe config whose model section is timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--batch-seconds", type=float, default=100.0, help="audio seconds per batch")
    args = ap.parse_args()
    cfg = load_config(args.config, [])
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    # speechocean762-like durations: 2-8 s, similar within a batch (bucketed)
    durs = []
    while sum(durs) < args.batch_seconds:
        durs.append(4.0 + torch.rand(1, generator=g).item())
    lens = torch.tensor([int(d * 100) + 1 for d in durs])
    n_mels = cfg.features.n_mels
    feats = torch.randn(len(durs), int(lens.max()), n_mels, generator=g)
    targets = torch.randint(1, 30, (len(durs), 40), generator=g)
    target_lens = torch.full((len(durs),), 40)
    audio = sum(durs)

    m = cfg.model
    print(f"model: {args.config} model section ({m.num_layers} x {m.hidden} {'bi' if m.bidirectional else 'uni'}"
          f"directional, conv x{m.subsampling} with {m.conv_channels} channels, layer_norm={m.layer_norm}, "
          f"cmvn={m.cmvn}), {n_mels} mels, random features")
    print(f"batch: {len(durs)} utterances, {audio:.0f} s audio, threads={args.threads}")
    print(f"{'cell':5} {'impl':7} {'s/step':>8} {'audio-s/s':>10} {'vs packed':>10}")
    for cell in args.cells.split(","):
        models = {}
        for impl in ("packed", "flip"):
            torch.manual_seed(0)
            net = AcousticModel(replace(cfg.model, cell=cell, rnn_impl=impl), n_mels, 30).train()
            models[impl] = (net, torch.optim.AdamW(net.parameters(), 1e-3))
        times = {k: [] for k in models}
        for step in range(args.steps + 1):
            for impl, (net, opt) in models.items():
                t0 = time.perf_counter()
                lp, out = net(feats, lens)
                loss = F.ctc_loss(lp.transpose(0, 1), targets, out, target_lens, zero_infinity=True)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step > 0:  # first step warms up allocators and kernels
                    times[impl].append(time.perf_counter() - t0)
        base = sum(times["packed"]) / len(times["packed"])
        for impl, ts in times.items():
            t = sum(ts) / len(ts)
            print(f"{cell:5} {impl:7} {t:8.2f} {audio / t:10.1f} {base / t:9.2f}x")


if __name__ == "__main__":
    main()
