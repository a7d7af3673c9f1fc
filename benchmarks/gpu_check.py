#!/usr/bin/env python
"""One-shot GPU check of the training stack: throughput, exactness, a real CLI run, data rate.

Written to run once, unattended, on a bare single-GPU machine with no network (see
benchmarks/gpu_check.sh for the exact command and what it expects installed), inside a global
time budget (``--budget``, default 480 s). Sections, each wrapped so that a failure in one is
recorded (error text in the JSON) and the others still run:

1. ``bench``: training steps (forward, fp32 CTC loss, backward, clip, AdamW) of the
   conf/librispeech100.yaml model on synthetic log-mels with LibriSpeech train-clean-100's
   duration spread, bucketed by the toolkit's own sampler, for three recurrent
   implementations: ``flip`` and ``packed`` (both exact for padded batches) and a plain
   padded ``nn.LSTM(bidirectional=True)`` per layer (what most peers run; its backward
   direction reads the padding, so padded items get other outputs). Each in fp32 and bf16
   autocast, interleaved round-robin so that machine load hits all alike. Plus the
   agreement of flip and packed (same weights: log-probs over valid frames, gradients).
2. ``loader``: the data path without a feature cache (decode + speed perturbation +
   log-mel, ``FeatureDataset(cache=False)``) with 1 and N DataLoader workers.
3. ``train``: ``asr prepare`` -> ``asr train`` (one timed epoch, then ``--resume`` for the
   epochs that fit) -> ``asr export`` -> ``asr evaluate`` on dev, through the CLI.
4. The implied LibriSpeech-100 epoch time per variant beside the loader bound, and the
   issue's targets as PASS/FAIL.

Results: OUT/gpu_check.md (tables) and OUT/gpu_check.json; the CLI's output goes to
OUT/cli.log. ``--dry-run`` does all of it in seconds on CPU at toy sizes (yesno corpus).

    python benchmarks/gpu_check.py OUT [--dry-run] [--data DIR] [--budget 480] [--work DIR]
    python benchmarks/gpu_check.py --pack-speechocean SRC DEST [--max-mb 45]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: import this checkout's asr
    sys.path.insert(0, str(REPO))

from asr.data.sampler import BucketBatchSampler  # noqa: E402
from asr.features import length_mask  # noqa: E402
from asr.model import AcousticModel, ModelConfig  # noqa: E402

LIBRISPEECH100_SECONDS = 100.6 * 3600  # train-clean-100
TARGET_AUDIO_S_PER_S = 3000.0  # a train-clean-100 epoch in <= 2 min
AGREE_TOL = 1e-3
VARIANTS = ("flip", "packed", "padded")  # padded = plain nn.LSTM(bidirectional=True), inexact
EXACT = ("flip", "packed")
PRECISIONS = ("fp32", "bf16")
T0 = time.time()


def log(msg: str) -> None:
    """Progress line with wall-clock time and seconds since start (the remote log is all we get)."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """Everything the dry run shrinks."""

    model: ModelConfig
    vocab: int = 257  # BPE 256 + blank
    n_mels: int = 80
    dur_range: tuple[float, float] = (2.0, 20.0)
    pool: int = 4000  # synthetic utterances the sampler packs
    max_batch_seconds: float = 1200.0
    max_batch_size: int = 128
    num_buckets: int = 50
    batches: int = 6  # distinct batches timed (quantiles of the epoch's batches by length)
    warmup_rounds: int = 2
    max_rounds: int = 30
    min_rounds: int = 3
    tokens_per_second: float = 6.0  # BPE-256 targets per second of speech
    agree_utts: int = 16  # the agreement batch: lengths spread over dur_range
    loader_slice_s: float = 15.0  # seconds per DataLoader measurement
    train_seconds: float = 240.0  # wall-clock for the CLI training run (prepare to last epoch)
    threads: int = 0  # torch CPU threads in this process (0 = default)
    extra: dict = field(default_factory=dict)


def librispeech100_model() -> ModelConfig:
    """conf/librispeech100.yaml's model section, read from the file so the two cannot drift."""
    from asr.config import load_config

    cfg = load_config(REPO / "conf" / "librispeech100.yaml",
                      ["data.train_manifest=x", "data.dev_manifest=x"])
    return cfg.model


def full_sizes() -> Sizes:
    return Sizes(model=librispeech100_model())


def dry_sizes() -> Sizes:
    m = replace(librispeech100_model(), hidden=16, num_layers=2, conv_channels=4)
    return Sizes(model=m, vocab=17, dur_range=(1.0, 3.0), pool=40, max_batch_seconds=6.0,
                 max_batch_size=8, num_buckets=4, batches=2, warmup_rounds=1, max_rounds=2,
                 min_rounds=2, agree_utts=3, loader_slice_s=0.5, train_seconds=60.0, threads=1)


# --------------------------------------------------------------------------- synthetic data


def librispeech_durations(n: int, lo: float, hi: float, g: torch.Generator) -> list[float]:
    """Durations shaped like train-clean-100 (mean 12.7 s, most 11-17 s, 2-20 s overall;
    LibriSpeech's segmentation caps at ~17 s with a thin tail), scaled into [lo, hi]."""
    out = []
    for _ in range(n):
        u, v = torch.rand(2, generator=g).tolist()
        if u < 0.75:
            d = 11.0 + 6.0 * v
        elif u < 0.95:
            d = 2.0 + 9.0 * v
        else:
            d = 17.0 + 3.0 * v
        out.append(lo + (d - 2.0) / 18.0 * (hi - lo))
    return out


@dataclass
class SynthBatch:
    feats: Tensor
    feat_lens: Tensor
    targets: Tensor
    target_lens: Tensor
    audio_seconds: float


def make_batch(durs: list[float], s: Sizes, g: torch.Generator, device: torch.device) -> SynthBatch:
    lens = torch.tensor([int(d * 100) + 1 for d in durs])  # 10 ms frames
    feats = torch.randn(len(durs), int(lens.max()), s.n_mels, generator=g)
    feats = feats * length_mask(lens, feats.shape[1])[:, :, None]
    tlens = torch.tensor([max(1, int(d * s.tokens_per_second)) for d in durs])
    targets = torch.randint(1, s.vocab, (len(durs), int(tlens.max())), generator=g)
    return SynthBatch(feats.to(device), lens.to(device), targets.to(device), tlens.to(device), float(sum(durs)))


