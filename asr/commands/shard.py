"""`asr shard MANIFEST --out DIR`: pack a manifest into WebDataset tar shards + index.json
(the format, and how training streams it: :mod:`asr.data.shards`)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from asr.data.manifest import ManifestError, read_manifest
from asr.data.shard_writer import parse_size, write_shards
from asr.data.shards import INDEX_NAME
from asr.files import TMP_SUFFIX, remove_stale_temp_files

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
    prefix = str(args.prefix)
    if not prefix or "/" in prefix or os.sep in prefix or "\0" in prefix or prefix.startswith("."):
        print(f"error: --prefix {prefix!r}: must be a file name prefix (no '/', not starting with '.'), "
              "e.g. train", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"error: {out}: exists and is not a directory", file=sys.stderr)
        return 2
    if out.is_dir() and ((out / INDEX_NAME).exists() or any(out.glob(f"{prefix}-*.tar"))) and not args.overwrite:
        print(f"error: {out}: already holds shards; pass --overwrite to replace them", file=sys.stderr)
        return 2
    # The manifest is read before anything in --out is touched: a truncated or mistyped one
    # must leave the shards already there as they were.
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
    # The new set is built beside the old one and swapped in only once it is complete.
    staging = out / f".{prefix}-new.{os.getpid()}{TMP_SUFFIX}"
    written = False
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)  # shards and staging folders of killed runs
        result = write_shards(utts, staging, size, prefix, source=str(args.manifest),
                              on_skip=lambda i, r: log.warning("skipped %s: %s", i, r))
        written = True
        swap_in(staging, out, prefix)
    except OSError as e:  # no space left, read-only, --out under a file
        kept = "" if written else "; the shards already there are unchanged"
        print(f"error: {out}: cannot write the shards ({e.strerror or e}){kept}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    secs = time.time() - start
    hours = sum(s["seconds"] for s in result.shards) / 3600
    print(f"wrote {len(result.shards)} shard(s), {result.utterances} utterances ({hours:.2f} h, "
          f"{result.bytes / 1e6:.1f} MB) in {out} ({secs:.1f} s, {result.bytes / 1e6 / max(secs, 1e-9):.1f} MB/s); "
          f"index {out / INDEX_NAME}; skipped {len(result.skipped)}")
    return 1 if result.skipped else 0


def swap_in(staging: Path, out: Path, prefix: str) -> None:
    """Replace ``out``'s ``PREFIX-*.tar`` and index with the complete set in ``staging``.

    Renames within one filesystem, the index last: the old index goes first, so at no moment
    does an index list shards of the other set (a kill in between leaves a set without an
    index, which training refuses, never a silent mix).
    """
    (out / INDEX_NAME).unlink(missing_ok=True)
    new = sorted(p.name for p in staging.glob(f"{prefix}-*.tar"))
    for p in out.glob(f"{prefix}-*.tar"):
        if p.name not in new:
            p.unlink()
    for name in new:
        os.replace(staging / name, out / name)
    os.replace(staging / INDEX_NAME, out / INDEX_NAME)
