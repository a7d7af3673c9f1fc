"""Training curves of one or more experiments: dev WER, dev CER and losses by epoch, as a PNG.

    python scripts/plot_training.py EXP_DIR [EXP_DIR ...] --out curves.png [--labels a,b]

Reads the CSV log `asr train` writes (``EXP_DIR/csv/version_*/metrics.csv``, the newest
version, as Lightning's CSVLogger lays it out) and draws one panel per quantity, one line per
experiment. Train loss is the mean of the steps logged in each epoch. TensorBoard shows the
same logs interactively (``tensorboard --logdir EXP_DIR/tb``); this is for READMEs and
reports, where a picture beats a table of 60 epochs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

from asr.files import atomic_write

PANELS = (("val_wer", "dev WER %", 100.0), ("val_cer", "dev CER %", 100.0),
          ("val/loss", "dev loss", 1.0), ("train/loss", "train loss (epoch mean)", 1.0))


def metrics_file(exp: Path) -> Path:
    versions = sorted((exp / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"{exp}: no csv/version_*/metrics.csv (is this an `asr train` experiment dir?)")
    return versions[-1]


def epoch_curves(path: Path) -> dict[str, dict[int, float]]:
    """{metric: {epoch: value}}; metrics logged several times in an epoch are averaged."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    sums[key][epoch].append(float(value))
    return {k: {e: sum(v) / len(v) for e, v in by_epoch.items()} for k, by_epoch in sums.items()}


def plot(exps: list[Path], labels: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [epoch_curves(metrics_file(e)) for e in exps]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    for ax, (key, title, scale) in zip(axes.flat, PANELS):
        for label, c in zip(labels, curves):
            points = sorted(c.get(key, {}).items())
            if points:
                ax.plot([e + 1 for e, _ in points], [v * scale for _, v in points], marker=".", label=label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0][0].legend()
    fig.tight_layout()
    # format from the name's suffix, as savefig(path) would pick it
    atomic_write(out, lambda f: fig.savefig(f, format=out.suffix.lstrip(".") or None, dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("exps", nargs="+", type=Path, help="experiment directories written by `asr train`")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--labels", help="comma-separated legend labels (default: the directory names)")
    args = ap.parse_args(argv)
    labels = args.labels.split(",") if args.labels else [e.name for e in args.exps]
    if len(labels) != len(args.exps):
        ap.error(f"{len(labels)} labels for {len(args.exps)} experiments")
    try:
        plot(args.exps, labels, args.out)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
