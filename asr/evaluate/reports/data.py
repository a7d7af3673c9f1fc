"""The data files of an evaluation directory: one record per scored utterance
(``utterances.jsonl``), the corpus summary (``summary.json``), and reading both back.

The bootstrap settings chosen here (:data:`BOOTSTRAP_RESAMPLES`, :data:`BOOTSTRAP_SEED`) are
recorded in ``summary["ci"]`` and reused for every other interval of the report (per speaker,
per duration), so intervals over the same utterances agree.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asr import __version__
from asr.data.manifest import utf8_lines
from asr.files import atomic_write_files
from asr.lock import ReportError  # defined at the ground floor: the output lock raises it too
from asr.metrics import CorpusScore, UtteranceScore, bootstrap_ci

SUMMARY_FILE = "summary.json"
UTTERANCES_FILE = "utterances.jsonl"
SCHEMA = "asr.evaluation/1"
UTTERANCES_DIGEST = "utterances_sha256"  # summary.json key: SHA-256 of utterances.jsonl

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
        # Also in both reports; with the utterances file's digest it ties the directory's
        # files to one run (see check_one_run).
        "run_id": uuid.uuid4().hex[:16],
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


def data_texts(summary: dict[str, Any], records: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The contents of summary.json and utterances.jsonl. ``summary`` gets the utterances
    file's SHA-256 (``utterances_sha256``), which ties that file to its run (see
    :func:`check_one_run`) while two runs that score alike still write identical
    utterance files."""
    utext = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    summary[UTTERANCES_DIGEST] = hashlib.sha256(utext.encode("utf-8")).hexdigest()
    return json.dumps(summary, indent=2, ensure_ascii=False) + "\n", utext


def write_data(out_dir: str | Path, summary: dict[str, Any], records: Sequence[Mapping[str, Any]]) -> tuple[Path, Path]:
    """Write summary.json and utterances.jsonl into ``out_dir`` (created); their paths.

    Both are written as one set (see :func:`asr.files.atomic_write_files`): an interrupted
    or failed run leaves the old pair or the new one, never half a file.
    """
    out = Path(out_dir)
    spath, upath = out / SUMMARY_FILE, out / UTTERANCES_FILE
    stext, utext = data_texts(summary, records)
    atomic_write_files({spath: stext, upath: utext})
    return spath, upath


# How report.md and report.html carry the run id (the renderers write these; read back here).
MARKDOWN_RUN_STAMP = "<!-- asr evaluation run {} -->"
HTML_RUN_STAMP = '<meta name="asr-run-id" content="{}">'
_STAMP_BYTES = 4096  # both stamps are in the first lines of their file


def _stamp_in(path: Path, stamp: str) -> str | None:
    """The run id stamped in ``path`` (None: no stamp, or no file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_STAMP_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    m = re.search(re.escape(stamp).replace(r"\{\}", r"([0-9a-f]+)"), head)
    return m.group(1) if m else None


def check_one_run(report_dir: str | Path, summary: Mapping[str, Any]) -> None:
    """Raise ReportError when the files of an evaluation directory come from different runs.

    The four files are staged and then renamed into place together, but a kill between two
    renames, or a file copied in by hand, can still leave summary.json of one run beside
    utterances.jsonl or a report of another: their numbers would disagree without anything
    saying so. summary.json names the run and the utterances file's digest, each report
    carries the run id. Directories written before run ids existed carry none and pass.
    """
    from asr.evaluate.reports.html_page import HTML_FILE
    from asr.evaluate.reports.markdown import MARKDOWN_FILE

    d = Path(report_dir)
    run = summary.get("run_id")
    if not run:
        return
    problems = []
    digest = hashlib.sha256()
    with open(d / UTTERANCES_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != summary.get(UTTERANCES_DIGEST):
        problems.append(f"{UTTERANCES_FILE} is not the one {SUMMARY_FILE} was written with")
    for name, stamp in ((MARKDOWN_FILE, MARKDOWN_RUN_STAMP), (HTML_FILE, HTML_RUN_STAMP)):
        if (d / name).is_file() and (other := _stamp_in(d / name, stamp)) != run:
            problems.append(f"{name} is from run {other or 'unknown'}")
    if problems:
        raise ReportError(f"{d}: mixes files of different evaluation runs ({SUMMARY_FILE} is from run {run}; "
                          f"{'; '.join(problems)}); run asr evaluate into it again")


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
    check_one_run(d, summary)
    return summary, records
