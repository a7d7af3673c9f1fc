"""Text formatting shared by the Markdown and HTML renderers: rates, intervals, the Setup table."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

_NAMED_CONTROLS = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Bidirectional embeddings, overrides and isolates: they reorder the text shown after them.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(s: str) -> str:
    """``s`` with control characters written out (``\\x1b``, ``\\r``, ``\\u202e``): ids and
    speaker names come from users' files, and a raw terminal escape, BEL or carriage return
    in a report would act on whoever views it (a terminal running ``cat report.md``) or hide
    text instead of showing what the file holds."""
    if s.isprintable():  # the common case, checked in C
        return s
    out = []
    for c in s:
        cat = unicodedata.category(c)
        if c in _NAMED_CONTROLS:
            out.append(_NAMED_CONTROLS[c])
        elif cat == "Cc":
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        elif cat in ("Zl", "Zp") or c in _BIDI_CONTROLS:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def pct(x: float | None, digits: int = 2) -> str:
    """A rate as a percentage; "–" where it is undefined (no reference words)."""
    return "–" if x is None else f"{100.0 * x:.{digits}f}%"


def ci_text(lo: float | None, hi: float | None) -> str:
    """An interval in percent, ``[lo, hi]``; "" where there is none."""
    return "" if lo is None or hi is None else f"[{100 * lo:.2f}, {100 * hi:.2f}]"


def ci_header(confidence: float) -> str:
    """Column title of a group table's interval column, e.g. "95% CI"."""
    return f"{100 * confidence:g}% CI"


def settings_line(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "–"


def _model_line(model: Mapping[str, Any] | None) -> str:
    if not model:
        return "external hypotheses (no model)"
    sha = str(model.get("sha256") or "")
    parts = [str(model.get("path", "?"))]
    if sha:
        parts.append(f"sha256 {sha[:12]}…")
    if model.get("toolkit_version"):
        parts.append(f"asr {model['toolkit_version']}")
    return ", ".join(parts)


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _ci_method(summary: Mapping[str, Any]) -> str:
    ci = summary.get("ci") or {}
    if not ci:
        return "–"
    # Stated once: write_report gives the group intervals the headline's bootstrap settings.
    return (
        f"{100 * ci['confidence']:g}% {ci['method']}, {ci['num_resamples']} resamples, "
        f"seed {ci['seed']}; the same for every interval in this report (overall, per "
        "duration, per speaker)"
    )


def setup_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the Setup table: model, decoding, audio, normalisation, CIs."""
    norm = summary.get("normalization") or {}
    rows = [
        ("Model", _model_line(summary.get("model"))),
        ("Decoding", settings_line(summary.get("decoding") or {})),
        ("Real-time factor", "–" if summary.get("rtf") is None else f"{summary['rtf']:.4f}"),
        (
            "Audio",
            f"{_hours(summary.get('audio_seconds', 0.0))} in "
            f"{summary['num_utterances']} utterances",
        ),
        ("Text normalisation", f"{norm.get('name', '?')}: {norm.get('description', '')}"),
        ("Confidence intervals", _ci_method(summary)),
        ("Toolkit", f"asr {summary.get('toolkit', {}).get('version', '?')}"),
    ]
    if summary.get("run_id"):
        rows.append(("Run", f"{summary['run_id']} (summary.json and both reports carry it)"))
    hyp = summary.get("hypotheses") or {}
    if hyp:
        rows.insert(3, ("Hypotheses", ", ".join(f"{k}: {v}" for k, v in hyp.items())))
    return rows
