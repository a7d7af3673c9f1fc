"""`asr evaluate`: score a model package, or another system's hypothesis file, on a manifest.

    asr evaluate MODEL MANIFEST --out DIR [--decoder greedy|beam] [--lm FILE] [--beam-size N]
                                          [--lm-weight W] [--word-score S]
                                          [--device cpu|cuda] [--devices N]
    asr evaluate --hyps HYP_FILE MANIFEST --out DIR [--allow-missing]

Both references and hypotheses go through :func:`asr.text.normalize_text`, so a system is
not penalised for casing or punctuation and two systems are always scored alike. The
evaluation directory layout is described in :mod:`asr.evaluate.reports`.

Hypothesis files are JSONL (``{"id": ..., "text": ...}`` per line) or Kaldi-style text
(``id word word ...`` per line; an id alone is an empty hypothesis). The format is taken from
the first non-empty line. Ids in the manifest but not in the hypotheses are an error unless
``--allow-missing`` (then they are scored as empty and counted); ids only in the hypotheses
are ignored with a counted warning; blank lines are skipped with a counted warning;
duplicate ids are an error.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.data.manifest import Utterance, utf8_lines
from asr.evaluate.reports.data import build_summary, utterance_record
from asr.evaluate.reports.directory import write_report
from asr.metrics import score_corpus
from asr.text import normalize_text

# How many ids an error or warning message lists before "...".
_EXAMPLES = 5


def _normalization_info() -> dict[str, str]:
    # Taken from the function's own docstring so the report cannot drift from the code.
    doc = inspect.getdoc(normalize_text) or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    description = " ".join(p for p in paragraphs if p and not p.startswith(">>>"))
    # reST inline literals (``x``) read badly in Markdown/HTML; quote them instead.
    description = re.sub(r"``(.+?)``", r"“\1”", description)
    return {"name": "asr.text.normalize_text", "description": description}


class HypothesisFileError(ValueError):
    """A malformed hypothesis file; the message names ``path:line``."""


class MissingHypothesesError(ValueError):
    """Manifest utterances without a hypothesis (and missing ones were not allowed)."""

    def __init__(self, missing: Sequence[str], total: int):
        self.missing = list(missing)
        shown = ", ".join(self.missing[:_EXAMPLES]) + (", ..." if len(missing) > _EXAMPLES else "")
        super().__init__(
            f"{len(missing)} of {total} manifest utterances have no hypothesis ({shown}); "
            "pass --allow-missing (allow_missing=True) to score them as empty hypotheses"
        )


class HypothesisWarning(UserWarning):
    """Counted, non-fatal problems with hypotheses (extra ids, blank lines, missing allowed)."""


class ReferenceWarning(UserWarning):
    """Counted, non-fatal problems with references (empty after normalisation)."""


def _examples(ids: Sequence[str]) -> str:
    return ", ".join(ids[:_EXAMPLES]) + (", ..." if len(ids) > _EXAMPLES else "")


@dataclass(frozen=True)
class Hypotheses:
    """A parsed hypothesis file."""

    path: str
    format: str  # "jsonl" or "kaldi"
    texts: dict[str, str]  # id -> raw hypothesis text (not yet normalised)
    empty_lines: int  # blank lines skipped


def read_hypotheses(path: str | Path) -> Hypotheses:
    """Read a JSONL or Kaldi-style hypothesis file.

    Raises HypothesisFileError (``path:line: problem``) for bad JSON, a missing/non-string
    id or text, a duplicate id or a line that is not UTF-8; FileNotFoundError if the file does not exist.
    """
    path = Path(path)
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    empty = 0
    fmt: str | None = None
    # utf8_lines drops a byte-order mark (Windows tools often write one) and names the line
    # of any bytes that are not UTF-8.
    for lineno, line in utf8_lines(path, HypothesisFileError):
        if not line.strip():
            empty += 1
            continue
        if fmt is None:
            fmt = "jsonl" if line.lstrip().startswith("{") else "kaldi"
        if fmt == "jsonl":
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise HypothesisFileError(
                    f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); the "
                    "first line made this a JSONL file"
                ) from e
            if not isinstance(d, dict):
                raise HypothesisFileError(f"{path}:{lineno}: expected a JSON object")
            uid, text = d.get("id"), d.get("text")
            if not isinstance(uid, str) or not uid.strip():
                raise HypothesisFileError(f"{path}:{lineno}: 'id' must be a non-empty string")
            if not isinstance(text, str):
                raise HypothesisFileError(
                    f"{path}:{lineno}: utterance {uid}: 'text' must be a string (is {text!r})"
                )
        else:
            parts = line.strip().split(maxsplit=1)
            uid, text = parts[0], parts[1] if len(parts) > 1 else ""
        if uid in first_line:
            raise HypothesisFileError(
                f"{path}:{lineno}: duplicate id {uid!r} (first on line {first_line[uid]})"
            )
        first_line[uid] = lineno
        texts[uid] = text
    return Hypotheses(str(path), fmt or "kaldi", texts, empty)


def evaluate(
    refs: list[Utterance],
    hyps: Mapping[str, str],
    out_dir: str | Path,
    settings: Mapping[str, Any],
    model_info: Mapping[str, Any] | None = None,
    rtf: float | None = None,
    *,
    allow_missing: bool = False,
    hypothesis_info: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
    worst: int = 20,
) -> dict[str, Any]:
    """Score ``hyps`` (id -> text) against ``refs`` and write the evaluation directory.

    Returns the summary dict also written to ``out_dir/summary.json``. Missing hypotheses
    raise MissingHypothesesError unless ``allow_missing``; then they are scored as empty and
    counted. Extra ids and allowed-missing ids emit a HypothesisWarning with the count;
    references empty after normalisation a ReferenceWarning (counted in
    ``summary["references"]``).
    ``hypothesis_info`` is merged into ``summary["hypotheses"]``, ``extra`` into the summary.
    """
    if not refs:
        raise ValueError("no reference utterances to evaluate")
    seen: set[str] = set()
    dups: list[str] = []
    for u in refs:
        if u.id in seen:
            dups.append(u.id)
        seen.add(u.id)
    if dups:
        raise ValueError(f"duplicate utterance ids in the references: {_examples(dups)}")

    missing = [u.id for u in refs if u.id not in hyps]
    extra_ids = [k for k in hyps if k not in seen]
    if missing and not allow_missing:
        raise MissingHypothesesError(missing, len(refs))
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(refs)} utterances have no hypothesis and were scored as "
            f"empty ({_examples(missing)})",
            HypothesisWarning,
            stacklevel=2,
        )
    if extra_ids:
        warnings.warn(
            f"{len(extra_ids)} hypotheses have ids that are not in the manifest and were "
            f"ignored ({_examples(extra_ids)})",
            HypothesisWarning,
            stacklevel=2,
        )

    ref_texts = [normalize_text(u.text) for u in refs]
    empty_refs = [u.id for u, t in zip(refs, ref_texts, strict=True) if not t]
    if empty_refs:
        # Scored (any hypothesis word is an insertion) but worth knowing: the manifest text
        # was only punctuation/symbols, or the normaliser removed what it held.
        warnings.warn(
            f"{len(empty_refs)} reference(s) are empty after normalisation and were scored "
            f"as empty ({_examples(empty_refs)})",
            ReferenceWarning,
            stacklevel=2,
        )
    hyp_texts = [normalize_text(hyps.get(u.id, "")) for u in refs]
    score = score_corpus(ref_texts, hyp_texts)
    missing_set = set(missing)
    records = [
        utterance_record(u.id, u.speaker, u.duration, s, missing=u.id in missing_set)
        for u, s in zip(refs, score.utterances, strict=True)
    ]
    info = {"missing": len(missing), "extra": len(extra_ids), **(hypothesis_info or {})}
    summary = build_summary(
        score,
        durations=[u.duration for u in refs],
        settings=settings,
        model_info=model_info,
        rtf=rtf,
        normalization=_normalization_info(),
        num_resamples=num_resamples,
        seed=seed,
        extra={
            "hypotheses": info,
            "references": {"empty_after_normalization": len(empty_refs), "empty_items": empty_refs},
            **(extra or {}),
        },
    )
    write_report(out_dir, summary, records, worst=worst)
    return summary
