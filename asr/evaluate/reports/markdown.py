"""``report.md``: the evaluation report as Markdown (sclite-style REF/HYP alignments)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from asr.evaluate.reports.analysis import Analysis, GroupStat
from asr.evaluate.reports.data import MARKDOWN_RUN_STAMP
from asr.evaluate.reports.formatting import ci_header, ci_text, pct, setup_rows, visible

MARKDOWN_FILE = "report.md"


def _sclite_lines(ops: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """REF/HYP lines aligned column by column; errors upper-cased, gaps as ***."""
    ref_cols, hyp_cols = [], []
    for op in ops:
        r, h = op["ref"], op["hyp"]
        if op["op"] == "equal":
            r, h = str(r), str(h)
        else:
            r = "*" * 3 if r is None else str(r).upper()
            h = "*" * 3 if h is None else str(h).upper()
        w = max(len(r), len(h))
        ref_cols.append(r.ljust(w))
        hyp_cols.append(h.ljust(w))
    return " ".join(ref_cols).rstrip(), " ".join(hyp_cols).rstrip()


# Characters that Markdown (or the HTML it may embed, or GitHub's $math$) would interpret.
# Ids, speaker names and paths come from users' files, so report.md shows them literally.
_MD_SPECIAL = {c: "\\" + c for c in "\\`*_[]|$"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def md_escape(s: str) -> str:
    return "".join(_MD_SPECIAL.get(c, c) for c in visible(s))


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: set[int]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(md_escape(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _group_rows(groups: Sequence[GroupStat]) -> list[list[str]]:
    return [
        [
            g.name,
            str(g.utterances),
            f"{g.seconds / 60:.1f}",
            str(g.ref_words),
            str(g.errors),
            pct(g.wer),
            ci_text(g.ci_low, g.ci_high),
        ]
        for g in groups
    ]


_GROUP_HEADERS = ["", "utts", "min", "words", "errors", "WER"]


def render_markdown(summary: Mapping[str, Any], analysis: Analysis) -> str:
    """The whole report.md."""
    w = summary["words"]
    # The run id, for check_one_run (an HTML comment: not shown when the Markdown is rendered).
    stamp = [MARKDOWN_RUN_STAMP.format(summary["run_id"])] if summary.get("run_id") else []
    out = [
        *stamp,
        "# ASR evaluation report",
        "",
        f"**WER {pct(summary['wer'])}** {ci_text(*summary['wer_ci'])} · "
        f"**CER {pct(summary['cer'])}** {ci_text(*summary['cer_ci'])} · "
        f"SER {pct(summary['ser'])} · {summary['num_utterances']} utterances, "
        f"{w['reference']} reference words",
        "",
        f"Word errors: {w['substitutions']} substitutions, {w['deletions']} deletions, "
        f"{w['insertions']} insertions ({w['hits']} correct).",
        "",
        "## Setup",
        "",
        _md_table(["", ""], setup_rows(summary), set()),
        "",
        "## WER by utterance duration",
        "",
        _md_table(
            ["duration", *_GROUP_HEADERS[1:], ci_header(analysis.confidence)], _group_rows(analysis.durations), {1, 2, 3, 4, 5}
        ),
        "",
        "## WER by speaker (highest first)",
        "",
        _md_table(
            ["speaker", *_GROUP_HEADERS[1:], ci_header(analysis.confidence)], _group_rows(analysis.speakers), {1, 2, 3, 4, 5}
        ),
        "",
        "## Frequent errors",
        "",
    ]
    for title, items in (
        ("Substitutions (ref → hyp)", analysis.substitutions),
        ("Deleted words", analysis.deletions),
        ("Inserted words", analysis.insertions),
    ):
        out += [f"### {title}", ""]
        out += [_md_table(["", "count"], items, {1}) if items else "none", ""]
    out += ["## Worst utterances (most word errors)", ""]
    if not analysis.worst:
        out += ["No utterance has a word error.", ""]
    for r in analysis.worst:
        ref, hyp = _sclite_lines(r["ops"])
        out += [
            f"**{md_escape(str(r['id']))}** · speaker {md_escape(str(r['speaker']))} · "
            f"{r['duration']:.2f} s · "
            f"WER {pct(r.get('wer'))} · S={r['substitutions']} D={r['deletions']} "
            f"I={r['insertions']}",
            "",
            "```",
            f"REF: {visible(ref)}",
            f"HYP: {visible(hyp)}",
            "```",
            "",
        ]
    return "\n".join(out)
