"""Bar charts of WER per group (duration bucket, speaker) for report.html, as PNG data URIs.

matplotlib is imported lazily, only when a report is rendered.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from asr.evaluate.reports.analysis import GroupStat
from asr.evaluate.reports.formatting import visible


def _png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mpl_escape(s: str) -> str:
    """User text shown literally by matplotlib: an escaped dollar never starts mathtext, a
    control character is written out (it has no glyph)."""
    return visible(str(s)).replace("$", r"\$")


def group_figure(groups: Sequence[GroupStat], title: str, horizontal: bool) -> Any | None:
    """A matplotlib figure: WER (%) per group with bootstrap error bars, the WER axis starting
    at 0 (a rate is never negative, even where every bar is 0); None if no group has a WER."""
    groups = [g for g in groups if g.wer is not None]
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    wer = np.array([100 * (g.wer or 0.0) for g in groups])
    # A group with a WER but no interval (too few references to resample) gets a zero-width bar.
    lo = np.array([100 * (g.ci_low if g.ci_low is not None else g.wer or 0.0) for g in groups])
    hi = np.array([100 * (g.ci_high if g.ci_high is not None else g.wer or 0.0) for g in groups])
    err = np.vstack([np.maximum(wer - lo, 0), np.maximum(hi - wer, 0)])
    # All-zero bars would give matplotlib an empty data range; show 0-1% instead.
    top = float(hi.max()) if hi.max() > 0 else 1.0
    # "$" would start matplotlib mathtext (a parse error for "$x^2" aborts the whole report).
    labels = [_mpl_escape(g.name) for g in groups]
    if horizontal:
        fig, ax = plt.subplots(figsize=(5.6, max(1.8, 0.26 * len(groups) + 0.9)))
        y = np.arange(len(groups))
        ax.barh(y, wer, height=0.7, xerr=err, color="#60a5fa", ecolor="#334e68", capsize=2)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("WER (%)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(0, top * 1.05)
    else:
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        x = np.arange(len(groups))
        ax.bar(x, wer, yerr=err, color="#60a5fa", ecolor="#334e68", capsize=3)
        ax.set_xticks(x, labels, fontsize=9)
        for xi, g, bar_top in zip(x, groups, hi, strict=True):
            ax.annotate(
                f"n={g.utterances}",
                (xi, bar_top),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#52606d",
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_ylabel("WER (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, top * 1.12)  # headroom for the n= labels
    ax.set_title(_mpl_escape(title), fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_groups(groups: Sequence[GroupStat], title: str, horizontal: bool) -> str | None:
    """:func:`group_figure` as a PNG data: URI, or None if there is nothing to plot."""
    fig = group_figure(groups, title, horizontal)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    uri = _png_data_uri(fig)
    plt.close(fig)
    return uri