def epoch_batches(s: Sizes, device: torch.device) -> tuple[list[SynthBatch], dict]:
    """``s.batches`` batches at evenly spaced quantiles (by longest item) of one epoch of the
    bucketing sampler over a synthetic LibriSpeech-like pool: each batch stands for an equal
    share of the epoch's steps, so summed audio / summed time estimates the epoch's rate."""
    g = torch.Generator().manual_seed(0)
    durs = librispeech_durations(s.pool, *s.dur_range, g)
    sampler = BucketBatchSampler(durs, max_batch_seconds=s.max_batch_seconds,
                                 max_batch_size=s.max_batch_size, num_buckets=s.num_buckets, seed=0)
    all_batches = sorted(list(sampler), key=lambda b: max(durs[i] for i in b))
    picks = [all_batches[int((k + 0.5) / s.batches * len(all_batches))] for k in range(s.batches)]
    batches = [make_batch([durs[i] for i in b], s, g, device) for b in picks]
    info = {
        "pool_utterances": s.pool,
        "pool_mean_duration_s": round(sum(durs) / len(durs), 2),
        "epoch_batches": len(all_batches),
        "epoch_mean_audio_s_per_batch": round(sum(durs) / len(all_batches), 1),
        "timed_batches": [{"utterances": len(b), "longest_s": round(max(durs[i] for i in b), 2),
                           "audio_s": round(sum(durs[i] for i in b), 1)} for b in picks],
    }
    return batches, info


# --------------------------------------------------------------------------- models


class PaddedBiLSTM(nn.Module):
    """One plain ``nn.LSTM(bidirectional=True)`` over the padded batch, the layer most peers
    run. Inexact for padded items: the backward direction starts in the padding."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.rnn(x)[0]


def build_model(variant: str, cfg: ModelConfig, s: Sizes) -> AcousticModel:
    """The acoustic model with ``variant``'s recurrent layers; the padded variant keeps the
    same CMVN, SpecAugment, conv front end, LayerNorms, dropout and output layer and swaps
    each exact layer for a :class:`PaddedBiLSTM` of the same size."""
    impl = "flip" if variant == "padded" else variant
    model = AcousticModel(replace(cfg, rnn_impl=impl), s.n_mels, s.vocab)
    if variant == "padded":
        assert cfg.cell == "lstm" and cfg.bidirectional, "the padded baseline is a BiLSTM"
        model.rnns = nn.ModuleList(
            PaddedBiLSTM(layer.fwd.input_size, layer.fwd.hidden_size) for layer in model.rnns
        )
    return model


def copy_flip_into_padded(flip: AcousticModel, padded: AcousticModel) -> None:
    """Give the padded model the flip model's weights (forward -> l0, backward -> l0_reverse)."""
    state = {k: v for k, v in flip.state_dict().items() if not k.startswith("rnns.")}
    for i, layer in enumerate(flip.rnns):
        for name, p in layer.fwd.named_parameters():
            state[f"rnns.{i}.rnn.{name}"] = p.detach()
        for name, p in layer.bwd.named_parameters():
            state[f"rnns.{i}.rnn.{name}_reverse"] = p.detach()
    padded.load_state_dict(state)


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def ctc_loss(log_probs: Tensor, out_lens: Tensor, b: SynthBatch) -> Tensor:
    """As asr.train.module.CTCModule: sum over the batch / utterances, in fp32."""
    return F.ctc_loss(log_probs.float().transpose(0, 1), b.targets, out_lens, b.target_lens,
                      blank=0, reduction="sum", zero_infinity=True) / len(b.target_lens)


def train_step(model: AcousticModel, opt: torch.optim.Optimizer, b: SynthBatch, precision: str,
               device: torch.device) -> float:
    with autocast(precision, device):
        log_probs, out_lens = model(b.feats, b.feat_lens)
    loss = ctc_loss(log_probs, out_lens, b)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # as trainer.gradient_clip_val
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


