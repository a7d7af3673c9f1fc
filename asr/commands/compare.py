"""`asr compare REPORT_A REPORT_B [--out DIR]`: paired comparison of two evaluation directories.

Unreadable directories (:class:`asr.evaluate.reports.data.ReportError`) and reports that cannot be
compared (:class:`asr.evaluate.compare.CompareError`) reach ``asr.cli.main``: one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asr.evaluate.compare import compare_reports, format_pp, write_comparison
from asr.evaluate.reports.data import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report_a", type=Path, metavar="REPORT_A", help="evaluation directory A")
    parser.add_argument("report_b", type=Path, metavar="REPORT_B", help="evaluation directory B")
    parser.add_argument(
        "--out", type=Path, help="write compare.json and compare.md here (default: print only)"
    )
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed")
    parser.add_argument(
        "--top", type=int, default=20, help="how many most-different utterances to list"
    )
    parser.set_defaults(_parser=parser)


def run(args: argparse.Namespace) -> int:
    if args.resamples < 1:
        args._parser.error(f"--resamples must be >= 1 (is {args.resamples})")
    if args.top < 0:
        args._parser.error(f"--top must be >= 0 (is {args.top})")
    result = compare_reports(
        args.report_a, args.report_b, num_resamples=args.resamples, seed=args.seed, top=args.top
    )
    _print(result)
    if args.out is not None:
        json_path, md_path = write_comparison(args.out, result)
        print(f"wrote {json_path} and {md_path}")
    return 0


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
            format_pp(m["delta"]),
            f"[{format_pp(m['delta_low'])}, {format_pp(m['delta_high'])}]",
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
