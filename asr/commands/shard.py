"""`asr shard MANIFEST --out DIR`: pack a manifest into WebDataset tar shards + index.json
(the format, and how training streams it: :mod:`asr.data.shards`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from asr.data.manifest import ManifestError, read_manifest
from asr.data.shard_writer import parse_size, write_shards
from asr.data.shards import INDEX_NAME

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="JSONL manifest to pack (e.g. data/librispeech/train.jsonl)")
    parser.add_argument("--out", required=True, help="folder for the shards and index.json")
    parser.add_argument("--shard-size", default="1G", help="bytes per shard: 1G (default), 500M, 1e8, ...")
    parser.add_argument("--prefix", default="shard", help="shard file names: PREFIX-000000.tar, ... (default shard)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards already in --out")


def run(args: argparse.Namespace) -> int:
    try:
        size = parse_size(args.shard_size)
    except ValueError as e:
        print(f"error: --shard-size: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if (out / INDEX_NAME).exists() or any(out.glob(f"{args.prefix}-*.tar")):
        if not args.overwrite:
            print(f"error: {out}: already holds shards; pass --overwrite to replace them", file=sys.stderr)
            return 2
        for p in out.glob(f"{args.prefix}-*.tar"):
            p.unlink()
        (out / INDEX_NAME).unlink(missing_ok=True)
    try:
        utts = read_manifest(args.manifest)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError):
        print(f"error: {args.manifest}: manifest not found", file=sys.stderr)
        return 2
    if not utts:
        print(f"error: {args.manifest}: manifest has no utterances", file=sys.stderr)
        return 2
    start = time.time()
    result = write_shards(utts, out, size, args.prefix, source=str(args.manifest),
                          on_skip=lambda i, r: log.warning("skipped %s: %s", i, r))
    secs = time.time() - start
    hours = sum(s["seconds"] for s in result.shards) / 3600
    print(f"wrote {len(result.shards)} shard(s), {result.utterances} utterances ({hours:.2f} h, "
          f"{result.bytes / 1e6:.1f} MB) in {out} ({secs:.1f} s, {result.bytes / 1e6 / max(secs, 1e-9):.1f} MB/s); "
          f"index {out / INDEX_NAME}; skipped {len(result.skipped)}")
    return 1 if result.skipped else 0