# --------------------------------------------------------------------------- section 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_throughput(s: Sizes, device: torch.device, budget_s: float) -> dict:
    """Round-robin over (variant, precision) training steps; warm-up rounds excluded."""
    batches, batch_info = epoch_batches(s, device)
    models, opts = {}, {}
    for v in VARIANTS:
        torch.manual_seed(0)
        models[v] = build_model(v, s.model, s).to(device).train()
        opts[v] = torch.optim.AdamW(models[v].parameters(), lr=1e-4)
    keys = [(v, p) for v in VARIANTS for p in PRECISIONS]
    times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    audio: dict[tuple[str, str], float] = {k: 0.0 for k in keys}
    peak: dict[tuple[str, str], float] = {k: 0.0 for k in keys}
    step_peak: dict[tuple[str, str], float] = {k: 0.0 for k in keys}
    nonfinite: dict[tuple[str, str], int] = {k: 0 for k in keys}
    failed: dict[tuple[str, str], str] = {}
    cuda = device.type == "cuda"
    # The dtype the first recurrent layer really computes in, per variant and precision
    # (under autocast, cuDNN's LSTM runs in bf16; CPU's may stay fp32 on some paths).
    rnn_dtypes: dict[str, str] = {}
    current = {"key": ""}

    def note_dtype(module: nn.Module, inputs: Any, output: Any) -> None:  # must return None
        out = output[0]  # a tensor, or a PackedSequence
        rnn_dtypes.setdefault(current["key"], str(getattr(out, "data", out).dtype).replace("torch.", ""))

    for v, m in models.items():
        (m.rnns[0].rnn if v == "padded" else m.rnns[0].fwd).register_forward_hook(note_dtype)
    start = time.time()
    rounds = 0
    round_times = []
    while rounds < s.warmup_rounds + s.max_rounds:
        timed = rounds >= s.warmup_rounds
        r0 = time.time()
        b = batches[rounds % len(batches)]
        for k in [k for k in keys if k not in failed]:
            v, p = k
            current["key"] = f"{v}/{p}"
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            sync(device)
            t0 = time.perf_counter()
            try:
                loss = train_step(models[v], opts[v], b, p, device)
                sync(device)
            except Exception as e:  # noqa: BLE001 - e.g. out of memory: the other variants go on
                failed[k] = f"{type(e).__name__}: {e}"
                log(f"bench: {v}/{p} FAILED, dropped: {failed[k][:300]}")
                opts[v].zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.empty_cache()
                continue
            dt = time.perf_counter() - t0
            if timed:
                times[k].append(dt)
                audio[k] += b.audio_seconds
                nonfinite[k] += 0 if math.isfinite(loss) else 1
                if cuda:
                    peak[k] = max(peak[k], torch.cuda.max_memory_allocated(device) / 2**30)
                    step_peak[k] = max(step_peak[k], (torch.cuda.max_memory_allocated(device) - before) / 2**30)
        rounds += 1
        round_times.append(time.time() - r0)
        done = rounds - s.warmup_rounds
        if rounds == s.warmup_rounds:
            log(f"bench: {rounds} warm-up round(s) in {time.time() - start:.1f} s")
        elif timed and done % 5 == 0:
            log(f"bench: {done} timed round(s), {time.time() - start:.1f} s")
        # Stop when the next round would overrun, once the minimum is timed.
        if len(failed) == len(keys):
            break
        if timed and done >= s.min_rounds and time.time() - start + max(round_times[-3:]) > budget_s:
            break
    variants = {}
    spec_ms = time_spec_augment(models["flip"], batches[-1], device)
    for k in keys:
        ts = times[k]
        tot = sum(ts)
        state_gb = sum(t.numel() * t.element_size() for t in models[k[0]].parameters()) * 3 / 2**30
        variants[f"{k[0]}/{k[1]}"] = {
            "impl": k[0],
            "precision": k[1],
            "exact": k[0] in EXACT,
            "steps": len(ts),
            "step_ms": 1000 * tot / len(ts) if ts else None,
            "audio_s_per_s": audio[k] / tot if tot else None,
            "peak_mem_gb": round(peak[k], 3) if cuda else None,
            "step_peak_mem_gb": round(step_peak[k], 3) if cuda else None,
            "model_state_gb": round(state_gb, 3),  # params + AdamW's two moments
            "nonfinite_losses": nonfinite[k],
            "error": failed.get(k),
        }
    return {
        "variants": variants,
        "rounds_timed": rounds - s.warmup_rounds,
        "warmup_rounds": s.warmup_rounds,
        "parameters": {v: sum(p.numel() for p in m.parameters()) for v, m in models.items()},
        "batches": batch_info,
        "rnn_output_dtype": rnn_dtypes,
        "spec_augment_ms_longest_batch": spec_ms,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "wall_s": round(time.time() - start, 1),
    }


def time_spec_augment(model: AcousticModel, b: SynthBatch, device: torch.device) -> float | None:
    """SpecAugment alone on one batch (ms): it loops over utterances in Python, one
    device-to-host sync each, which a GPU step may notice."""
    if model.spec_augment is None:
        return None
    ts = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        model.spec_augment(b.feats, b.feat_lens)
        sync(device)
        ts.append(time.perf_counter() - t0)
    return round(1000 * min(ts), 2)


def agreement(s: Sizes, device: torch.device) -> dict:
    """flip vs packed with the same weights on one batch whose lengths spread over the whole
    duration range (so padding matters): max |diff| of log-probs over valid frames and of
    every parameter's gradient, in fp32 and bf16. Dropout and SpecAugment off (both random).
    The padded nn.LSTM with the same weights is shown beside, as the inexact reference."""
    cfg = replace(s.model, dropout=0.0, spec_augment_enabled=False)
    g = torch.Generator().manual_seed(1)
    lo, hi = s.dur_range
    durs = [lo + (hi - lo) * i / max(1, s.agree_utts - 1) for i in range(s.agree_utts)]
    b = make_batch(durs, s, g, device)
    torch.manual_seed(0)
    models = {"flip": build_model("flip", cfg, s), "packed": build_model("packed", cfg, s),
              "padded": build_model("padded", cfg, s)}
    models["packed"].load_state_dict(models["flip"].state_dict())
    copy_flip_into_padded(models["flip"], models["padded"])
    out: dict[str, Any] = {"utterances": len(durs), "durations_s": [round(d, 2) for d in durs], "tolerance": AGREE_TOL}
    ref: dict[str, Any] = {}
    # Exactness is about the arithmetic: fp32 means fp32 here, not TF32 (cuDNN allows TF32 by
    # default, which training keeps); restored afterwards.
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    out["tf32"] = False
    for p in PRECISIONS:
        try:
            out[p] = _agree_at(models, b, p, device, ref)
        except Exception as e:  # noqa: BLE001 - the other precision still runs
            out[p] = {"error": f"{type(e).__name__}: {e}"}
            log(f"agreement ({p}) FAILED: {out[p]['error'][:300]}")
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    return out


