"""Markdown results table of a recipe's evaluations.

    python recipes/results_table.py EXP_DIR [--title TEXT] [--out FILE]

Reads ``EXP_DIR/eval/<system>/<split>/summary.json`` (written by ``asr evaluate``; the
layout recipes/common.sh uses) and ``EXP_DIR/train_summary.json`` (``asr train``), and
writes one row per decoding system with WER and CER per split, the real-time factor, and
the command that produced each number (``command.txt`` beside the summary, when present).
Nothing is computed here that ``asr evaluate`` did not already report.

Exit status 1 when there is no evaluation to tabulate or a summary cannot be read (the
table of the readable ones is still written).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from asr.files import atomic_write_text

# Rows and columns in this order; anything else found is appended alphabetically.
SYSTEM_ORDER = ("greedy", "beam", "beam-lm", "beam-lm-chars", "beam-char-lm", "beam-lm-numbers")
SPLIT_ORDER = ("dev", "test")
SYSTEM_NAMES = {"greedy": "greedy", "beam": "beam", "beam-lm": "beam + 3-gram LM",
                "beam-lm-chars": "beam + 3-gram LM, character head alone",
                "beam-char-lm": "beam + character 6-gram LM, lexicon-free",
                "beam-lm-numbers": "beam + 3-gram LM with number and date words"}


class ResultsError(ValueError):
    """An evaluation summary that cannot be read (message names the file)."""


def _order(names: set[str], preferred: tuple[str, ...]) -> list[str]:
    return [n for n in preferred if n in names] + sorted(names - set(preferred))


def read_summary(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: cannot read evaluation summary: {e}") from e
    for key in ("wer", "cer", "num_utterances"):
        if key not in data:
            raise ResultsError(f"{path}: not an asr evaluate summary (no {key!r})")
    return data


def collect(exp_dir: Path) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str]]:
    """{system: {split: summary}} under ``exp_dir/eval``, and the errors met."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    errors = []
    for path in sorted((exp_dir / "eval").glob("*/*/summary.json")):
        system, split = path.parent.parent.name, path.parent.name
        try:
            summary = read_summary(path)
        except ResultsError as e:
            errors.append(str(e))
            continue
        cmd = path.parent / "command.txt"
        summary["_command"] = cmd.read_text(encoding="utf-8").strip() if cmd.is_file() else None
        results.setdefault(system, {})[split] = summary
    return results, errors


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _ci(s: dict[str, Any]) -> str:
    lo, hi = s.get("wer_ci") or (None, None)
    return "" if lo is None else f" ({100 * lo:.1f}–{100 * hi:.1f})"


def _decoding(s: dict[str, Any]) -> str:
    """Short description of the decoder settings recorded in the summary."""
    d = s.get("decoding") or {}
    keys = ("beam_size", "lm_weight", "word_score")
    parts = [f"{k}={d[k]}" for k in keys if d.get(k) is not None]
    return ", ".join(parts)


def render(results: dict[str, dict[str, dict[str, Any]]], train: dict[str, Any] | None,
           title: str) -> str:
    """The Markdown text: a WER/CER table, then how each row was produced."""
    systems = _order(set(results), SYSTEM_ORDER)
    splits = _order({sp for r in results.values() for sp in r}, SPLIT_ORDER)
    lines = [f"### {title}", ""]
    head = ["decoder"]
    for sp in splits:
        head += [f"{sp} WER % (95% CI)", f"{sp} CER %", f"{sp} CER % no spaces"]
    head += ["RTF"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for system in systems:
        row = [SYSTEM_NAMES.get(system, system)]
        for sp in splits:
            s = results[system].get(sp)
            row += (["–"] * 3 if s is None
                    else [_pct(s["wer"]) + _ci(s), _pct(s["cer"]), _pct(s.get("cer_no_space"))])
        # RTF of the last split present (test when there is one): wall time / audio time.
        last = next((results[system][sp] for sp in reversed(splits) if sp in results[system]), {})
        rtf = last.get("rtf")
        row.append("–" if rtf is None else f"{rtf:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    any_s = next(iter(next(iter(results.values())).values()))
    dec = any_s.get("decoding") or {}
    threads = dec.get("threads")
    lines.append(
        "Utterances: " + ", ".join(
            f"{sp} {next(r[sp] for r in results.values() if sp in r)['num_utterances']}"
            for sp in splits)
        + f". RTF = decoding wall time / audio duration on {dec.get('device', '?')}"
        + (f" with {threads} thread(s)" if threads else "")
        + f" ({platform.machine()}), from summary.json. CER counts the spaces between words"
        + " (ESPnet's convention); 'no spaces' removes them from both sides first"
        + " (deepspeech.pytorch's)."
    )
    if train:
        lines.append(
            f"Training: {train.get('parameters', 0) / 1e6:.2f} M parameters, "
            f"{train.get('epochs')} epochs / {train.get('steps')} steps in "
            f"{train.get('wall_seconds')} s wall, best dev WER (greedy, during training) "
            f"{_pct(train.get('best_dev_wer'))}%."
        )
    lines += ["", "Commands:", "", "```"]
    for system in systems:
        for sp in splits:
            s = results[system].get(sp)
            if s is None:
                continue
            settings = _decoding(s)
            comment = f"# {SYSTEM_NAMES.get(system, system)}, {sp}" + (f" ({settings})" if settings else "")
            lines.append(comment)
            lines.append(s["_command"] or "(command not recorded)")
    lines += ["```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("exp_dir", type=Path, help="experiment directory (holds eval/)")
    parser.add_argument("--title", default=None, help="table heading (default: the directory name)")
    parser.add_argument("--out", type=Path, default=None, help="write the table here too")
    args = parser.parse_args(argv)
    results, errors = collect(args.exp_dir)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not results:
        print(f"error: no {args.exp_dir}/eval/<system>/<split>/summary.json found", file=sys.stderr)
        return 1
    train = None
    ts = args.exp_dir / "train_summary.json"
    if ts.is_file():
        try:
            train = json.loads(ts.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            errors.append(f"{ts}: {e}")
            print(f"error: {ts}: {e}", file=sys.stderr)
    text = render(results, train, args.title or args.exp_dir.name)
    if args.out is not None:
        atomic_write_text(args.out, text)
    else:
        print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
