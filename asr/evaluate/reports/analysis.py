"""Per-group statistics shared by the Markdown and HTML renderers: WER per speaker and per
duration bucket with bootstrap CIs, frequent error words, worst utterances.

Group CIs use the bootstrap settings of the summary's headline CI (see
:func:`asr.evaluate.reports.data.build_summary`), so a group holding every utterance gets exactly the
headline interval.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from asr.evaluate.reports.data import BOOTSTRAP_CONFIDENCE, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from asr.metrics import bootstrap_ci

# Upper edges (seconds) of the duration buckets; the last bucket is open-ended.
DURATION_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)


@dataclass(frozen=True)
class GroupStat:
    """Corpus WER of a group of utterances (a speaker, a duration bucket)."""

    name: str
    utterances: int
    seconds: float
    ref_words: int
    errors: int
    wer: float | None  # None when the group has no reference words
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Analysis:
    records: Sequence[Mapping[str, Any]]
    speakers: list[GroupStat]  # highest WER first
    durations: list[GroupStat]  # in bucket order, empty buckets dropped
    substitutions: list[tuple[str, int]]  # ("ref → hyp", count), most frequent first
    deletions: list[tuple[str, int]]
    insertions: list[tuple[str, int]]
    worst: list[Mapping[str, Any]]  # most word errors first
    confidence: float  # of every group CI (as the headline CI)


def _group_stat(
    name: str, recs: Sequence[Mapping[str, Any]], num_resamples: int, confidence: float, seed: int
) -> GroupStat:
    errors = np.array([r["errors"] for r in recs], dtype=np.int64)
    lens = np.array([r["ref_words"] for r in recs], dtype=np.int64)
    total = int(lens.sum())
    wer = float(errors.sum() / total) if total else None
    lo = hi = None
    if total:
        ci = bootstrap_ci(errors, lens, num_resamples, confidence, seed)
        lo, hi = ci.low, ci.high
    return GroupStat(
        name,
        len(recs),
        float(sum(r["duration"] for r in recs)),
        total,
        int(errors.sum()),
        wer,
        lo,
        hi,
    )


def duration_bucket(seconds: float, edges: Sequence[float] = DURATION_EDGES) -> int:
    """Index of the bucket holding ``seconds`` (bucket i covers [edges[i-1], edges[i]))."""
    for i, e in enumerate(edges):
        if seconds < e:
            return i
    return len(edges)


def bucket_label(i: int, edges: Sequence[float] = DURATION_EDGES) -> str:
    def f(x: float) -> str:
        return f"{x:g}"

    if i == 0:
        return f"< {f(edges[0])} s"
    if i == len(edges):
        return f"≥ {f(edges[-1])} s"
    return f"{f(edges[i - 1])}–{f(edges[i])} s"


def analyse(
    records: Sequence[Mapping[str, Any]],
    worst: int = 20,
    top: int = 15,
    *,
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = BOOTSTRAP_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> Analysis:
    """Per-speaker and per-duration WER, frequent error words, worst utterances.

    ``num_resamples``, ``confidence``, ``seed``: the bootstrap of every group CI; pass the
    summary's (``summary["ci"]``) so they match the headline interval.
    """
    by_spk: dict[str, list[Mapping[str, Any]]] = {}
    by_dur: dict[int, list[Mapping[str, Any]]] = {}
    subs: Counter[str] = Counter()
    dels: Counter[str] = Counter()
    ins: Counter[str] = Counter()
    for r in records:
        by_spk.setdefault(str(r["speaker"]), []).append(r)
        by_dur.setdefault(duration_bucket(float(r["duration"])), []).append(r)
        for op in r["ops"]:
            if op["op"] == "substitute":
                subs[f"{op['ref']} → {op['hyp']}"] += 1
            elif op["op"] == "delete":
                dels[str(op["ref"])] += 1
            elif op["op"] == "insert":
                ins[str(op["hyp"])] += 1

    def stat(name: str, recs: Sequence[Mapping[str, Any]]) -> GroupStat:
        return _group_stat(name, recs, num_resamples, confidence, seed)

    speakers = [stat(s, rs) for s, rs in by_spk.items()]
    speakers.sort(key=lambda g: (-(g.wer if g.wer is not None else -1.0), g.name))
    durations = [stat(bucket_label(i), by_dur[i]) for i in sorted(by_dur)]
    ranked = sorted(
        (r for r in records if r["errors"] > 0),
        key=lambda r: (-r["errors"], -(r.get("wer") or 0.0), r["id"]),
    )
    return Analysis(
        records,
        speakers,
        durations,
        subs.most_common(top),
        dels.most_common(top),
        ins.most_common(top),
        ranked[:worst],
        confidence,
    )