def _agree_at(models: dict[str, AcousticModel], b: SynthBatch, p: str, device: torch.device,
              ref: dict[str, Any]) -> dict:
    """flip vs packed (and padded) at one precision: max |diff| of valid log-probs and
    gradients. In bf16 also flip bf16 vs flip fp32 (kept in ``ref`` by the fp32 call): the
    rounding noise that any two bf16 computations of the same function differ by."""
    res = {}
    for v, m in models.items():
        m.to(device).train().zero_grad(set_to_none=True)
        with autocast(p, device):
            lp, lens = m(b.feats, b.feat_lens)
        ctc_loss(lp, lens, b).backward()
        grads = {n: q.grad.detach().float().clone() for n, q in m.named_parameters() if q.grad is not None}
        if v == "padded":  # rename to the flip layout for comparison
            grads = _padded_grads_as_flip(grads)
        res[v] = (lp.detach().float(), length_mask(lens, lp.shape[1]), grads)
    ref_lp, mask, ref_g = res["flip"]
    row = {}
    for v in ("packed", "padded"):
        lp, _, gr = res[v]
        lp_diff = float((lp - ref_lp).abs()[mask].max())
        g_diff = max(float((gr[n] - ref_g[n]).abs().max()) for n in ref_g)
        g_scale = max(float(t.abs().max()) for t in ref_g.values())
        row[v] = {"max_abs_diff_log_probs": lp_diff, "max_abs_diff_grads": g_diff,
                  "max_abs_grad": g_scale, "max_rel_diff_grads": g_diff / g_scale if g_scale else None}
    if p == "fp32":
        ref["flip"] = res["flip"]
    elif "flip" in ref:
        f_lp, _, f_g = ref["flip"]
        row["flip_fp32"] = {"max_abs_diff_log_probs": float((f_lp - ref_lp).abs()[mask].max()),
                            "max_abs_diff_grads": max(float((f_g[n] - ref_g[n]).abs().max()) for n in ref_g),
                            "max_abs_grad": max(float(t.abs().max()) for t in f_g.values())}
        row["flip_fp32"]["max_rel_diff_grads"] = row["flip_fp32"]["max_abs_diff_grads"] / row["flip_fp32"]["max_abs_grad"]
    row["packed"]["pass"] = bool(row["packed"]["max_abs_diff_log_probs"] <= AGREE_TOL
                                 and row["packed"]["max_abs_diff_grads"] <= AGREE_TOL)
    return row


def _padded_grads_as_flip(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for n, t in grads.items():
        m = re.match(r"rnns\.(\d+)\.rnn\.(\w+?)(_reverse)?$", n)
        if m:
            out[f"rnns.{m.group(1)}.{'bwd' if m.group(3) else 'fwd'}.{m.group(2)}"] = t
        else:
            out[n] = t
    return out


# --------------------------------------------------------------------------- CLI runs


class Cli:
    """Runs ``python -m asr ...`` in the repo root, appending all output to one log file and
    echoing the lines worth seeing (epoch summaries, errors) as progress."""

    ECHO = re.compile(r"^(epoch \d+|error|warning|Traceback|best dev WER|train:|dev:|model:)|(Error|Exception):")

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")

    def __call__(self, args: list[str], timeout: float) -> tuple[int, list[str], float]:
        cmd = [sys.executable, "-m", "asr", *args]
        log(f"$ asr {' '.join(args)}  (timeout {timeout:.0f} s)")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                   PYTHONUNBUFFERED="1")
        t0 = time.time()
        lines: list[str] = []
        self.stamps: list[float] = []  # arrival of each line, seconds after the start (unbuffered child)
        with self.log_path.open("a") as f:
            f.write(f"\n===== asr {' '.join(args)}\n")
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
            timer = _Killer(proc, timeout)
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                lines.append(line.rstrip("\n"))
                self.stamps.append(time.time() - t0)
                if self.ECHO.search(line):
                    log("  | " + line.rstrip()[:200])
            rc = proc.wait()
            timer.cancel()
            if timer.fired:
                rc = 124
                f.write(f"===== killed after {timeout:.0f} s\n")
        dt = time.time() - t0
        log(f"  -> exit {rc} in {dt:.1f} s")
        return rc, lines, dt


class _Killer:
    """Kill a child's whole process group (DataLoader workers too) after ``timeout`` s."""

    def __init__(self, proc: subprocess.Popen, timeout: float) -> None:
        import threading

        self.fired = False
        self.proc = proc
        self.timer = threading.Timer(max(1.0, timeout), self._kill)
        self.timer.daemon = True
        self.timer.start()

    def _kill(self) -> None:
        self.fired = True
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        self.timer.cancel()


class StageError(RuntimeError):
    pass


def _check(rc: int, lines: list[str], what: str) -> None:
    if rc != 0:
        tail = "\n".join(lines[-15:])
        raise StageError(f"{what} exited {rc}{' (timed out)' if rc == 124 else ''}; last output:\n{tail}")


EPOCH_LINE = re.compile(r"^epoch (\d+) step (\d+):")
FIT_START = re.compile(r"^model: ")  # asr.train.training prints it after manifests and feature cache, before fit


def epoch_marks(lines: list[str], stamps: list[float]) -> tuple[float | None, list[tuple[int, int, float]]]:
    """When fitting started and (epoch, step, when) for each line of the EpochSummary callback (asr.train.callbacks),
    in seconds after the process start, from when each line arrived (sub-second, unlike the
    whole seconds the line itself shows)."""
    fit = next((t for x, t in zip(lines, stamps) if FIT_START.match(x)), None)
    marks = [(int(m.group(1)), int(m.group(2)), t) for m, t in ((EPOCH_LINE.match(x), t) for x, t in zip(lines, stamps)) if m]
    return fit, marks


def prepare(cli: Cli, dry: bool, data: Path, work: Path, workers: int, deadline: float) -> dict:
    corpus = "yesno" if dry else "speechocean762"
    if not data.is_dir():
        raise StageError(f"{data}: corpus folder not found (pass --data or --yesno-data)")
    out = work / "data"
    rc, lines, dt = cli(["prepare", corpus, "--src", str(data), "--out", str(out), "--workers", str(workers),
                         "--allow-rejected"], timeout=max(30.0, deadline - time.time()))
    _check(rc, lines, "asr prepare")
    counts = {split: sum(1 for _ in open(out / f"{split}.jsonl")) for split in ("train", "dev")}
    return {"corpus": corpus, "src": str(data), "manifests": str(out), "utterances": counts, "wall_s": round(dt, 1)}


