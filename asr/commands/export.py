"""``asr export CKPT... --out MODEL [--average [N] | --average-last N] [--int8] [--torchscript] [--onnx]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = "asr export CKPT_OR_EXP_DIR... --out MODEL [--average [N] | --average-last N] [--int8] [--torchscript] [--onnx]"
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="Lightning checkpoints, or experiment directories (their best checkpoint by dev WER)")
    parser.add_argument("--out", required=True, type=Path, help="model package file to write, e.g. model.asr")
    parser.add_argument("--average", nargs="?", type=int, const=0, default=None, metavar="N",
                        help="average the weights of the checkpoints (of an experiment directory: all its "
                             "ranked checkpoints, or with N its N best by dev WER)")
    parser.add_argument("--average-last", type=int, default=None, metavar="N",
                        help="average the checkpoints of an experiment directory's N latest epochs, whatever "
                             "their dev WER (SWA's weight averaging; train with trainer.keep_last=N)")
    parser.add_argument("--int8", action="store_true",
                        help="mark the package to quantise LSTM/GRU/Linear to int8 when it is loaded (CPU "
                             "inference); the file still holds fp32 weights, so it is as large as without")
    parser.add_argument("--torchscript", action="store_true", help="also write MODEL.ts (TorchScript)")
    parser.add_argument("--onnx", action="store_true", help="also write MODEL.onnx")


def run(args: argparse.Namespace) -> int:
    """Checkpoint/package errors propagate to ``asr.cli.main`` (one ``error:`` line, exit 2)."""
    from asr.package import load_package
    from asr.train.checkpoint import CheckpointError
    from asr.train.export import export

    if args.average is not None and args.average < 0:
        raise CheckpointError("--average N needs N >= 1")
    if args.average_last is not None and args.average_last < 1:
        raise CheckpointError("--average-last N needs N >= 1")
    average: bool | int = False if args.average is None else (True if args.average == 0 else args.average)
    try:
        out = export(args.checkpoints, args.out, average=average, average_last=args.average_last or 0, int8=args.int8,
                     torchscript=args.torchscript, onnx=args.onnx,
                     note=lambda m: print(f"note: {m}", file=sys.stderr))
    except OSError as e:  # an unwritable --out
        print(f"error: {args.out}: cannot write the package ({e.strerror or e})", file=sys.stderr)
        return 2
    pkg = load_package(out)
    info = pkg.info
    srcs = info["source_checkpoints"]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {info['parameters'] / 1e6:.2f} M parameters, "
          f"vocabulary {info['vocab_size']}, quantize={info['quantize']}, sha256 {info['sha256'][:12]})")
    print(f"model: {info['kind']}")
    print(f"from {len(srcs)} checkpoint(s){' (averaged)' if len(srcs) > 1 else ''}: "
          + ", ".join(Path(s["path"]).name for s in srcs))
    if pkg.phone_head is not None:
        ph = info["phone_head"]
        print(f"with the phone CTC head ({ph['phones']} phones on layer {ph['layer']}, pronunciations of "
              f"{ph['words']} training words): decode with --decoder beam --phone-weight W")
    for flag, suffix in ((args.torchscript, ".ts"), (args.onnx, ".onnx")):
        if flag:
            print(f"wrote {out.with_suffix(suffix)} (fp32; inputs: log-mel feats (N, T, "
                  f"{pkg.config.features.n_mels}) and lengths)")
    return 0
