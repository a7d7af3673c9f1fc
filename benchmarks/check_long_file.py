#!/usr/bin/env python
"""Transcribe one long recording made by concatenating corpus utterances; report peak memory
and whether each source utterance's words come out, in order.

    python benchmarks/check_long_file.py MODEL MANIFEST [--minutes 60] [--threads 2] [--work DIR]

The recording is written with soundfile in blocks (never held whole in memory), then
`asr transcribe` runs in a child process so its peak RSS can be read from the OS. The
transcript is scored against the concatenated references with jiwer (corpus WER over one
long "utterance": a dropped or duplicated stretch at a chunk seam shows up as deletions or
insertions).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import jiwer
import numpy as np
import soundfile as sf

from asr.audio import load_audio
from asr.data.manifest import read_manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("manifest")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/asr-long")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    utts = read_manifest(args.manifest)
    wav = work / "long.wav"
    refs = []
    total = 0.0
    gap = np.zeros(8000, dtype=np.float32)  # 0.5 s of silence between utterances
    with sf.SoundFile(wav, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        i = 0
        while total < args.minutes * 60:
            u = utts[i % len(utts)]
            f.write(load_audio(u.audio).numpy())
            f.write(gap)
            refs.append(u.text)
            total += u.duration + 0.5
            i += 1
    print(f"wrote {wav}: {total / 60:.1f} min from {len(refs)} utterances")
    start = time.time()
    cmd = [sys.executable, "-m", "asr", "transcribe", args.model, str(wav), "--format", "json",
           "--out", str(work / "out"), "--threads", str(args.threads), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        return 1
    hyp = json.loads((work / "out" / "long.json").read_text())["text"]
    out = jiwer.process_words(" ".join(refs), hyp)
    print("| audio | wall | RTF | peak RSS | WER over the whole file | S/D/I |")
    print("|---|---|---|---|---|---|")
    print(f"| {total / 60:.1f} min | {wall:.0f} s | {wall / total:.4f} | {peak_mib:.0f} MiB | "
          f"{100 * out.wer:.2f}% | {out.substitutions}/{out.deletions}/{out.insertions} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