def cli_train(cli: Cli, dry: bool, work: Path, s: Sizes, device: torch.device, deadline: float) -> dict:
    """One timed epoch, then --resume for the epochs that fit before ``deadline``; then
    export and evaluate (their time is reserved out of the training time)."""
    data = work / "data"
    exp = work / ("yesno-dry" if dry else "so762-gpu")
    if exp.exists():
        shutil.rmtree(exp)
    conf = "conf/yesno.yaml" if dry else "conf/speechocean762.yaml"
    common = [conf, f"data.train_manifest={data / 'train.jsonl'}", f"data.dev_manifest={data / 'dev.jsonl'}",
              f"exp_dir={exp}", "trainer.progress_bar=false"]
    if dry:
        common += ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.threads=1",
                   "model.hidden=16", "model.num_layers=1", "model.conv_channels=4", "data.num_workers=0"]
    else:
        # More workers than the recipe's 1 only fill the feature cache faster (per start).
        # (--device cpu: the same path without a GPU, for checking this script.)
        common += ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed"] if device.type == "cuda" else \
                  ["trainer.accelerator=cpu", "trainer.precision=32-true"]
        common += [f"data.num_workers={min(8, os.cpu_count() or 1)}"]
    common += list(s.extra.get("train_overrides", ()))
    reserve = 20.0 if dry else 45.0  # export + evaluate
    res: dict[str, Any] = {"config": conf, "overrides": common[1:], "exp_dir": str(exp)}

    rc, lines, dt1 = cli(["train", *common, "trainer.max_epochs=1"], timeout=max(30.0, deadline - time.time()))
    _check(rc, lines, "asr train (first epoch)")
    fit, marks = epoch_marks(lines, cli.stamps)
    if not marks or fit is None:
        raise StageError("asr train printed no 'model:' line or no epoch summary line")
    epoch_s = max(0.1, marks[0][2] - fit)  # Lightning set-up, sanity validation, epoch 0, its validation
    overhead = max(0.0, dt1 - epoch_s)  # start-up, manifests, feature cache, end: paid again on resume
    res.update(first_run_s=round(dt1, 1), first_epoch_s=round(epoch_s, 1), startup_s=round(overhead, 1),
               steps_per_epoch=marks[0][1])
    left = deadline - time.time() - reserve - overhead
    extra = max(0, min(500, int(left // epoch_s)))
    if dry:
        extra = max(1, min(extra, 1))  # exercise the resume path, once
    res["resume_epochs_planned"] = extra
    if extra > 0:
        rc, lines2, dt2 = cli(["train", *common, f"trainer.max_epochs={1 + extra}", "--resume"],
                              timeout=max(30.0, deadline - time.time() - reserve / 2))
        res["resume_run_s"] = round(dt2, 1)
        if rc != 0:  # last.ckpt of the epochs done so far still exports
            res["resume_error"] = f"asr train --resume exited {rc}: " + " | ".join(lines2[-5:])
        fit2, m2 = epoch_marks(lines2, cli.stamps)
        # seconds after fitting started (checkpoint restore included) at each epoch's end
        res["resumed_epoch_marks_s"] = [round(m[2] - (fit2 or 0.0), 1) for m in m2]
        if len(m2) >= 2:
            per = [(b[2] - a[2]) for a, b in zip(m2, m2[1:])]
            res["epoch_s_resumed_median"] = round(sorted(per)[len(per) // 2], 1)
    summary_path = exp / "train_summary.json"
    if summary_path.exists():
        summ = json.loads(summary_path.read_text())
        res["train_summary"] = summ
        res["epochs_run"] = summ.get("epochs")
        res["skipped_steps_nonfinite"] = summ.get("skipped_steps_nonfinite")
        res["best_dev_wer_training"] = summ.get("best_dev_wer")

    model = work / (exp.name + ".asr")
    rc, lines, _ = cli(["export", str(exp), "--out", str(model)], timeout=max(30.0, deadline - time.time() + 30))
    _check(rc, lines, "asr export")
    ev = work / (exp.name + "-eval-dev")
    dev_device = "cuda" if device.type == "cuda" else "cpu"
    rc, lines, dt = cli(["evaluate", str(model), str(data / "dev.jsonl"), "--out", str(ev), "--device", dev_device,
                         "--resamples", "100"], timeout=max(30.0, deadline - time.time() + 60))
    res["evaluate_s"] = round(dt, 1)
    summ_file = ev / "summary.json"
    if summ_file.exists():
        e = json.loads(summ_file.read_text())
        res["dev_wer"] = e.get("wer")
        res["dev_cer"] = e.get("cer")
    _check(rc, lines, "asr evaluate")
    return res


# --------------------------------------------------------------------------- section 2


def loader_rate(manifest: Path, workers: list[int], slice_s: float, speed_perturb: tuple[float, ...]) -> dict:
    """Audio-seconds per second that ``FeatureDataset(cache=False)`` + DataLoader deliver
    (decode, speed-perturbation resample, log-mel, collate), per worker count. Timed from
    the first batch (worker start-up excluded) for ``slice_s`` seconds, cycling epochs."""
    from asr.data.dataset import FeatureDataset, collate
    from asr.data.manifest import read_manifest
    from asr.features import FeatureConfig

    utts = read_manifest(manifest)
    targets = [[1] for _ in utts]
    ds = FeatureDataset(utts, targets, FeatureConfig(), cache=False, speed_perturb=speed_perturb)
    out: dict[str, Any] = {"manifest": str(manifest), "utterances": len(utts),
                           "mean_duration_s": round(sum(ds.durations) / max(1, len(ds)), 2),
                           "speed_perturb": list(speed_perturb), "slice_s": slice_s, "workers": {}}
    durations = {u.id: u.duration for u in utts}
    for w in workers:
        sampler = BucketBatchSampler(ds.durations, max_batch_seconds=60.0, max_batch_size=32, num_buckets=20, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=w,
                                             persistent_workers=w > 0)
        t_start: float | None = None
        audio, items, epochs = 0.0, 0, 0
        while True:
            sampler.set_epoch(epochs)
            for batch in loader:
                if t_start is None:
                    t_start = time.perf_counter()
                    continue
                audio += sum(durations[i] for i in batch.ids)
                items += len(batch.ids)
                if time.perf_counter() - t_start >= slice_s:
                    break
            epochs += 1
            if t_start is not None and time.perf_counter() - t_start >= slice_s:
                break
        dt = time.perf_counter() - t_start
        out["workers"][str(w)] = {"audio_s_per_s": audio / dt if dt > 0 else None, "utterances": items,
                                  "seconds": round(dt, 2)}
        log(f"loader: {w} worker(s): {audio / dt:.0f} audio-s/s ({items} utterances in {dt:.1f} s)")
        del loader
    return out


# --------------------------------------------------------------------------- report


def fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if x != 0 and (abs(x) < 10 ** -nd or abs(x) >= 1e6):
            return f"{x:.2e}"
        return f"{x:,.{nd}f}"
    return str(x)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def epoch_estimates(result: dict) -> dict:
    bench = (result.get("bench") or {}).get("variants") or {}
    loader = ((result.get("loader") or {}).get("workers")) or {}
    rates = {w: v.get("audio_s_per_s") for w, v in loader.items()}
    best_loader = max((r for r in rates.values() if r), default=None)
    rows = {}
    for name, v in bench.items():
        r = v.get("audio_s_per_s")
        train_s = LIBRISPEECH100_SECONDS / r if r else None
        load_s = LIBRISPEECH100_SECONDS / best_loader if best_loader else None
        bound = None
        if train_s and load_s:
            bound = "training step" if train_s >= load_s else "data loading (CPU)"
        rows[name] = {"train_epoch_min": train_s / 60 if train_s else None,
                      "loader_epoch_min_best": load_s / 60 if load_s else None,
                      "epoch_min": max(train_s, load_s) / 60 if train_s and load_s else None,
                      "bound_by": bound}
    return {"audio_hours": LIBRISPEECH100_SECONDS / 3600,
            "loader_epoch_min": {w: LIBRISPEECH100_SECONDS / r / 60 if r else None for w, r in rates.items()},
            "variants": rows}


def targets(result: dict, dry: bool) -> list[dict]:
    bench = (result.get("bench") or {}).get("variants") or {}
    agree = result.get("agreement") or {}
    out = []

    def verdict(ok: bool | None) -> str:
        if ok is None:
            return "n/a (no data)"
        return ("n/a (dry run)" if dry else ("PASS" if ok else "FAIL"))

    def rate(k: str) -> float | None:
        return (bench.get(k) or {}).get("audio_s_per_s")

    for p in PRECISIONS:
        exact = {v: rate(f"{v}/{p}") for v in EXACT}
        if all(exact.values()):
            win = max(exact, key=lambda v: exact[v])
            out.append({"target": f"default rnn_impl (flip) is the fastest exact implementation ({p})",
                        "measured": f"fastest exact: {win} ({exact[win]:,.0f} vs "
                                    f"{min(exact.values()):,.0f} audio-s/s); default is flip: {win == 'flip'}",
                        "verdict": verdict(win == "flip")})
        else:
            out.append({"target": f"default rnn_impl is the fastest exact ({p})", "measured": "-", "verdict": verdict(None)})
    r = rate("flip/bf16")
    out.append({"target": f">= {TARGET_AUDIO_S_PER_S:.0f} audio-s/s training, LibriSpeech-100 model, bf16, default impl "
                          "(train-clean-100 epoch <= 2 min)",
                "measured": f"{r:,.0f} audio-s/s (epoch {LIBRISPEECH100_SECONDS / r / 60:.1f} min)" if r else "-",
                "verdict": verdict(None if r is None else r >= TARGET_AUDIO_S_PER_S)})
    pad = rate("padded/bf16")
    out.append({"target": "default impl (flip, bf16) ahead of a plain padded nn.LSTM (bf16)",
                "measured": f"{r:,.0f} vs {pad:,.0f} audio-s/s ({r / pad:.2f}x)" if r and pad else "-",
                "verdict": verdict(None if not (r and pad) else r > pad)})
    for p in PRECISIONS:
        a = (agree.get(p) or {}).get("packed")
        out.append({"target": f"flip and packed agree within {AGREE_TOL:g} ({p}: log-probs, gradients)",
                    "measured": (f"log-probs {a['max_abs_diff_log_probs']:.2e}, grads {a['max_abs_diff_grads']:.2e}"
                                 if a else "-"),
                    # exactness is checked in the dry run too: it is a property of the code
                    "verdict": "n/a (no data)" if not a else ("PASS" if a["pass"] else "FAIL")})
    return out


def markdown(result: dict) -> str:
    dry = result["dry_run"]
    md = [f"# GPU check{' (DRY RUN: toy sizes on CPU, numbers mean nothing)' if dry else ''}", ""]
    env = result["environment"]
    md += [table(["", ""], [[k, str(v)] for k, v in env.items()]), ""]
    md += ["## Targets", "", table(["target", "measured", "verdict"],
                                   [[t["target"], t["measured"], t["verdict"]] for t in result.get("targets", [])]), ""]
    b = result.get("bench")
    md += ["## 1. Training-step throughput (synthetic LibriSpeech-like batches)", ""]
    if b:
        m = result["sizes"]["model"]
        md += [f"Model: {m['num_layers']} x {m['hidden']} {m['cell']}, subsampling x{m['subsampling']}, conv "
               f"{m['conv_channels']}, layer_norm {m['layer_norm']}, vocab {result['sizes']['vocab']}; parameters "
               f"{', '.join(f'{k} {v / 1e6:.2f} M' for k, v in b['parameters'].items())}. "
               f"{b['rounds_timed']} timed round(s) after {b['warmup_rounds']} warm-up, variants interleaved; "
               f"batches: {b['batches']['timed_batches']}. SpecAugment alone on the longest batch: "
               f"{b.get('spec_augment_ms_longest_batch')} ms (included in every step).", ""]
        rows = [[k, "yes" if v["exact"] else "no", b["rnn_output_dtype"].get(k, "-"), v["steps"], v["step_ms"], v["audio_s_per_s"], v["peak_mem_gb"],
                 v["step_peak_mem_gb"], v["nonfinite_losses"], (v["error"] or "")[:120]] for k, v in b["variants"].items()]
        md += [table(["variant", "exact", "LSTM dtype", "steps", "step ms", "audio-s/s", "peak GB (all models)",
                      "step peak GB (above state)", "non-finite", "error"], rows), ""]
    else:
        md += ["not run", ""]
    a = result.get("agreement")
    md += ["### Agreement (same weights; padded nn.LSTM shown for contrast, expected to differ; in bf16, flip's own distance from fp32 shows the rounding noise floor)", ""]
    if a:
        rows = []
        for p in PRECISIONS:
            if "error" in a[p]:
                rows.append([p, "-", "-", "-", "-", "-", "ERROR: " + a[p]["error"][:200]])
                continue
            for v in ("packed", "padded", "flip_fp32"):
                if v not in a[p]:
                    continue
                r = a[p][v]
                pair = "flip fp32 vs flip (bf16 rounding noise)" if v == "flip_fp32" else f"{v} vs flip"
                rows.append([p, pair, r["max_abs_diff_log_probs"], r["max_abs_diff_grads"], r["max_abs_grad"],
                             fmt(r.get("max_rel_diff_grads"), 3),
                             ("PASS" if r["pass"] else "FAIL") if "pass" in r else "(reference)"])
        md += [f"Batch of {a['utterances']} utterances, {a['durations_s'][0]}-{a['durations_s'][-1]} s; tolerance "
               f"{a['tolerance']:g}.", "", table(["precision", "pair", "max |diff| log-probs (valid frames)",
                                                  "max |diff| gradients", "max |gradient|", "max |diff| / max |gradient|",
                                                  "verdict"], rows), ""]
    else:
        md += ["not run", ""]
    md += ["## 2. Real training run through the CLI", ""]
    t = result.get("train")
    if t:
        t = dict(t)
        marks = t.pop("resumed_epoch_marks_s", None)
        if marks:
            t["resumed_epoch_marks_s"] = f"{len(marks)} epoch(s): first at {marks[0]} s, last at {marks[-1]} s"
        rows = [[k, fmt(t.get(k), 4 if k.endswith(("wer", "cer", "training")) else 1)] for k in
                ("first_run_s", "startup_s", "first_epoch_s", "resumed_epoch_marks_s", "epoch_s_resumed_median",
                 "steps_per_epoch", "resume_epochs_planned", "resume_run_s", "epochs_run", "skipped_steps_nonfinite",
                 "best_dev_wer_training", "dev_wer", "dev_cer", "evaluate_s", "resume_error")]
        md += [f"`asr train {t['config']} {' '.join(t['overrides'])}` on {result.get('prepare', {}).get('utterances')}"
               " utterances (train/dev). first_epoch_s: sanity validation + epoch 0 + its validation; startup_s: "
               "process start, manifests, feature cache (paid again by the --resume run). WER/CER as fractions.", "",
               table(["", ""], rows), ""]
    else:
        md += ["not run", ""]
    md += ["## 3. LibriSpeech-100 epoch (100.6 h) implied on this machine", ""]
    lo = result.get("loader")
    if lo:
        md += [f"DataLoader without feature cache on {lo['manifest']} ({lo['utterances']} utterances, mean "
               f"{lo['mean_duration_s']} s, speed perturbation {lo['speed_perturb']}): "
               + ", ".join(f"{w} worker(s) {fmt(v['audio_s_per_s'], 0)} audio-s/s" for w, v in lo["workers"].items()),
               ""]
    e = result.get("epoch_estimate")
    if e and e["variants"]:
        rows = [[k, v["train_epoch_min"], v["loader_epoch_min_best"], v["epoch_min"], v["bound_by"] or "-"]
                for k, v in e["variants"].items()]
        md += [table(["variant", "training-step bound (min)", "loader bound, best workers (min)", "epoch (min)",
                      "bound by"], rows), ""]
        md += ["Loader-only epoch: " + ", ".join(f"{w} worker(s) {fmt(m)} min" for w, m in e["loader_epoch_min"].items()),
               ""]
    if result.get("errors"):
        md += ["## Errors", ""]
        for sec, err in result["errors"].items():
            md += [f"### {sec}", "", "```", err.strip()[-3000:], "```", ""]
    md += [f"Total wall time {result.get('wall_s')} s (budget {result['budget_s']} s)."]
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------- main


def environment(device: torch.device) -> dict:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "device": str(device),
           "cpu_count": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        import torchaudio

        env["torchaudio"] = torchaudio.__version__
    except Exception as e:  # noqa: BLE001 - reported, not fatal here
        env["torchaudio"] = f"unavailable: {e}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    return env


def section(result: dict, name: str, fn: Callable[[], Any]) -> Any:
    """Run one section; record its result, or its error text, and go on."""
    log(f"== {name}")
    t0 = time.time()
    try:
        out = fn()
        result[name] = out
        log(f"== {name} done in {time.time() - t0:.1f} s")
        return out
    except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
        result.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        log(f"== {name} FAILED after {time.time() - t0:.1f} s: {type(e).__name__}: {str(e)[:500]}")
        return None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def write(result: dict, out: Path) -> None:
    result["wall_s"] = round(time.time() - T0, 1)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "gpu_check.md").write_text(markdown(result))


def default_data(corpus: str) -> Path:
    env = os.environ.get("ASR_DATA_DIR")
    candidates = [Path(env) / corpus] if env else []
    candidates += [REPO / ".." / "shared" / "data" / corpus, REPO / "shared" / "data" / corpus,
                   REPO / ".gpu_data" / corpus]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[0].resolve()


def run_check(args: argparse.Namespace) -> dict:
    out = Path(args.out).resolve()  # the CLI runs in the repo root: absolute paths only
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    s = dry_sizes() if dry else full_sizes()
    if args.train_seconds is not None:
        s = replace(s, train_seconds=args.train_seconds)
    s = replace(s, extra={"train_overrides": args.train_override or []})
    if s.threads:
        torch.set_num_threads(s.threads)
    device = torch.device(args.device or ("cpu" if dry else "cuda"))
    skip = set(filter(None, (args.skip or "").split(",")))
    budget = args.budget
    deadline = T0 + budget
    result: dict[str, Any] = {"dry_run": dry, "budget_s": budget, "work_dir": str(work), "out_dir": str(out),
                              "sizes": {"model": s.model.__dict__ | {"spec_augment": str(s.model.spec_augment)},
                                        "vocab": s.vocab, "n_mels": s.n_mels, "dur_range": s.dur_range,
                                        "max_batch_seconds": s.max_batch_seconds,
                                        "max_batch_size": s.max_batch_size}}
    log(f"{'DRY RUN ' if dry else ''}out={out} work={work} budget={budget:.0f} s")
    if device.type == "cuda" and not torch.cuda.is_available():
        result["errors"] = {"environment": "torch.cuda.is_available() is False: no GPU visible to this torch "
                                           f"({torch.__version__}); use --dry-run for a CPU check"}
        result["environment"] = environment(torch.device("cpu"))
        result["targets"] = targets(result, dry)
        write(result, out)
        log("no GPU: wrote the report with the error and stopped")
        return result
    result["environment"] = section(result, "environment", lambda: environment(device)) or {}
    write(result, out)

    # Budget split: the throughput table is what the check is for; training gets the rest.
    bench_s = 5.0 if dry else 0.3 * budget
    if "bench" not in skip:
        section(result, "bench", lambda: bench_throughput(s, device, bench_s))
        write(result, out)
    if "agreement" not in skip:
        section(result, "agreement", lambda: agreement(s, device))
        write(result, out)

    cli = Cli(out / "cli.log")
    workers_n = min(16, os.cpu_count() or 1)
    given = args.yesno_data if dry else args.data
    data = Path(given).resolve() if given else default_data("yesno" if dry else "speechocean762")
    prep = section(result, "prepare",
                   lambda: prepare(cli, dry, data, work, min(8, workers_n) if not dry else 1, deadline))
    write(result, out)
    if prep:
        slice_s = min(s.loader_slice_s, max(1.0, (deadline - time.time()) * 0.05))
        counts = sorted({1, workers_n if not dry else 2})
        if "loader" not in skip:
            section(result, "loader", lambda: loader_rate(work / "data" / "train.jsonl", counts, slice_s, (0.9, 1.0, 1.1)))
        write(result, out)
        train_deadline = min(deadline - 5.0, time.time() + s.train_seconds)
        if "train" not in skip:
            section(result, "train", lambda: cli_train(cli, dry, work, s, device, train_deadline))
    else:
        result.setdefault("errors", {})["loader"] = "skipped: prepare failed"
        result["errors"]["train"] = "skipped: prepare failed"
    result["epoch_estimate"] = epoch_estimates(result)
    result["targets"] = targets(result, dry)
    write(result, out)
    for t in result["targets"]:
        log(f"target: {t['verdict']:14} {t['target']} -- {t['measured']}")
    log(f"wrote {out / 'gpu_check.md'} and {out / 'gpu_check.json'} in {time.time() - T0:.0f} s")
    return result


def pack_speechocean(src: Path, dest: Path, max_mb: float) -> None:
    """Copy whole speakers of a speechocean762 train dir (Kaldi layout) until ``max_mb``, so
    that a subset small enough to travel to a remote machine prepares like the full corpus."""
    tables = {}
    for name in ("wav.scp", "text", "utt2spk"):
        tables[name] = dict(line.rstrip("\n").split(maxsplit=1) for line in open(src / "train" / name) if line.strip())
    by_spk: dict[str, list[str]] = {}
    for uid, spk in sorted(tables["utt2spk"].items()):
        by_spk.setdefault(spk, []).append(uid)
    keep, size = [], 0
    for spk in sorted(by_spk):
        spk_size = sum((src / tables["wav.scp"][u]).stat().st_size for u in by_spk[spk] if u in tables["wav.scp"])
        if size + spk_size > max_mb * 2**20:
            break
        keep += [u for u in by_spk[spk] if u in tables["wav.scp"]]
        size += spk_size
    (dest / "train").mkdir(parents=True, exist_ok=True)
    for name, tab in tables.items():
        with open(dest / "train" / name, "w") as f:
            f.writelines(f"{u} {tab[u]}\n" for u in keep if u in tab)
    for u in keep:
        target = dest / tables["wav.scp"][u]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / tables["wav.scp"][u], target)
    (dest / "README.md").write_text(f"Subset of {src} ({len(keep)} utterances, whole speakers, "
                                    f"{size / 2**20:.1f} MB) made by benchmarks/gpu_check.py --pack-speechocean "
                                    "for a one-off remote GPU check. Not to be committed.\n")
    print(f"{dest}: {len(keep)} utterances of {len(set(tables['utt2spk'][u] for u in keep))} speakers, "
          f"{size / 2**20:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("out", nargs="?", help="folder for gpu_check.md, gpu_check.json and cli.log")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes on CPU, yesno corpus: every code path in seconds")
    ap.add_argument("--data", help="speechocean762 folder (default: $ASR_DATA_DIR/speechocean762, "
                                   "../shared/data/speechocean762, shared/data/... or .gpu_data/... in the repo)")
    ap.add_argument("--yesno-data", help="yesno folder for --dry-run (default found like --data)")
    ap.add_argument("--work", help="folder for manifests, experiment, model and evaluation "
                                   "(default: a new temporary folder; keep it out of OUT on a remote run)")
    ap.add_argument("--budget", type=float, default=480.0, help="global wall-clock budget in seconds")
    ap.add_argument("--train-seconds", type=float, default=None,
                    help="wall-clock for the CLI training (default 240; dry run 60)")
    ap.add_argument("--train-override", action="append", metavar="KEY=VALUE",
                    help="extra `asr train` override (repeatable), after the script's own")
    ap.add_argument("--skip", help="comma-separated sections to leave out: bench,agreement,loader,train")
    ap.add_argument("--device", help="torch device (default cuda; cpu with --dry-run); cpu without --dry-run "
                                     "checks the full-size CLI path of this script without a GPU")
    ap.add_argument("--pack-speechocean", nargs=2, metavar=("SRC", "DEST"),
                    help="copy whole speakers of SRC into DEST up to --max-mb, then exit")
    ap.add_argument("--max-mb", type=float, default=45.0)
    args = ap.parse_args(argv)
    if args.pack_speechocean:
        pack_speechocean(Path(args.pack_speechocean[0]), Path(args.pack_speechocean[1]), args.max_mb)
        return 0
    if not args.out:
        ap.error("OUT is required")
    result = run_check(args)
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
