"""Write a whole evaluation directory: the data files and both renderings of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asr.evaluate.reports.analysis import analyse
from asr.evaluate.reports.data import (
    BOOTSTRAP_CONFIDENCE,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    SUMMARY_FILE,
    UTTERANCES_FILE,
    data_texts,
)
from asr.evaluate.reports.html_page import HTML_FILE, render_html
from asr.evaluate.reports.markdown import MARKDOWN_FILE, render_markdown
from asr.files import atomic_write_files


def write_report(
    out_dir: str | Path,
    summary: dict[str, Any],
    records: Sequence[Mapping[str, Any]],
    worst: int = 20,
) -> dict[str, Path]:
    """Write summary.json, utterances.jsonl, report.md, report.html into ``out_dir``, as
    one set (:func:`asr.files.atomic_write_files`) stamped with ``summary["run_id"]``;
    ``summary`` gets the digest of utterances.jsonl (:func:`asr.evaluate.reports.data.data_texts`).

    The per-speaker and per-duration CIs use the bootstrap settings recorded in
    ``summary["ci"]`` (resamples, confidence, seed), so the report states them once and a
    group holding every utterance shows exactly the headline interval.
    """
    out = Path(out_dir)
    ci = summary.get("ci") or {}
    analysis = analyse(
        records,
        worst=worst,
        num_resamples=int(ci.get("num_resamples", BOOTSTRAP_RESAMPLES)),
        confidence=float(ci.get("confidence", BOOTSTRAP_CONFIDENCE)),
        seed=int(ci.get("seed", BOOTSTRAP_SEED)),
    )
    paths = {"summary": out / SUMMARY_FILE, "utterances": out / UTTERANCES_FILE,
             "markdown": out / MARKDOWN_FILE, "html": out / HTML_FILE}
    stext, utext = data_texts(summary, records)
    # One set: all four are on disk before any replaces its old version, so a full disk
    # leaves the previous run's directory whole, and all carry summary["run_id"].
    atomic_write_files({paths["summary"]: stext, paths["utterances"]: utext,
                        paths["markdown"]: render_markdown(summary, analysis),
                        paths["html"]: render_html(summary, analysis)})
    return paths
