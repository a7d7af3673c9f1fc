"""`asr compare REPORT_A REPORT_B [--out DIR]`: paired comparison of two evaluations.

Both evaluation directories (written by ``asr evaluate``) must cover the same utterance ids
with the same references; otherwise the WERs are not comparable and the command refuses
(exit 2). The paired bootstrap resamples utterances once per round and scores both systems
on the same draw, so the spread reflects the systems' difference, not the test set's
difficulty.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asr.metrics import paired_bootstrap
from asr.reports import ReportError, read_report

_EXAMPLES = 5


class CompareError(ValueError):
    """The two reports cannot be compared (different utterances or references)."""


def _examples(ids: Sequence[str]) -> str:
    return ", ".join(ids[:_EXAMPLES]) + (", ..." if len(ids) > _EXAMPLES else "")


def _check_same_set(
    dir_a: Path,
    dir_b: Path,
    recs_a: dict[str, Mapping[str, Any]],
    recs_b: dict[str, Mapping[str, Any]],
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
            f"the reports cover different utterances ({len(recs_a)} vs {len(recs_b)} ids; "
            + "; ".join(parts)
            + "); evaluate both systems on the same manifest"
        )
    diff_ref = sorted(k for k in recs_a if recs_a[k]["reference"] != recs_b[k]["reference"])
    if diff_ref:
        raise CompareError(
            f"{len(diff_ref)} utterances have different references in the two reports "
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
    num_resamples: int = 1000,
    seed: int = 0,
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


def _pp(x: float) -> str:
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
            f"{_pp(m['delta'])} | [{_pp(m['delta_low'])}, {_pp(m['delta_high'])}] | "
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
            f"**{d['id']}** (speaker {d['speaker']}): errors A {d['errors_a']}, B {d['errors_b']}",
            "",
            "```",
            f"REF: {d['reference']}",
            f"A:   {d['hyp_a']}",
            f"B:   {d['hyp_b']}",
            "```",
            "",
        ]
    return "\n".join(lines) + "\n"


def _print(result: Mapping[str, Any], rows: int = 10) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    w = result["wer"]
    t = Table(
        title=f"A = {result['a']['dir']}   B = {result['b']['dir']}   "
        f"({result['num_utterances']} utterances)"
    )
    for col in (
        "metric",
        "A",
        "B",
        "B − A (pp)",
        f"{100 * w['confidence']:g}% CI (pp)",
        "P(B better)",
    ):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for name in ("wer", "cer"):
        m = result[name]
        t.add_row(
            name.upper(),
            f"{100 * m['rate_a']:.2f}%",
            f"{100 * m['rate_b']:.2f}%",
            _pp(m["delta"]),
            f"[{_pp(m['delta_low'])}, {_pp(m['delta_high'])}]",
            f"{m['p_b_better']:.3f}",
        )
    console.print(t)
    u = result["utterances"]
    console.print(
        f"per utterance: B better {u['b_better']}, A better {u['a_better']}, same {u['same']}"
    )
    if result["largest_differences"]:
        d = Table(title="utterances that differ most", show_lines=True)
        for col in ("id", "errors A/B", "reference / A / B"):
            d.add_column(col)
        for x in result["largest_differences"][:rows]:
            d.add_row(
                x["id"],
                f"{x['errors_a']}/{x['errors_b']}",
                f"REF {x['reference']}\nA   {x['hyp_a']}\nB   {x['hyp_b']}",
            )
        console.print(d)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report_a", type=Path, metavar="REPORT_A", help="evaluation directory A")
    parser.add_argument("report_b", type=Path, metavar="REPORT_B", help="evaluation directory B")
    parser.add_argument(
        "--out", type=Path, help="write compare.json and compare.md here (default: print only)"
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--top", type=int, default=20, help="how many most-different utterances to list"
    )
    parser.set_defaults(_parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.resamples < 1:
        args._parser.error(f"--resamples must be >= 1 (is {args.resamples})")
    if args.top < 0:
        args._parser.error(f"--top must be >= 0 (is {args.top})")
    try:
        result = compare_reports(
            args.report_a, args.report_b, num_resamples=args.resamples, seed=args.seed, top=args.top
        )
    except CompareError as e:
        print(f"error: cannot compare: {e}", file=sys.stderr)
        return 2
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print(result)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(
            json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (args.out / "compare.md").write_text(render_markdown(result), encoding="utf-8")
        print(f"wrote {args.out / 'compare.json'} and {args.out / 'compare.md'}")
    return 0
