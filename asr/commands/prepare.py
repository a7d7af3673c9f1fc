"""`asr prepare`: turn a corpus into validated JSONL manifests.

```
asr prepare yesno|fsdd|an4|speechocean762|librispeech|folder [--src DIR] --out DIR
```

writes ``OUT/{train,dev,test}.jsonl`` (test only when the corpus has a test split),
``OUT/rejected.jsonl`` (every excluded item with the reason) and ``OUT/summary.json``, and
prints a summary table per manifest. What is checked: :mod:`asr.data.prepare.validate`.

Dev sets are carved from train by speaker (deterministic for a given ``--seed``) unless
the corpus has its own; a single-speaker corpus falls back to carving utterances.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from asr.data.corpora import CORPORA, CorpusOptions, get_corpus
from asr.data.download import DownloadError
from asr.data.prepare import PrepareError, PrepareOptions, PrepareResult, prepare_corpus
from asr.data.prepare.options import VOCABS
from asr.data.prepare.validate import Rejected

log = logging.getLogger(__name__)


def default_src(corpus: str) -> Path | None:
    """``$ASR_DATA_DIR/<corpus>``, else ``../shared/data/<corpus>`` (from the working
    directory, then from the repository root), whichever exists first."""
    candidates = []
    if os.environ.get("ASR_DATA_DIR"):
        candidates.append(Path(os.environ["ASR_DATA_DIR"]) / corpus)
    candidates.append(Path("../shared/data") / corpus)
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data" / corpus)
    return next((c for c in candidates if c.is_dir()), None)


def _progress(items: Iterable[Any], total: int) -> Iterator[Any]:
    """A progress bar on stderr (stdout holds only the results) while the audio is decoded."""
    bar = Progress(TextColumn("[bold]validating audio"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                   disable=not log.isEnabledFor(logging.INFO))
    with bar:
        yield from bar.track(items, total=total)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_summary(result: PrepareResult, written: list[str], console: Console) -> None:
    """Rich tables: one row per written manifest, then the rejections grouped by category."""
    table = Table(title="manifests", box=box.SIMPLE_HEAD)
    for col in ("manifest", "utts", "hours", "speakers", "min s", "median s", "max s", "rejected"):
        table.add_column(col, justify="left" if col == "manifest" else "right", no_wrap=True)
    rejected_by_split = Counter(r.split for r in result.rejected)
    for split in written:
        s = result.summary["splits"][split]
        table.add_row(
            f"{split}.jsonl",
            str(s["utterances"]),
            f"{s['hours']:.3f}",
            str(s["speakers"]),
            _fmt(s["duration_min"]),
            _fmt(s["duration_median"]),
            _fmt(s["duration_max"]),
            str(rejected_by_split.get(split, 0)),
        )
    console.print(table)
    console.print(result.dev_note)
    if result.rejected:
        rej = Table(
            title=f"rejected: {len(result.rejected)} (see rejected.jsonl)", box=box.SIMPLE_HEAD
        )
        rej.add_column("reason")
        rej.add_column("count", justify="right")
        rej.add_column("example")
        examples: dict[str, Rejected] = {}
        for r in result.rejected:
            examples.setdefault(r.category, r)
        for category, count in Counter(r.category for r in result.rejected).most_common():
            ex = examples[category]
            rej.add_row(category, str(count), f"{ex.id}: {ex.reason}")
        console.print(rej)
    else:
        console.print("rejected: 0")


def _non_negative_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {s})")
    return v


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {s})")
    return v


def _fraction(s: str) -> float:
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (got {s})")
    return v


def _non_negative_float(s: str) -> float:
    v = float(s)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {s})")
    return v


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "corpora:\n" + "\n".join(
        f"  {name:15s} {get_corpus(name).DESCRIPTION}" for name in CORPORA
    )
    parser.add_argument("corpus", choices=CORPORA)
    parser.add_argument(
        "--src",
        type=Path,
        default=None,
        help="corpus folder (default: $ASR_DATA_DIR/<corpus> or ../shared/data/<corpus> if present)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the manifests")
    dev = parser.add_mutually_exclusive_group()
    dev.add_argument(
        "--dev-speakers",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="move N train speakers to dev (default: per corpus)",
    )
    dev.add_argument(
        "--dev-fraction",
        type=_fraction,
        default=None,
        metavar="F",
        help="move this fraction of train speakers (utterances if one speaker) to dev",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the dev choice (default 0)")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download the corpus into --src first if it is not there",
    )
    parser.add_argument(
        "--min-duration",
        type=_non_negative_float,
        default=0.1,
        metavar="S",
        help="reject shorter items (seconds, default 0.1)",
    )
    parser.add_argument(
        "--vocab",
        choices=VOCABS,
        default="english",
        help="allowed transcript characters: english = a-z ' 0-9 (default), "
        "or every character of the train transcripts",
    )
    parser.add_argument(
        "--list",
        type=Path,
        default=None,
        dest="list_file",
        metavar="FILE",
        help="folder: CSV/TSV with a header naming path,text[,speaker] columns",
    )
    parser.add_argument(
        "--subsets",
        default="",
        metavar="A,B",
        help="librispeech: comma-separated subsets (default: all present)",
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=2, help="processes decoding audio (default 2)"
    )
    parser.add_argument(
        "--allow-rejected",
        action="store_true",
        help="exit 0 even when items were rejected (they are still reported)",
    )




def run(args: argparse.Namespace) -> int:
    console = Console(soft_wrap=True)  # results on stdout; never break a path across lines
    corpus_options = CorpusOptions(
        list_file=args.list_file,
        subsets=tuple(s.strip() for s in args.subsets.split(",") if s.strip()),
    )
    if args.list_file is not None and args.corpus != "folder":
        print("error: --list only applies to the folder corpus", file=sys.stderr)
        return 2
    module = get_corpus(args.corpus)
    src = args.src
    if src is None and args.list_file is not None:
        src = args.list_file.parent
    if src is None:
        src = default_src(args.corpus)
    if src is None:
        print(f"error: no --src given and no ../shared/data/{args.corpus} found; pass --src DIR"
              + (" (where to download it)" if args.download else ""), file=sys.stderr)
        return 2
    try:
        options = PrepareOptions(
            dev_speakers=args.dev_speakers,
            dev_fraction=args.dev_fraction,
            seed=args.seed,
            min_duration=args.min_duration,
            vocab=args.vocab,
            workers=args.workers,
        )
        if args.download:
            if not hasattr(module, "download"):
                print(f"error: {args.corpus} has no --download; fetch it yourself and pass --src DIR "
                      "(see `asr prepare --help`)", file=sys.stderr)
                return 1
            if module.is_present(src, corpus_options):
                log.info("%s already in %s; not downloading", args.corpus, src)
            else:
                module.download(src, corpus_options)
        # A CorpusError (layout, list file) is unusable input: cli.main prints it, exit 2.
        result = prepare_corpus(args.corpus, src, args.out, options, corpus_options, _progress)
    except DownloadError as e:
        print(f"error: could not download {e.url}: {e.reason}; check the network, or download it "
              "yourself, unpack it and pass --src DIR", file=sys.stderr)
        return 1
    except PrepareError as e:  # e.g. every item rejected: a batch whose items all failed
        print(f"error: {e}", file=sys.stderr)
        return 1
    present = list(result.summary["splits"])
    print_summary(result, present, console)
    written = [f"{s}.jsonl" for s in present]
    console.print(f"wrote {', '.join([*written, 'rejected.jsonl', 'summary.json'])} in {args.out}")
    if result.rejected and not args.allow_rejected:
        log.warning("%d item(s) rejected (listed in %s); exit status 1 (pass --allow-rejected if that is "
                    "expected)", len(result.rejected), args.out / "rejected.jsonl")
        return 1
    return 0
