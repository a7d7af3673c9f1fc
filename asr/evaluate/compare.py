"""Paired comparison of two evaluations (the library side of ``asr compare``).

Both evaluation directories (written by ``asr evaluate``) must cover the same utterance ids
with the same references; otherwise the WERs are not comparable and the command refuses
(:class:`CompareError`). The paired bootstrap resamples utterances once per round and scores both systems
on the same draw, so the spread reflects the systems' difference, not the test set's
difficulty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr.evaluate.reports.data import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, read_report
from asr.evaluate.reports.formatting import visible
from asr.evaluate.reports.markdown import md_escape
from asr.files import atomic_write_text
from asr.metrics import paired_bootstrap

_EXAMPLES = 5


class CompareError(ValueError):
    """The two reports cannot be compared (different utterances or references)."""


def _examples(ids: Sequence[str]) -> str:
    return ", ".join(ids[:_EXAMPLES]) + (", ..." if len(ids) > _EXAMPLES else "")


def _check_same_set(
    dir_a: Path,
    dir_b: Path,
    recs_a: Mapping[str, Mapping[str, Any]],
    recs_b: Mapping[str, Mapping[str, Any]],
) -> None:
    only_a = sorted(set(recs_a) - set(recs_b))
    only_b = sorted(set(recs_b) - set(recs_a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"{len(only_a)} only in {dir_a} ({_examples(only_a)})")
        if only_b:
            parts.append(f"{len(only_b)} only in {dir_b} ({_examples(only_b)})")
        raise CompareError(
            f"cannot compare: the reports cover different utterances ({len(recs_a)} vs {len(recs_b)} ids; "
            + "; ".join(parts)
            + "); evaluate both systems on the same manifest"
        )
    diff_ref = sorted(k for k in recs_a if recs_a[k]["reference"] != recs_b[k]["reference"])
    if diff_ref:
        raise CompareError(
            f"cannot compare: {len(diff_ref)} utterances have different references in the two "
            "reports "
            f"({_examples(diff_ref)}); they were scored against different transcripts or "
            "normalisations"
        )


def _side(d: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    model = summary.get("model") or {}
    return {
        "dir": str(d),
        "wer": summary["wer"],
        "cer": summary.get("cer"),
        "model": model.get("path"),
        "decoding": summary.get("decoding"),
    }


def compare_reports(
    dir_a: str | Path,
    dir_b: str | Path,
    *,
    num_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    top: int = 20,
) -> dict[str, Any]:
    """Compare two evaluation directories; raises ReportError (unreadable) or CompareError.

    Returns a JSON-serialisable dict: both sides, paired-bootstrap results for WER and CER
    (delta = B - A), per-utterance win counts, and the ``top`` utterances whose word error
    counts differ most.
    """
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    sum_a, list_a = read_report(dir_a)
    sum_b, list_b = read_report(dir_b)
    recs_a = {r["id"]: r for r in list_a}
    recs_b = {r["id"]: r for r in list_b}
    _check_same_set(dir_a, dir_b, recs_a, recs_b)

    ids = [r["id"] for r in list_a]  # A's order; B is looked up by id

    def arr(recs: Mapping[str, Mapping[str, Any]], key: str) -> np.ndarray:
        return np.array([recs[i][key] for i in ids], dtype=np.int64)

    ea, eb, wl = arr(recs_a, "errors"), arr(recs_b, "errors"), arr(recs_a, "ref_words")
    ca, cb, cl = arr(recs_a, "char_errors"), arr(recs_b, "char_errors"), arr(recs_a, "ref_chars")
    wer = paired_bootstrap(ea, eb, wl, num_resamples=num_resamples, seed=seed)
    cer = paired_bootstrap(ca, cb, cl, num_resamples=num_resamples, seed=seed)

    diff = eb - ea
    order = sorted(range(len(ids)), key=lambda i: (-abs(int(diff[i])), ids[i]))
    largest = [
        {
            "id": ids[i],
            "speaker": recs_a[ids[i]]["speaker"],
            "reference": recs_a[ids[i]]["reference"],
            "hyp_a": recs_a[ids[i]]["hypothesis"],
            "hyp_b": recs_b[ids[i]]["hypothesis"],
            "errors_a": int(ea[i]),
            "errors_b": int(eb[i]),
        }
        for i in order[:top]
        if diff[i] != 0
    ]
    return {
        "a": _side(dir_a, sum_a),
        "b": _side(dir_b, sum_b),
        "num_utterances": len(ids),
        "ref_words": int(wl.sum()),
        "wer": wer.to_dict(),
        "cer": cer.to_dict(),
        "utterances": {
            "b_better": int((diff < 0).sum()),
            "a_better": int((diff > 0).sum()),
            "same": int((diff == 0).sum()),
        },
        "largest_differences": largest,
    }


def format_pp(x: float) -> str:
    """A rate difference in percentage points, signed."""
    return f"{100 * x:+.2f}"


def render_markdown(result: Mapping[str, Any]) -> str:
    a, b, w, c, u = (result[k] for k in ("a", "b", "wer", "cer", "utterances"))
    conf = 100 * w["confidence"]
    lines = [
        "# ASR comparison",
        "",
        f"- A: `{a['dir']}` (model {a['model'] or 'external'})",
        f"- B: `{b['dir']}` (model {b['model'] or 'external'})",
        f"- {result['num_utterances']} utterances, {result['ref_words']} reference words; "
        f"paired bootstrap, {w['num_resamples']} resamples, seed {w['seed']}",
        "",
        f"| metric | A | B | B − A (pp) | {conf:g}% CI (pp) | P(B better) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in (("WER", w), ("CER", c)):
        lines.append(
            f"| {name} | {100 * m['rate_a']:.2f}% | {100 * m['rate_b']:.2f}% | "
            f"{format_pp(m['delta'])} | [{format_pp(m['delta_low'])}, {format_pp(m['delta_high'])}] | "
            f"{m['p_b_better']:.3f} |"
        )
    lines += [
        "",
        f"Per utterance (word errors): B better on {u['b_better']}, A better on "
        f"{u['a_better']}, equal on {u['same']}.",
        "",
        "## Utterances that differ most",
        "",
    ]
    if not result["largest_differences"]:
        lines.append("The two systems make the same number of word errors on every utterance.")
    for d in result["largest_differences"]:
        lines += [
            f"**{md_escape(str(d['id']))}** (speaker {md_escape(str(d['speaker']))}): "
            f"errors A {d['errors_a']}, B {d['errors_b']}",
            "",
            "```",
            f"REF: {visible(d['reference'])}",
            f"A:   {visible(d['hyp_a'])}",
            f"B:   {visible(d['hyp_b'])}",
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"


COMPARE_JSON = "compare.json"
COMPARE_MARKDOWN = "compare.md"


def write_comparison(out_dir: str | Path, result: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``result`` as compare.json and compare.md into ``out_dir`` (created); their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / COMPARE_JSON, out / COMPARE_MARKDOWN
    atomic_write_text(jpath, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(mpath, render_markdown(result))
    return jpath, mpath
