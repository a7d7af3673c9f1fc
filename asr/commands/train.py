"""``asr train CONFIG [key=value ...] [--resume | --overwrite] [--print-config]``.

Nothing heavy is imported before :func:`run`: ``asr train --help`` must not wait for torch
and Lightning.
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config, e.g. conf/yesno.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_epochs=5 model.cell=gru")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from EXP_DIR/checkpoints/last.ckpt (or the newest readable checkpoint)")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete the checkpoints, logs and summaries of an earlier run in EXP_DIR first")
    parser.add_argument("--init-from", metavar="MODEL.asr",
                        help="start from this package's weights and vocabulary (e.g. turn a full-context model "
                             "into a streaming one: model.chunk_frames=N); ignored when --resume finds a checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    """Config and resume errors propagate to ``asr.cli.main`` (one ``error:`` line, exit 2);
    a diverged run is exit 1."""
    import yaml

    from asr.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    from asr.train.module import DivergedError
    from asr.train.training import train

    try:
        train(cfg, resume=args.resume, overwrite=args.overwrite, init_from=args.init_from)
    except DivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
