"""Markdown table of one configuration trained with several seeds: each seed, mean ± sd.

    python recipes/an4/seeds_table.py exp/an4/seed1 exp/an4/seed2 exp/an4/seed3 [--split test]

Reads what ``asr evaluate`` and ``asr train`` wrote (``EXP/eval/<system>/<split>/summary.json``
and ``EXP/train_summary.json``, the layout recipes/common.sh uses): one row per seed and
decoding system with its WER and 95% bootstrap CI, CER with and without spaces, then the
mean ± sample standard deviation over the seeds, and each seed's training cost. Nothing is
scored here that ``asr evaluate`` did not report. Exit 2 when a summary is missing or
unreadable (named).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

SYSTEMS = {
    "greedy": "greedy, no LM",
    "beam": "beam, no LM",
    "beam-lm": "beam + word 3-gram of the training transcripts (open vocabulary)",
    "beam-char-lm": "beam + character 6-gram of the training transcripts, lexicon-free (open vocabulary)",
    "beam-lm-numbers": "beam + word 3-gram of the training transcripts and the English number and date words "
                       "(open vocabulary, external text)",
    "beam-closed-vocab-lm": "beam + the task's closed vocabulary (lists test-only words)",
}


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: {path}: {e}") from None


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.2f} ± {100 * sd:.2f}"


def render(exps: list[Path], split: str) -> str:
    lines = [
        f"| system | run | {split} WER % (95% CI) | CER % | CER % no spaces |",
        "|---|---|---|---|---|",
    ]
    for system, name in SYSTEMS.items():
        rows = [(exp, exp / "eval" / system / split / "summary.json") for exp in exps]
        present = [(exp, p) for exp, p in rows if p.is_file()]
        if not present:
            continue
        if len(present) != len(rows):
            missing = [str(p) for _, p in rows if not p.is_file()]
            raise SystemExit(f"error: {missing[0]}: missing ({name} scored for some seeds only)")
        summaries = [(exp, _load(p)) for exp, p in present]
        for exp, s in summaries:
            lo, hi = s["wer_ci"]
            lines.append(
                f"| {name} | {exp.name} | {_pct(s['wer'])} ({100 * lo:.1f}–{100 * hi:.1f}) "
                f"| {_pct(s['cer'])} | {_pct(s.get('cer_no_space'))} |"
            )
        wer = [s["wer"] for _, s in summaries]
        cer = [s["cer"] for _, s in summaries]
        cer_ns = [s["cer_no_space"] for _, s in summaries if s.get("cer_no_space") is not None]
        lines.append(
            f"| **{name}** | **mean ± sd of {len(summaries)}** | **{_mean_sd(wer)}** "
            f"| {_mean_sd(cer)} | {_mean_sd(cer_ns)} |"
        )
    words = {
        _load(p)["words"]["reference"] for p in (exps[0] / "eval").glob(f"*/{split}/summary.json")
    }
    lines += ["", f"Reference words in {split}: {', '.join(map(str, sorted(words)))}.", ""]
    lines += [
        "| run | epochs | training wall s | training CPU s | best dev WER % (greedy) |",
        "|---|---|---|---|---|",
    ]
    for exp in exps:
        t = _load(exp / "train_summary.json")
        lines.append(
            f"| {exp.name} | {t.get('epochs')} | {t.get('wall_seconds')} | "
            f"{t.get('cpu_seconds', '–')} | {_pct(t.get('best_dev_wer'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exps", type=Path, nargs="+", help="experiment folders, one per seed")
    parser.add_argument("--split", default="test", help="split to tabulate (default test)")
    args = parser.parse_args(argv)
    print(render(args.exps, args.split), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
