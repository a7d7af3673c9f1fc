"""What `asr prepare` writes: ``{train,dev,test}.jsonl``, ``rejected.jsonl`` and ``summary.json``."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asr.data.corpora import SPLITS
from asr.data.manifest import Utterance, write_manifest
from asr.data.prepare.options import PrepareOptions
from asr.data.prepare.validate import PrepareResult


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


def write_outputs(
    out: Path, result: PrepareResult, present: list[str], corpus: str, src: Path, options: PrepareOptions
) -> None:
    """Write the manifests of the ``present`` splits, ``rejected.jsonl`` and ``summary.json``
    into ``out``, and fill ``result.summary``. A manifest of a split not present is removed:
    left from an earlier run with other options, it would mislead."""
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        if split in present:
            write_manifest(path, result.splits[split])
        elif path.exists():
            path.unlink()
    with open(out / "rejected.jsonl", "w", encoding="utf-8") as f:
        for r in result.rejected:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    result.summary = {
        "corpus": corpus,
        "src": str(Path(src).resolve()),
        "options": asdict(options),
        "dev": result.dev_note,
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
