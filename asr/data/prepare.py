"""`asr prepare`: turn a corpus into validated JSONL manifests.

```
asr prepare yesno|fsdd|speechocean762|librispeech|folder [--src DIR] --out DIR
```

writes ``OUT/{train,dev,test}.jsonl`` (test only when the corpus has a test split),
``OUT/rejected.jsonl`` (every excluded item with the reason) and ``OUT/summary.json``, and
prints a summary table per manifest.

Every item is validated the same way whatever the corpus: the audio header is readable
and the whole file decodes without truncation or NaN/inf samples; the duration is at
least ``--min-duration``; the transcript is non-empty after :func:`asr.text.normalize_text`
and uses only vocabulary characters; and the utterance is CTC-feasible, i.e. it has at
least as many feature frames (100 per second) as its character sequence needs
(characters + word separators + one blank between each pair of repeated characters).
Model subsampling divides the frames further; the training code checks that bound.

Dev sets are carved from train by speaker (deterministic for a given ``--seed``) unless
the corpus has its own; a single-speaker corpus falls back to carving utterances.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import random
import statistics
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
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

from asr.audio import AudioError, audio_info, load_audio
from asr.data.corpora import (
    CORPORA,
    SPLITS,
    CorpusError,
    CorpusOptions,
    DevSplit,
    RawItem,
    get_corpus,
)
from asr.data.dataset import ctc_min_frames  # one definition: text or token ids alike
from asr.data.download import DownloadError
from asr.data.manifest import Utterance, write_manifest
from asr.text import normalize_text

# Default vocabulary: what English transcripts need after normalize_text.
ENGLISH_VOCAB = frozenset("abcdefghijklmnopqrstuvwxyz'0123456789")
VOCABS = ("english", "chars-from-train")

# Feature frames per second (10 ms shift, asr.features.FRAME_SHIFT). Spelled out here because
# data/* sits below features in the import order.
FRAMES_PER_SECOND = 100

# Below this many files the process pool costs more (worker start-up) than it saves.
_POOL_MIN_ITEMS = 64

# Rejection categories, in the order the checks run (first failing check wins).
CORPUS, DUPLICATE, EMPTY_TEXT, OOV, AUDIO, TOO_SHORT, CTC = (
    "corpus listing",
    "duplicate id",
    "empty text",
    "characters outside the vocabulary",
    "unreadable audio",
    "too short",
    "CTC-infeasible",
)


class PrepareError(ValueError):
    """The corpus as a whole cannot be prepared (bad options, empty train split, ...)."""


@dataclass(frozen=True)
class PrepareOptions:
    """How items are split and validated."""

    dev_speakers: int | None = None  # train speakers moved to dev (None: corpus default)
    dev_fraction: float | None = None  # fraction of train speakers moved (not with dev_speakers)
    seed: int = 0  # seeds the dev-speaker choice; same seed -> same split
    min_duration: float = 0.1  # seconds; shorter items are rejected
    vocab: str = "english"  # "english" (a-z ' 0-9) or "chars-from-train"
    workers: int = 2  # processes that decode audio

    def __post_init__(self) -> None:
        if self.dev_speakers is not None and self.dev_fraction is not None:
            raise PrepareError("give dev_speakers or dev_fraction, not both")
        if self.dev_speakers is not None and self.dev_speakers < 0:
            raise PrepareError(f"dev_speakers must be >= 0 (is {self.dev_speakers})")
        if self.dev_fraction is not None and not 0 <= self.dev_fraction < 1:
            raise PrepareError(f"dev_fraction must be in [0, 1) (is {self.dev_fraction})")
        if self.min_duration < 0:
            raise PrepareError(f"min_duration must be >= 0 (is {self.min_duration})")
        if self.vocab not in VOCABS:
            raise PrepareError(f"vocab must be one of {VOCABS} (is {self.vocab!r})")
        if self.workers < 1:
            raise PrepareError(f"workers must be >= 1 (is {self.workers})")


@dataclass(frozen=True)
class Rejected:
    """An item left out of the manifests, and why."""

    id: str
    audio: str
    split: str
    reason: str  # specific: names the value/characters/file problem
    category: str  # one of the rejection categories above, for grouping

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class PrepareResult:
    """What :func:`validate_items` kept and rejected."""

    splits: dict[str, list[Utterance]]  # split -> utterances sorted by id
    rejected: list[Rejected]
    vocabulary: str  # sorted characters allowed in transcripts (besides the space)
    dev_note: str = ""  # how dev was made
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- splitting


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def carve_dev(
    items: list[RawItem],
    default: DevSplit,
    dev_speakers: int | None = None,
    dev_fraction: float | None = None,
    seed: int = 0,
) -> tuple[list[RawItem], str]:
    """Move part of train to dev: whole speakers, or utterances when train has one speaker.

    Speakers (sorted, then sampled with ``random.Random(seed)``) make the choice
    deterministic and independent of file-system order. Returns (items, a note saying what
    was done).
    """
    has_dev = any(it.split == "dev" for it in items)
    if has_dev:
        if dev_speakers is not None or dev_fraction is not None:
            raise PrepareError(
                "the corpus has its own dev split; --dev-speakers/--dev-fraction do not apply"
            )
        return items, "dev: the corpus' own dev split"
    train = [it for it in items if it.split == "train"]
    speakers = sorted({it.speaker for it in train})
    if not train:
        return items, "dev: none (no train items)"
    rng = random.Random(seed)
    # Defaults that cannot apply to a tiny corpus give no dev; explicit requests are errors.
    explicit = dev_speakers is not None or dev_fraction is not None
    if len(speakers) >= 2:
        if dev_speakers is not None:
            n = dev_speakers
        elif dev_fraction is None and default.speakers is not None:
            n = default.speakers
        else:
            fraction = dev_fraction if dev_fraction is not None else (default.fraction or 0.0)
            n = 0 if fraction == 0 else max(1, _round_half_up(len(speakers) * fraction))
        if n == 0:
            return items, "dev: none (disabled)"
        if n >= len(speakers):
            if not explicit:
                return items, f"dev: none (only {len(speakers)} train speakers)"
            raise PrepareError(f"cannot move {n} of {len(speakers)} train speakers to dev")
        chosen = set(rng.sample(speakers, n))
        moved = [
            replace(it, split="dev") if it.split == "train" and it.speaker in chosen else it
            for it in items
        ]
        return (
            moved,
            f"dev: {n} of {len(speakers)} train speakers (seed {seed}): {', '.join(sorted(chosen))}",
        )
    if dev_speakers is not None:
        raise PrepareError(
            f"train has a single speaker ({speakers[0]!r}): a speaker-disjoint dev set is "
            "impossible; use --dev-fraction to carve utterances instead"
        )
    fraction = dev_fraction if dev_fraction is not None else (default.fraction or 0.0)
    n = 0 if fraction == 0 else max(1, _round_half_up(len(train) * fraction))
    if n == 0:
        return items, "dev: none (disabled)"
    if n >= len(train):
        if not explicit:
            return items, f"dev: none (only {len(train)} train utterances)"
        raise PrepareError(f"cannot move {n} of {len(train)} train utterances to dev")
    chosen_ids = set(rng.sample(sorted(it.id for it in train), n))
    moved = [
        replace(it, split="dev") if it.split == "train" and it.id in chosen_ids else it
        for it in items
    ]
    return moved, (
        f"dev: {n} of {len(train)} train utterances (seed {seed}); single speaker, so dev is "
        "NOT speaker-disjoint"
    )


# ---------------------------------------------------------------------------- validation


def _init_worker() -> None:
    # Each worker decodes one file at a time; intra-op threads would only oversubscribe.
    torch.set_num_threads(1)


def _probe_audio(job: tuple[str, float, float | None]) -> tuple[int, float, str | None]:
    """Decode one file fully: (sample_rate, duration s, None) or (0, 0.0, reason)."""
    path, offset, duration = job
    try:
        info = audio_info(path)
        # Native rate: resampling would cost time and cannot reveal a defect.
        wave = load_audio(path, sample_rate=info.sample_rate, offset=offset, duration=duration)
        return info.sample_rate, wave.shape[0] / info.sample_rate, None
    except AudioError as e:
        return 0, 0.0, e.reason
    except Exception as e:  # one odd file must not stop the batch: report it as a rejection
        return 0, 0.0, f"unexpected {type(e).__name__}: {e}"


def _probe_all(
    jobs: list[tuple[str, float, float | None]], workers: int, console: Console | None
) -> list[tuple[int, float, str | None]]:
    """Run :func:`_probe_audio` over ``jobs`` (in order) with a progress bar."""
    progress = Progress(
        TextColumn("[bold]validating audio"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=console is None,
    )
    if workers <= 1 or len(jobs) < _POOL_MIN_ITEMS:
        results = []
        with progress:
            task = progress.add_task("audio", total=len(jobs))
            for job in jobs:
                results.append(_probe_audio(job))
                progress.advance(task)
        return results
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, initializer=_init_worker
    ) as pool:
        # map() submits everything now, so workers are forked before the progress thread starts.
        chunksize = max(1, min(32, len(jobs) // (workers * 8)))
        it = pool.map(_probe_audio, jobs, chunksize=chunksize)
        results = []
        with progress:
            task = progress.add_task("audio", total=len(jobs))
            for r in it:
                results.append(r)
                progress.advance(task)
    return results


def _reject(item: RawItem, category: str, reason: str) -> Rejected:
    return Rejected(item.id, str(item.audio), item.split, reason, category)


def validate_items(
    items: list[RawItem], options: PrepareOptions, console: Console | None = None
) -> PrepareResult:
    """Check every item; return the accepted utterances per split and the rejected ones.

    Cheap text checks run first so that only items with usable transcripts are decoded.
    """
    rejected: list[Rejected] = []
    texts = [normalize_text(it.text) for it in items]
    if options.vocab == "english":
        vocab = set(ENGLISH_VOCAB)
    else:
        vocab = {
            c
            for it, text in zip(items, texts, strict=True)
            if it.split == "train" and not it.problem
            for c in text
        }
        vocab.discard(" ")

    # Items sharing an id are all decoded; the first one that passes every check gets the id
    # (so a readable trunc.wav is not lost to an unreadable trunc.flac listed before it).
    pending: list[tuple[RawItem, str]] = []
    for it, text in zip(items, texts, strict=True):
        if it.problem:
            rejected.append(_reject(it, CORPUS, it.problem))
        elif not text:
            rejected.append(
                _reject(
                    it,
                    EMPTY_TEXT,
                    f"empty transcript after normalisation (raw: {it.text.strip()!r})",
                )
            )
        elif bad := sorted(set(text) - vocab - {" "}):
            shown = " ".join(repr(c) for c in bad)
            rejected.append(_reject(it, OOV, f"characters outside the vocabulary: {shown}"))
        else:
            pending.append((it, text))

    jobs = [(str(Path(it.audio).resolve()), it.offset, it.duration) for it, _ in pending]
    probes = _probe_all(jobs, options.workers, console)

    splits: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    accepted: dict[str, str] = {}  # id -> audio of the item that got it
    for (it, text), (path, _, _), (sample_rate, duration, error) in zip(
        pending, jobs, probes, strict=True
    ):
        if error is not None:
            rejected.append(_reject(it, AUDIO, error))
        elif duration < options.min_duration:
            rejected.append(
                _reject(
                    it, TOO_SHORT, f"{duration:.3f} s < --min-duration {options.min_duration} s"
                )
            )
        # (+1e-6: 0.29 s * 100 is 28.999999999999996 in floating point, yet 29 frames)
        elif (frames := int(duration * FRAMES_PER_SECOND + 1e-6)) < (need := ctc_min_frames(text)):
            rejected.append(
                _reject(
                    it, CTC, f"{frames} frames ({duration:.3f} s) < {need} CTC tokens for {text!r}"
                )
            )
        elif it.id in accepted:
            rejected.append(
                _reject(it, DUPLICATE, f"duplicate id {it.id!r} (already used by {accepted[it.id]})")
            )
        else:
            accepted[it.id] = str(it.audio)
            splits[it.split].append(
                Utterance(
                    id=it.id,
                    audio=path,
                    duration=round(duration, 6),
                    text=text,
                    speaker=it.speaker,
                    sample_rate=sample_rate,
                    offset=it.offset,
                )
            )
    for utts in splits.values():
        utts.sort(key=lambda u: u.id)
    rejected.sort(key=lambda r: (SPLITS.index(r.split) if r.split in SPLITS else len(SPLITS), r.id))
    return PrepareResult(splits=splits, rejected=rejected, vocabulary="".join(sorted(vocab)))


# ---------------------------------------------------------------------------- reporting


def manifest_stats(utts: list[Utterance]) -> dict[str, Any]:
    """Counts and duration statistics (seconds) of one manifest."""
    durations = [u.duration for u in utts]
    return {
        "utterances": len(utts),
        "hours": round(sum(durations) / 3600, 4),
        "speakers": len({u.speaker for u in utts}),
        "duration_min": round(min(durations), 3) if durations else None,
        "duration_median": round(statistics.median(durations), 3) if durations else None,
        "duration_max": round(max(durations), 3) if durations else None,
    }


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


# ---------------------------------------------------------------------------- driver


def default_src(corpus: str) -> Path | None:
    """``$ASR_DATA_DIR/<corpus>``, else ``../shared/data/<corpus>`` (from the working
    directory, then from the repository root), whichever exists first."""
    candidates = []
    if os.environ.get("ASR_DATA_DIR"):
        candidates.append(Path(os.environ["ASR_DATA_DIR"]) / corpus)
    candidates.append(Path("../shared/data") / corpus)
    candidates.append(Path(__file__).resolve().parents[3] / "shared" / "data" / corpus)
    return next((c for c in candidates if c.is_dir()), None)


def prepare_corpus(
    corpus: str,
    src: Path,
    out: Path,
    options: PrepareOptions = PrepareOptions(),
    corpus_options: CorpusOptions = CorpusOptions(),
    console: Console | None = None,
) -> PrepareResult:
    """List, split, validate and write the manifests of ``corpus`` found in ``src``.

    Raises CorpusError (layout) or PrepareError (options, empty train split); rejected
    items are not errors: they go to ``out/rejected.jsonl`` and ``result.rejected``.
    """
    module = get_corpus(corpus)
    items = module.find_items(Path(src), corpus_options)
    items, dev_note = carve_dev(
        items, module.DEV_DEFAULT, options.dev_speakers, options.dev_fraction, options.seed
    )
    result = validate_items(items, options, console)
    result.dev_note = dev_note

    present = [s for s in SPLITS if any(it.split == s for it in items)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        if split in present:
            write_manifest(path, result.splits[split])
        elif path.exists():
            path.unlink()  # stale from an earlier run with other options: would mislead
    with open(out / "rejected.jsonl", "w", encoding="utf-8") as f:
        for r in result.rejected:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    result.summary = {
        "corpus": corpus,
        "src": str(Path(src).resolve()),
        "options": asdict(options),
        "dev": dev_note,
        "vocabulary": result.vocabulary,
        "splits": {s: manifest_stats(result.splits[s]) for s in present},
        "rejected": {
            "total": len(result.rejected),
            "by_category": dict(Counter(r.category for r in result.rejected).most_common()),
            "by_split": dict(Counter(r.split for r in result.rejected)),
        },
    }
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(result.summary, f, indent=2, ensure_ascii=False)
        f.write("\n")
    if console is not None:
        print_summary(result, present, console)
    if "train" in present and not result.splits["train"]:
        raise PrepareError(
            f"no usable train utterances (all rejected; see {out / 'rejected.jsonl'})"
        )
    return result


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
    console = Console()
    err = Console(stderr=True, soft_wrap=True)  # never break a URL or path across lines
    corpus_options = CorpusOptions(
        list_file=args.list_file,
        subsets=tuple(s.strip() for s in args.subsets.split(",") if s.strip()),
    )
    if args.list_file is not None and args.corpus != "folder":
        err.print("[red]error:[/red] --list only applies to the folder corpus")
        return 2
    module = get_corpus(args.corpus)
    src = args.src
    if src is None and args.list_file is not None:
        src = args.list_file.parent
    if src is None:
        src = default_src(args.corpus)
    if src is None:
        err.print(
            f"[red]error:[/red] no --src given and no ../shared/data/{args.corpus} found; "
            "pass --src DIR" + (" (where to download it)" if args.download else "")
        )
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
                err.print(
                    f"[red]error:[/red] {args.corpus} has no --download; fetch it yourself "
                    "and pass --src DIR (see `asr prepare --help`)"
                )
                return 1
            if module.is_present(src, corpus_options):
                console.print(f"{args.corpus} already in {src}; not downloading")
            else:
                module.download(src, corpus_options)
        result = prepare_corpus(args.corpus, src, args.out, options, corpus_options, console)
    except DownloadError as e:
        err.print(
            f"[red]error:[/red] could not download {e.url}: {e.reason}\n"
            f"Check the network, or download it yourself, unpack it and pass --src DIR."
        )
        return 1
    except CorpusError as e:  # unusable input (layout, list file): usage-level failure
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PrepareError as e:  # e.g. every item rejected: a batch whose items all failed
        print(f"error: {e}", file=sys.stderr)
        return 1
    written = [f"{s}.jsonl" for s in result.summary["splits"]]
    console.print(f"wrote {', '.join([*written, 'rejected.jsonl', 'summary.json'])} in {args.out}")
    if result.rejected and not args.allow_rejected:
        err.print(
            f"{len(result.rejected)} item(s) rejected (listed in {args.out / 'rejected.jsonl'}); "
            "exit status 1 (pass --allow-rejected if that is expected)"
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover - `asr prepare` is the entry point
    _parser = argparse.ArgumentParser(prog="asr prepare")
    configure(_parser)
    sys.exit(run(_parser.parse_args()))
