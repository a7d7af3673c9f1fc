"""The data files of an evaluation directory: one record per scored utterance
(``utterances.jsonl``), the corpus summary (``summary.json``), and reading both back.

The bootstrap settings chosen here (:data:`BOOTSTRAP_RESAMPLES`, :data:`BOOTSTRAP_SEED`) are
recorded in ``summary["ci"]`` and reused for every other interval of the report (per speaker,
per duration), so intervals over the same utterances agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asr import __version__
from asr.data.manifest import utf8_lines
from asr.files import atomic_write_text
from asr.metrics import CorpusScore, UtteranceScore, bootstrap_ci

SUMMARY_FILE = "summary.json"
UTTERANCES_FILE = "utterances.jsonl"
SCHEMA = "asr.evaluation/1"

# Bootstrap defaults for every confidence interval of a report (and of `asr compare`).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_CONFIDENCE = 0.95

# Keys every utterances.jsonl record must have for compare/report rendering.
_RECORD_KEYS = (
    "id",
    "speaker",
    "duration",
    "reference",
    "hypothesis",
    "ops",
    "errors",
    "ref_words",
    "char_errors",
    "ref_chars",
)


class ReportError(ValueError):
    """An evaluation directory or one of its files is missing or malformed (names the file)."""


def utterance_record(
    utt_id: str, speaker: str, duration: float, score: UtteranceScore, missing: bool = False
) -> dict[str, Any]:
    """One utterances.jsonl line. ``missing``: the hypothesis was absent and scored as empty."""
    return {
        "id": utt_id,
        "speaker": speaker,
        "duration": round(float(duration), 3),
        "reference": score.reference,
        "hypothesis": score.hypothesis,
        "wer": score.wer,  # None where the reference is empty
        "cer": score.cer,
        "errors": score.words.errors,
        "substitutions": score.words.substitutions,
        "deletions": score.words.deletions,
        "insertions": score.words.insertions,
        "hits": score.words.hits,
        "ref_words": score.words.ref_len,
        "hyp_words": score.words.hyp_len,
        "char_errors": score.chars.errors,
        "ref_chars": score.chars.ref_len,
        "missing": missing,
        "ops": score.ops,
    }


def build_summary(
    score: CorpusScore,
    *,
    durations: Sequence[float],
    settings: Mapping[str, Any],
    model_info: Mapping[str, Any] | None,
    rtf: float | None,
    normalization: Mapping[str, str],
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = BOOTSTRAP_CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary.json content. ``durations``: (U,) seconds, same order as the score."""
    werr, wlen = score.word_arrays()
    cerr, clen = score.char_arrays()
    wer_ci = bootstrap_ci(werr, wlen, num_resamples, confidence, seed)
    cer_ci = bootstrap_ci(cerr, clen, num_resamples, confidence, seed)
    nerr, nlen = score.char_no_space_arrays()
    cer_ns_ci = bootstrap_ci(nerr, nlen, num_resamples, confidence, seed) if nlen.sum() else None
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "toolkit": {"name": "asr", "version": __version__},
        "wer": score.wer,
        "wer_ci": [wer_ci.low, wer_ci.high],
        "cer": score.cer,
        "cer_ci": [cer_ci.low, cer_ci.high],
        # CER with the spaces removed from reference and hypothesis (deepspeech.pytorch's).
        "cer_no_space": score.cer_no_space,
        "cer_no_space_ci": [cer_ns_ci.low, cer_ns_ci.high] if cer_ns_ci else None,
        "ci": {
            "method": "percentile bootstrap over utterances",
            "confidence": confidence,
            "num_resamples": num_resamples,
            "seed": seed,
        },
        "ser": score.sentence_error_rate,
        "num_utterances": score.num_utterances,
        "audio_seconds": round(float(sum(durations)), 3),
        "words": score.words.to_dict(),
        "chars": score.chars.to_dict(),
        "decoding": dict(settings),
        "model": dict(model_info) if model_info is not None else None,
        "rtf": rtf,
        "normalization": dict(normalization),
    }
    if extra:
        summary.update(extra)
    return summary


def write_data(out_dir: str | Path, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """Write summary.json and utterances.jsonl into ``out_dir`` (created); their paths.

    Each file is written atomically (see :mod:`asr.files`): an interrupted run never leaves a
    half-written file behind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spath, upath = out / SUMMARY_FILE, out / UTTERANCES_FILE
    atomic_write_text(spath, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(upath, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return spath, upath


def read_report(report_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read (summary, records) from an evaluation directory; ReportError names the bad file/line."""
    d = Path(report_dir)
    spath, upath = d / SUMMARY_FILE, d / UTTERANCES_FILE
    if not d.is_dir():
        raise ReportError(f"{d}: not a directory")
    for p in (spath, upath):
        if not p.is_file():
            raise ReportError(f"{d}: not an evaluation directory (no {p.name})")
    try:
        summary = json.loads(spath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{spath}: invalid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ReportError(f"{spath}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(summary, dict) or "wer" not in summary:
        raise ReportError(f"{spath}: not an evaluation summary (no 'wer')")
    records: list[dict[str, Any]] = []
    for lineno, line in utf8_lines(upath, ReportError):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{upath}:{lineno}: invalid JSON: {e}") from e
        missing = [k for k in _RECORD_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ReportError(f"{upath}:{lineno}: record lacks {', '.join(missing)}")
        records.append(rec)
    if not records:
        raise ReportError(f"{upath}: no utterances")
    return summary, records
