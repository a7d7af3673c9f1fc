#!/usr/bin/env python
"""Recurrent-layer implementations: packed sequences vs the exact padded "flip" path.

Times forward+backward training steps of the acoustic model on random log-mels shaped like a
speechocean762 batch, both implementations interleaved in one run so that machine load hits
both alike. Prints audio-seconds processed per wall-second and the ratio.

    python scripts/bench_rnn.py [--threads 2] [--steps 5] [--cell lstm]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from asr.model import AcousticModel, ModelConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--batch-seconds", type=float, default=100.0, help="audio seconds per batch")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    # speechocean762-like durations: 2-8 s, similar within a batch (bucketed)
    durs = []
    while sum(durs) < args.batch_seconds:
        durs.append(4.0 + torch.rand(1, generator=g).item())
    lens = torch.tensor([int(d * 100) + 1 for d in durs])
    feats = torch.randn(len(durs), int(lens.max()), 80, generator=g)
    targets = torch.randint(1, 30, (len(durs), 40), generator=g)
    target_lens = torch.full((len(durs),), 40)
    audio = sum(durs)

    print(f"batch: {len(durs)} utterances, {audio:.0f} s audio, threads={args.threads}")
    print(f"{'cell':5} {'impl':7} {'s/step':>8} {'audio-s/s':>10} {'vs packed':>10}")
    for cell in args.cells.split(","):
        models = {}
        for impl in ("packed", "flip"):
            torch.manual_seed(0)
            m = AcousticModel(ModelConfig(cell=cell, rnn_impl=impl), 80, 30).train()
            models[impl] = (m, torch.optim.AdamW(m.parameters(), 1e-3))
        times = {k: [] for k in models}
        for step in range(args.steps + 1):
            for impl, (m, opt) in models.items():
                t0 = time.perf_counter()
                lp, out = m(feats, lens)
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
