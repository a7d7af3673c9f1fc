"""Architecture ablation: train variants of one config with the same budget, tabulate dev WER.

    python recipes/ablate.py CONFIG --out-dir DIR [--variants NAME,...] [--table FILE.md]
                             [--force] [key=value ...]

The base is CONFIG with the ``key=value`` options given here (e.g. the manifests and
``trainer.max_epochs=8 trainer.threads=1``); each other variant changes exactly one factor
of it to another value: cell rnn/gru/lstm, 1/2/3 layers, bidirectional on/off, SpecAugment
on/off (``--variants`` picks some, e.g. ``base,cell=gru``). Every variant is trained by
``asr train`` in its own experiment directory ``DIR/<variant>`` with the same options, so
all get the same number of epochs. The dev WER reported is the best greedy dev WER seen during training (from
``train_summary.json``); the dev CER is the one of that same epoch (from the CSV log).

A variant whose ``train_summary.json`` exists is not retrained (``--force`` retrains it), so
an interrupted ablation continues. A variant that fails is reported in the table and the
script exits with status 1 after running the others.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Variant:
    name: str  # directory name and table row
    overrides: tuple[str, ...]  # key=value on top of the base config
    what: str  # one-line description for the table


# The factors and the values each can take; a variant changes exactly one factor of the
# base config (CONFIG + the common key=value options) to one of its other values.
FACTORS: dict[str, tuple[Any, ...]] = {
    "model.cell": ("rnn", "gru", "lstm"),
    "model.num_layers": (1, 2, 3),
    "model.bidirectional": (True, False),
    "model.spec_augment_enabled": (True, False),
}


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def one_factor_variants(base_model: dict[str, Any]) -> list[Variant]:
    """``base`` plus every single-factor change of ``base_model`` (a resolved model section)."""
    variants = [Variant("base", (), "the base config")]
    for key, values in FACTORS.items():
        field = key.split(".", 1)[1]
        for value in values:
            if value != base_model[field]:
                override = f"{key}={_fmt(value)}"
                variants.append(Variant(f"{field}={_fmt(value)}", (override,), override))
    return variants


_EPOCH = re.compile(r"epoch(\d+)")  # epoch012-wer0.0133.ckpt -> 12


class AblationError(ValueError):
    """Bad command-line input (unknown variant, malformed override)."""


def select(variants: list[Variant], names: str | None) -> list[Variant]:
    """Comma-separated variant names -> those variants, in the given order (None: all)."""
    if not names:
        return variants
    by_name = {v.name: v for v in variants}
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise AblationError(f"unknown variant(s) {', '.join(unknown)}; this config has: {', '.join(by_name)}")
    return [by_name[n] for n in chosen]


def resolved(exp: Path) -> dict[str, Any]:
    """The config ``asr train`` saved (``exp/config.yaml``), as a dict."""
    import yaml

    return yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))


def dev_cer_at_best(exp: Path, best_checkpoint: str | None) -> float | None:
    """val_cer logged at the epoch of the best checkpoint, from the newest CSV log."""
    m = _EPOCH.search(Path(best_checkpoint or "").name)
    logs = sorted((exp / "csv").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if m is None or not logs:
        return None
    epoch = int(m.group(1))
    with open(logs[-1], newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("val_cer") and row.get("epoch") and int(row["epoch"]) == epoch:
                return float(row["val_cer"])
    return None


def train_variant(config: Path, variant: Variant, exp: Path, common: list[str], force: bool,
                  asr: list[str]) -> dict[str, Any]:
    """Train one variant (unless done); returns its row: summary fields or the failure."""
    summary_path = exp / "train_summary.json"
    if force and summary_path.exists():
        summary_path.unlink()
        for ckpt in (exp / "checkpoints").glob("*.ckpt"):
            ckpt.unlink()  # stale top-k checkpoints would outlive the new run
    cmd = [*asr, "train", str(config), f"exp_dir={exp}", *variant.overrides, *common]
    row: dict[str, Any] = {"variant": variant, "command": cmd}
    if not summary_path.exists():
        exp.mkdir(parents=True, exist_ok=True)
        print(f"== {variant.name}: {shlex.join(cmd)}", flush=True)
        start = time.time()
        with open(exp / "train.log", "w", encoding="utf-8") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0 or not summary_path.exists():
            row["error"] = f"asr train exited {proc.returncode} (see {exp / 'train.log'})"
            print(f"   failed: {row['error']}", flush=True)
            return row
        print(f"   done in {time.time() - start:.0f} s", flush=True)
    else:
        print(f"== {variant.name}: {summary_path} exists; not retrained", flush=True)
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        cfg = resolved(exp)
    except (OSError, json.JSONDecodeError, ValueError) as e:
        row["error"] = f"{exp}: cannot read the results: {e}"
        return row
    row.update(summary)
    row["model"] = cfg.get("model", {})
    row["dev_cer"] = dev_cer_at_best(exp, summary.get("best_checkpoint"))
    return row


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def render(rows: list[dict[str, Any]], config: Path, common: list[str], command: str) -> str:
    """Markdown table, one row per variant, sorted as run."""
    lines = [
        f"Base config `{config}` with `{' '.join(common) or '(no overrides)'}` for every variant.",
        "",
        "| variant | cell | layers | bidir. | SpecAug | params (M) | epochs | best dev WER % | dev CER % | train wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        v: Variant = r["variant"]
        if "error" in r:
            lines.append(f"| {v.name} | failed: {r['error']} |" + " |" * 8)
            continue
        m = r["model"]
        lines.append(
            f"| {v.name} | {m.get('cell')} | {m.get('num_layers')} | "
            f"{'yes' if m.get('bidirectional') else 'no'} | "
            f"{'on' if m.get('spec_augment_enabled') else 'off'} | "
            f"{r['parameters'] / 1e6:.2f} | {r['epochs']} | {_pct(r.get('best_dev_wer'))} | "
            f"{_pct(r.get('dev_cer'))} | {r['wall_seconds']:.0f} |"
        )
    lines += ["", "Reproduce:", "", "```", command, "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="variants: base, then one per other value of "
        + "; ".join(f"{k} {'/'.join(map(_fmt, v))}" for k, v in FACTORS.items()),
    )
    parser.add_argument("config", type=Path, help="base YAML config, e.g. conf/fsdd.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value for every variant (same budget)")
    parser.add_argument("--out-dir", type=Path, required=True, help="one experiment dir per variant under it")
    parser.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--table", type=Path, default=None, help="write the Markdown table here (default OUT_DIR/ablation.md)")
    parser.add_argument("--force", action="store_true", help="retrain variants that already have results")
    parser.add_argument("--asr", default="asr", help="the asr command (default: asr on PATH)")
    args = parser.parse_args(argv)
    from asr.config import ConfigError, load_config, to_dict

    try:
        base = to_dict(load_config(args.config, args.overrides))
        variants = select(one_factor_variants(base["model"]), args.variants)
    except (AblationError, ConfigError, ValueError) as e:
        parser.error(str(e))

    asr = shlex.split(args.asr)
    rows = [train_variant(args.config, v, args.out_dir / v.name, args.overrides, args.force, asr)
            for v in variants]
    command = shlex.join(["python", "recipes/ablate.py", *(argv if argv is not None else sys.argv[1:])])
    text = render(rows, args.config, args.overrides, command)
    table = args.table or args.out_dir / "ablation.md"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(text, encoding="utf-8")
    print(text)
    failed = [r["variant"].name for r in rows if "error" in r]
    if failed:
        print(f"{len(failed)} variant(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
