"""What `asr prepare` writes: ``{train,dev,test}.jsonl``, ``rejected.jsonl`` and ``summary.json``,
as one set (:func:`asr.files.atomic_write_files`): a rerun that fails (no space left) keeps the
earlier files whole."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from asr.data.corpora import SPLITS
from asr.data.manifest import Utterance, manifest_text
from asr.data.prepare.options import PrepareOptions
from asr.data.prepare.validate import PrepareResult
from asr.files import atomic_write_files


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
    into ``out`` as one set, and fill ``result.summary``. A manifest of a split not present is
    removed once the new set is in place: left from an earlier run with other options, it would
    mislead."""
    contents: dict[Path, str] = {}
    for split in present:
        path = out / f"{split}.jsonl"
        contents[path] = manifest_text(result.splits[split], path)
    contents[out / "rejected.jsonl"] = "".join(
        json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in result.rejected
    )
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
    contents[out / "summary.json"] = json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n"
    atomic_write_files(contents)
    for split in SPLITS:
        if split not in present:
            (out / f"{split}.jsonl").unlink(missing_ok=True)
