"""Write a whole evaluation directory: the data files and both renderings of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asr.files import atomic_write_text
from asr.reports.analysis import analyse
from asr.reports.data import (
    BOOTSTRAP_CONFIDENCE,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    write_data,
)
from asr.reports.html_page import HTML_FILE, render_html
from asr.reports.markdown import MARKDOWN_FILE, render_markdown


def write_report(
    out_dir: str | Path,
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    worst: int = 20,
) -> dict[str, Path]:
    """Write summary.json, utterances.jsonl, report.md, report.html into ``out_dir``.

    The per-speaker and per-duration CIs use the bootstrap settings recorded in
    ``summary["ci"]`` (resamples, confidence, seed), so the report states them once and a
    group holding every utterance shows exactly the headline interval.
    """
    out = Path(out_dir)
    spath, upath = write_data(out, summary, records)
    ci = summary.get("ci") or {}
    analysis = analyse(
        records,
        worst=worst,
        num_resamples=int(ci.get("num_resamples", BOOTSTRAP_RESAMPLES)),
        confidence=float(ci.get("confidence", BOOTSTRAP_CONFIDENCE)),
        seed=int(ci.get("seed", BOOTSTRAP_SEED)),
    )
    paths = {"summary": spath, "utterances": upath, "markdown": out / MARKDOWN_FILE, "html": out / HTML_FILE}
    # Atomic, like the data files: an interrupted run never leaves a half-written report.
    atomic_write_text(paths["markdown"], render_markdown(summary, analysis))
    atomic_write_text(paths["html"], render_html(summary, analysis))
    return paths
