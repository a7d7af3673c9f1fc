"""Write the FSDD file list with a seen-speaker dev split, for ``asr prepare folder --list``.

    python recipes/fsdd/make_list.py SRC OUT.csv [--dev-indices 5-9]

The publisher's split is by recording index: 0-4 test, 5-49 train, and every one of the six
speakers is in both. ``asr prepare fsdd`` carves dev as one held-out *speaker*, which then
never appears in training although its test recordings are a sixth of the test split (that
speaker alone scores ~80% WER, see recipes/fsdd/README.md). This list keeps the test
condition (seen speakers) for model selection instead: indices 5-9 of every speaker and
digit (300 files) form dev, 10-49 train, 0-4 stay test. The files are listed by the FSDD
reader itself (:func:`asr.data.corpora.fsdd.find_items`), so ids, texts and speakers are
exactly those of ``asr prepare fsdd``; validation then runs in ``asr prepare folder``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from asr.data.corpora import CorpusError, CorpusOptions, fsdd


def parse_range(text: str) -> range:
    """``"5-9"`` -> range(5, 10); a single number is a range of one."""
    lo, _, hi = text.partition("-")
    try:
        start, stop = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N-M, got {text!r}") from None
    if start < 0 or stop < start:
        raise argparse.ArgumentTypeError(f"bad index range {text!r}")
    return range(start, stop + 1)


def recording_index(item_id: str) -> int | None:
    """``"3_theo_12"`` -> 12; None for names that do not follow the FSDD pattern."""
    tail = item_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def write_list(src: Path, out: Path, dev_indices: range) -> dict[str, int]:
    """List FSDD under ``src`` into ``out`` (CSV: id,path,text,speaker,split); returns counts."""
    items = fsdd.find_items(src, CorpusOptions())
    counts = {"train": 0, "dev": 0, "test": 0}
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "text", "speaker", "split"])
        for it in items:
            split = it.split
            if split == "train" and recording_index(it.id) in dev_indices:
                split = "dev"
            # Items the reader flagged (bad names) keep an empty text, so the preparer
            # rejects and reports them instead of this script dropping them silently.
            text = "" if it.problem else it.text
            writer.writerow([it.id, str(Path(it.audio).resolve()), text, it.speaker, split])
            counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="FSDD folder (holds recordings/)")
    parser.add_argument("out", type=Path, help="CSV list to write")
    parser.add_argument("--dev-indices", type=parse_range, default=range(5, 10),
                        help="train recording indices moved to dev (default 5-9)")
    args = parser.parse_args(argv)
    try:
        counts = write_list(args.src, args.out, args.dev_indices)
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
