"""Evaluation reports (summary.json, utterances.jsonl, report.md, report.html) and transcript
writers (txt/json/srt/vtt) kept in a registry keyed by format, as whisper does.

An evaluation directory holds:

- ``summary.json``: corpus WER/CER with bootstrap CIs, S/D/I/hits, counts, SER, decoding
  settings, model identity, real-time factor, the text normalisation applied;
- ``utterances.jsonl``: one scored utterance per line (id, speaker, duration, reference,
  hypothesis, word alignment ops, error counts, wer);
- ``report.md`` and ``report.html``: the same for people. The HTML is self-contained (inline
  CSS, plots as base64 PNG), so it can be mailed or archived and opened offline.

matplotlib is imported lazily: ``asr transcribe`` uses the writers here and should not pay
for it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from asr import __version__
from asr.files import atomic_write_text
from asr.metrics import CorpusScore, UtteranceScore, bootstrap_ci

SUMMARY_FILE = "summary.json"
UTTERANCES_FILE = "utterances.jsonl"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
SCHEMA = "asr.evaluation/1"

# Upper edges (seconds) of the duration buckets; the last bucket is open-ended.
DURATION_EDGES = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0)

# Keys every utterances.jsonl record must have for compare/report rendering.
_RECORD_KEYS = (
    "id",
    "speaker",
    "duration",
    "reference",
    "hypothesis",
    "ops",
    "errors",
    "ref_words",
    "char_errors",
    "ref_chars",
)


class ReportError(ValueError):
    """An evaluation directory or one of its files is missing or malformed (names the file)."""


class OutputLockedError(ReportError):
    """Another run is writing into the same output directory (the message names it)."""


LOCK_FILE = ".lock"  # in an output directory; flock()ed by the run writing there


@contextmanager
def output_lock(out_dir: str | Path, command: str | None = None) -> Iterator[Path]:
    """Hold ``out_dir`` for one writer: create it, flock ``out_dir/.lock`` (which records
    the holder's pid and command) and yield the directory.

    Two runs writing the same files (fixed names) would leave a directory mixing both
    runs' results, so a second writer fails at once instead of waiting. The lock is released
    by the kernel when the process dies, so a crashed run never leaves a stale lock (only,
    at worst, a stale ``.lock`` file that the next run simply locks); a finished run
    removes the file.

    Raises:
        ReportError: ``out_dir`` exists and is not a directory, or cannot be created.
        OutputLockedError: another process holds the lock.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"{out}: cannot create the output directory ({e.strerror or e})") from e
    try:
        import fcntl  # noqa: F401  (availability check; used in _acquire)
    except ImportError:  # not POSIX: no locking, as before
        yield out
        return
    lock = out / LOCK_FILE
    fd = _acquire(lock, out)
    try:
        what = command if command is not None else " ".join(sys.argv)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        yield out
    finally:
        # Unlink while still holding the lock; a run that opened the old file meanwhile
        # sees it was unlinked (see _acquire) and retries on a fresh one.
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the flock


def _acquire(lock: Path, out: Path) -> int:
    """flock ``lock`` (created if needed); the fd of a file still linked at ``lock``."""
    import fcntl

    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ReportError(f"{lock}: cannot create the lock file ({e.strerror or e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
            os.close(fd)
            raise OutputLockedError(
                f"{out}: another run is writing here ({holder}); wait for it to finish or "
                "choose another output directory"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # the holder we waited on removed it: lock the new file instead


# --------------------------------------------------------------------------------------------
# records and summary


def utterance_record(
    utt_id: str, speaker: str, duration: float, score: UtteranceScore, missing: bool = False
) -> dict[str, Any]:
    """One utterances.jsonl line. ``missing``: the hypothesis was absent and scored as empty."""
    return {
        "id": utt_id,
        "speaker": speaker,
        "duration": round(float(duration), 3),
        "reference": score.reference,
        "hypothesis": score.hypothesis,
        "wer": score.wer,  # None where the reference is empty
        "cer": score.cer,
        "errors": score.words.errors,
        "substitutions": score.words.substitutions,
        "deletions": score.words.deletions,
        "insertions": score.words.insertions,
        "hits": score.words.hits,
        "ref_words": score.words.ref_len,
        "hyp_words": score.words.hyp_len,
        "char_errors": score.chars.errors,
        "ref_chars": score.chars.ref_len,
        "missing": missing,
        "ops": score.ops,
    }


def build_summary(
    score: CorpusScore,
    *,
    durations: Sequence[float],
    settings: Mapping[str, Any],
    model_info: Mapping[str, Any] | None,
    rtf: float | None,
    normalization: Mapping[str, str],
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary.json content. ``durations``: (U,) seconds, same order as the score."""
    werr, wlen = score.word_arrays()
    cerr, clen = score.char_arrays()
    wer_ci = bootstrap_ci(werr, wlen, num_resamples, confidence, seed)
    cer_ci = bootstrap_ci(cerr, clen, num_resamples, confidence, seed)
    summary: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "toolkit": {"name": "asr", "version": __version__},
        "wer": score.wer,
        "wer_ci": [wer_ci.low, wer_ci.high],
        "cer": score.cer,
        "cer_ci": [cer_ci.low, cer_ci.high],
        "ci": {
            "method": "percentile bootstrap over utterances",
            "confidence": confidence,
            "num_resamples": num_resamples,
            "seed": seed,
        },
        "ser": score.sentence_error_rate,
        "num_utterances": score.num_utterances,
        "audio_seconds": round(float(sum(durations)), 3),
        "words": score.words.to_dict(),
        "chars": score.chars.to_dict(),
        "decoding": dict(settings),
        "model": dict(model_info) if model_info is not None else None,
        "rtf": rtf,
        "normalization": dict(normalization),
    }
    if extra:
        summary.update(extra)
    return summary


def _write_text_atomic(path: Path, text: str) -> None:
    # An interrupted run never leaves a half-written report behind (see asr.files).
    atomic_write_text(path, text)


def write_report(
    out_dir: str | Path,
    summary: Mapping[str, Any],
    records: Sequence[Mapping[str, Any]],
    worst: int = 20,
) -> dict[str, Path]:
    """Write summary.json, utterances.jsonl, report.md, report.html into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary": out / SUMMARY_FILE,
        "utterances": out / UTTERANCES_FILE,
        "markdown": out / MARKDOWN_FILE,
        "html": out / HTML_FILE,
    }
    _write_text_atomic(paths["summary"], json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write_text_atomic(
        paths["utterances"],
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
    )
    analysis = analyse(records, worst=worst)
    _write_text_atomic(paths["markdown"], render_markdown(summary, analysis))
    _write_text_atomic(paths["html"], render_html(summary, analysis))
    return paths


def read_report(report_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read (summary, records) from an evaluation directory; ReportError names the bad file/line."""
    d = Path(report_dir)
    spath, upath = d / SUMMARY_FILE, d / UTTERANCES_FILE
    if not d.is_dir():
        raise ReportError(f"{d}: not a directory")
    for p in (spath, upath):
        if not p.is_file():
            raise ReportError(f"{d}: not an evaluation directory (no {p.name})")
    try:
        summary = json.loads(spath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{spath}: invalid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ReportError(f"{spath}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(summary, dict) or "wer" not in summary:
        raise ReportError(f"{spath}: not an evaluation summary (no 'wer')")
    records: list[dict[str, Any]] = []
    from asr.data.manifest import utf8_lines

    for lineno, line in utf8_lines(upath, ReportError):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{upath}:{lineno}: invalid JSON: {e}") from e
        missing = [k for k in _RECORD_KEYS if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ReportError(f"{upath}:{lineno}: record lacks {', '.join(missing)}")
        records.append(rec)
    if not records:
        raise ReportError(f"{upath}: no utterances")
    return summary, records


# --------------------------------------------------------------------------------------------
# analysis shared by the Markdown and HTML renderers


@dataclass(frozen=True)
class GroupStat:
    """Corpus WER of a group of utterances (a speaker, a duration bucket)."""

    name: str
    utterances: int
    seconds: float
    ref_words: int
    errors: int
    wer: float | None  # None when the group has no reference words
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Analysis:
    records: Sequence[Mapping[str, Any]]
    speakers: list[GroupStat]  # highest WER first
    durations: list[GroupStat]  # in bucket order, empty buckets dropped
    substitutions: list[tuple[str, int]]  # ("ref → hyp", count), most frequent first
    deletions: list[tuple[str, int]]
    insertions: list[tuple[str, int]]
    worst: list[Mapping[str, Any]]  # most word errors first


def _group_stat(name: str, recs: Sequence[Mapping[str, Any]], seed: int) -> GroupStat:
    errors = np.array([r["errors"] for r in recs], dtype=np.int64)
    lens = np.array([r["ref_words"] for r in recs], dtype=np.int64)
    total = int(lens.sum())
    wer = float(errors.sum() / total) if total else None
    lo = hi = None
    if total:
        # 200 resamples is plenty for a plot's error bar and keeps many-speaker reports fast.
        ci = bootstrap_ci(errors, lens, num_resamples=200, seed=seed)
        lo, hi = ci.low, ci.high
    return GroupStat(
        name,
        len(recs),
        float(sum(r["duration"] for r in recs)),
        total,
        int(errors.sum()),
        wer,
        lo,
        hi,
    )


def duration_bucket(seconds: float, edges: Sequence[float] = DURATION_EDGES) -> int:
    """Index of the bucket holding ``seconds`` (bucket i covers [edges[i-1], edges[i]))."""
    for i, e in enumerate(edges):
        if seconds < e:
            return i
    return len(edges)


def bucket_label(i: int, edges: Sequence[float] = DURATION_EDGES) -> str:
    def f(x: float) -> str:
        return f"{x:g}"

    if i == 0:
        return f"< {f(edges[0])} s"
    if i == len(edges):
        return f"≥ {f(edges[-1])} s"
    return f"{f(edges[i - 1])}–{f(edges[i])} s"


def analyse(
    records: Sequence[Mapping[str, Any]], worst: int = 20, top: int = 15, seed: int = 0
) -> Analysis:
    """Per-speaker and per-duration WER, frequent error words, worst utterances."""
    by_spk: dict[str, list[Mapping[str, Any]]] = {}
    by_dur: dict[int, list[Mapping[str, Any]]] = {}
    subs: Counter[str] = Counter()
    dels: Counter[str] = Counter()
    ins: Counter[str] = Counter()
    for r in records:
        by_spk.setdefault(str(r["speaker"]), []).append(r)
        by_dur.setdefault(duration_bucket(float(r["duration"])), []).append(r)
        for op in r["ops"]:
            if op["op"] == "substitute":
                subs[f"{op['ref']} → {op['hyp']}"] += 1
            elif op["op"] == "delete":
                dels[str(op["ref"])] += 1
            elif op["op"] == "insert":
                ins[str(op["hyp"])] += 1
    speakers = [_group_stat(s, rs, seed) for s, rs in by_spk.items()]
    speakers.sort(key=lambda g: (-(g.wer if g.wer is not None else -1.0), g.name))
    durations = [_group_stat(bucket_label(i), by_dur[i], seed) for i in sorted(by_dur)]
    ranked = sorted(
        (r for r in records if r["errors"] > 0),
        key=lambda r: (-r["errors"], -(r.get("wer") or 0.0), r["id"]),
    )
    return Analysis(
        records,
        speakers,
        durations,
        subs.most_common(top),
        dels.most_common(top),
        ins.most_common(top),
        ranked[:worst],
    )


# --------------------------------------------------------------------------------------------
# formatting helpers


def _pct(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{100.0 * x:.{digits}f}%"


def _ci(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f"[{100 * lo:.2f}, {100 * hi:.2f}]"


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


def _settings_line(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "–"


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _setup_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    norm = summary.get("normalization") or {}
    rows = [
        ("Model", _model_line(summary.get("model"))),
        ("Decoding", _settings_line(summary.get("decoding") or {})),
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
    hyp = summary.get("hypotheses") or {}
    if hyp:
        rows.insert(3, ("Hypotheses", ", ".join(f"{k}: {v}" for k, v in hyp.items())))
    return rows


def _ci_method(summary: Mapping[str, Any]) -> str:
    ci = summary.get("ci") or {}
    if not ci:
        return "–"
    return (
        f"{100 * ci['confidence']:g}% {ci['method']}, {ci['num_resamples']} resamples, "
        f"seed {ci['seed']}"
    )


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


# --------------------------------------------------------------------------------------------
# Markdown


# Characters that Markdown (or the HTML it may embed, or GitHub's $math$) would interpret.
# Ids, speaker names and paths come from users' files, so report.md shows them literally.
_MD_SPECIAL = {c: "\\" + c for c in "\\`*_[]|$"} | {"<": "&lt;", ">": "&gt;", "&": "&amp;"}


def _md_escape(s: str) -> str:
    return "".join(_MD_SPECIAL.get(c, c) for c in s)


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: set[int]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(_md_escape(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _group_rows(groups: Sequence[GroupStat]) -> list[list[str]]:
    return [
        [
            g.name,
            str(g.utterances),
            f"{g.seconds / 60:.1f}",
            str(g.ref_words),
            str(g.errors),
            _pct(g.wer),
            _ci(g.ci_low, g.ci_high),
        ]
        for g in groups
    ]


_GROUP_HEADERS = ["", "utts", "min", "words", "errors", "WER", "95% CI"]


def render_markdown(summary: Mapping[str, Any], analysis: Analysis) -> str:
    w = summary["words"]
    out = [
        "# ASR evaluation report",
        "",
        f"**WER {_pct(summary['wer'])}** {_ci(*summary['wer_ci'])} · "
        f"**CER {_pct(summary['cer'])}** {_ci(*summary['cer_ci'])} · "
        f"SER {_pct(summary['ser'])} · {summary['num_utterances']} utterances, "
        f"{w['reference']} reference words",
        "",
        f"Word errors: {w['substitutions']} substitutions, {w['deletions']} deletions, "
        f"{w['insertions']} insertions ({w['hits']} correct).",
        "",
        "## Setup",
        "",
        _md_table(["", ""], _setup_rows(summary), set()),
        "",
        "## WER by utterance duration",
        "",
        _md_table(
            ["duration", *_GROUP_HEADERS[1:]], _group_rows(analysis.durations), {1, 2, 3, 4, 5}
        ),
        "",
        "## WER by speaker (highest first)",
        "",
        _md_table(
            ["speaker", *_GROUP_HEADERS[1:]], _group_rows(analysis.speakers), {1, 2, 3, 4, 5}
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
            f"**{_md_escape(str(r['id']))}** · speaker {_md_escape(str(r['speaker']))} · "
            f"{r['duration']:.2f} s · "
            f"WER {_pct(r.get('wer'))} · S={r['substitutions']} D={r['deletions']} "
            f"I={r['insertions']}",
            "",
            "```",
            f"REF: {ref}",
            f"HYP: {hyp}",
            "```",
            "",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2933;
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1160px;margin:0 auto;padding:28px 24px 48px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 12px}
h3{font-size:14px;margin:0 0 8px;color:#52606d;text-transform:uppercase;letter-spacing:.04em}
.sub{color:#616e7c;margin:0 0 20px}
section{background:#fff;border-radius:10px;padding:18px 22px;margin-top:18px;
  box-shadow:0 1px 3px rgba(15,23,42,.08)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:14px}
.card{background:#fff;border-radius:10px;padding:14px 18px;box-shadow:0 1px 3px rgba(15,23,42,.08)}
.card .k{color:#616e7c;font-size:13px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:30px;font-weight:650;margin-top:2px}
.card .d{color:#7b8794;font-size:13px}
.card.main{border-top:4px solid #2563eb}
table{border-collapse:collapse;width:100%;font-size:14px}
th{text-align:left;font-weight:600;color:#52606d;border-bottom:2px solid #e4e7eb;padding:5px 8px}
td{border-bottom:1px solid #eef0f2;padding:4px 8px;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv td:first-child{color:#616e7c;white-space:nowrap;width:190px}
.two{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:22px;align-items:start}
.three{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:22px}
@media (max-width:900px){.two,.three{grid-template-columns:1fr}}
.scroll{max-height:560px;overflow:auto}
img.plot{width:100%;height:auto;display:block}
.bar{display:inline-block;height:8px;background:#93c5fd;border-radius:2px;vertical-align:middle}
.utt{border-top:1px solid #eef0f2;padding:12px 0}
.utt:first-of-type{border-top:none}
.meta{font-size:13px;color:#616e7c;margin-bottom:6px}
.meta b{color:#1f2933}
.diff{font:13.5px/1.25 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.tok{display:inline-flex;flex-direction:column;margin:0 3px 6px 0;padding:2px 4px;
  border-radius:4px;vertical-align:top}
.tok span{white-space:pre}
.tok .h{color:#52606d}
.tok.sub{background:#fde68a}
.tok.del{background:#fecaca}
.tok.del .r{text-decoration:line-through}
.tok.ins{background:#bfdbfe}
.tok .gap{color:#9aa5b1}
.lab{display:inline-flex;flex-direction:column;margin-right:6px;color:#9aa5b1;font-size:11px;
  padding:3px 0;vertical-align:top;line-height:1.45}
.legend span{display:inline-block;padding:1px 8px;border-radius:4px;margin-right:8px;font-size:13px}
.legend .sub{background:#fde68a}.legend .del{background:#fecaca}.legend .ins{background:#bfdbfe}
.muted{color:#7b8794}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _mpl_escape(s: str) -> str:
    """User text shown literally by matplotlib: an escaped dollar never starts mathtext."""
    return str(s).replace("$", r"\$")


def _plot_groups(groups: Sequence[GroupStat], title: str, horizontal: bool) -> str | None:
    """Bar chart of WER per group with bootstrap error bars; a data: URI, or None if empty."""
    groups = [g for g in groups if g.wer is not None]
    if not groups:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display here; must precede pyplot
    import matplotlib.pyplot as plt

    wer = np.array([100 * g.wer for g in groups])
    lo = np.array([100 * g.ci_low for g in groups])
    hi = np.array([100 * g.ci_high for g in groups])
    err = np.vstack([np.maximum(wer - lo, 0), np.maximum(hi - wer, 0)])
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
    else:
        fig, ax = plt.subplots(figsize=(5.6, 3.4))
        x = np.arange(len(groups))
        ax.bar(x, wer, yerr=err, color="#60a5fa", ecolor="#334e68", capsize=3)
        ax.set_xticks(x, labels, fontsize=9)
        for xi, g, top in zip(x, groups, hi, strict=True):
            ax.annotate(
                f"n={g.utterances}",
                (xi, top),
                ha="center",
                va="bottom",
                fontsize=8,
                color="#52606d",
                xytext=(0, 2),
                textcoords="offset points",
            )
        ax.set_ylabel("WER (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.12)
    ax.set_title(_mpl_escape(title), fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    uri = _png_data_uri(fig)
    plt.close(fig)
    return uri


def _html_group_table(groups: Sequence[GroupStat], first: str) -> str:
    max_wer = max((g.wer or 0.0 for g in groups), default=0.0) or 1.0
    rows = []
    for g in groups:
        width = 0 if g.wer is None else round(60 * g.wer / max_wer)
        rows.append(
            f"<tr><td>{_e(g.name)}</td><td class=n>{g.utterances}</td>"
            f"<td class=n>{g.ref_words}</td><td class=n>{g.errors}</td>"
            f"<td class=n>{_pct(g.wer)}</td><td class='n muted'>{_ci(g.ci_low, g.ci_high)}</td>"
            f"<td><span class=bar style='width:{width}px'></span></td></tr>"
        )
    return (
        f"<table><tr><th>{_e(first)}</th><th class=n>utts</th><th class=n>words</th>"
        "<th class=n>errors</th><th class=n>WER</th><th class=n>95% CI</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _html_counts(title: str, items: Sequence[tuple[str, int]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td class=n>{v}</td></tr>" for k, v in items)
    table = f"<table>{body}</table>" if items else "<p class=muted>none</p>"
    return f"<div><h3>{_e(title)}</h3>{table}</div>"


def _html_diff(ops: Sequence[Mapping[str, Any]]) -> str:
    cls = {"equal": "eq", "substitute": "sub", "delete": "del", "insert": "ins"}
    toks = ["<span class=lab><span>REF</span><span>HYP</span></span>"]
    for op in ops:
        r = "<span class=gap>·</span>" if op["ref"] is None else _e(op["ref"])
        h = "<span class=gap>·</span>" if op["hyp"] is None else _e(op["hyp"])
        toks.append(
            f"<span class='tok {cls[op['op']]}'><span class=r>{r}</span>"
            f"<span class=h>{h}</span></span>"
        )
    return "<div class=diff>" + "".join(toks) + "</div>"


def render_html(summary: Mapping[str, Any], analysis: Analysis) -> str:
    """A self-contained HTML page: no external resources, plots inline as PNG data URIs."""
    w, c = summary["words"], summary["chars"]
    model = summary.get("model")
    title = "ASR evaluation" + (f" · {Path(str(model['path'])).name}" if model else "")

    def card(k: str, v: str, d: str, main: bool = False) -> str:
        return (
            f"<div class='card{' main' if main else ''}'><div class=k>{_e(k)}</div>"
            f"<div class=v>{_e(v)}</div><div class=d>{_e(d)}</div></div>"
        )

    cards = "".join(
        [
            card("WER", _pct(summary["wer"]), f"95% CI {_ci(*summary['wer_ci'])}", main=True),
            card("CER", _pct(summary["cer"]), f"95% CI {_ci(*summary['cer_ci'])}", main=True),
            card(
                "Sentence error rate",
                _pct(summary["ser"], 1),
                f"{summary['num_utterances']} utterances",
            ),
            card(
                "Word errors",
                str(w["errors"]),
                f"S {w['substitutions']} · D {w['deletions']} · I {w['insertions']} "
                f"of {w['reference']} words",
            ),
            card(
                "Char errors",
                str(c["errors"]),
                f"S {c['substitutions']} · D {c['deletions']} · I {c['insertions']} "
                f"of {c['reference']} chars",
            ),
        ]
    )
    setup = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in _setup_rows(summary))

    dur_plot = _plot_groups(analysis.durations, "WER by utterance duration", horizontal=False)
    max_spk = 40
    spk_shown = analysis.speakers[:max_spk]
    spk_title = (
        "WER per speaker"
        if len(analysis.speakers) <= max_spk
        else f"WER per speaker ({max_spk} highest of {len(analysis.speakers)})"
    )
    spk_plot = _plot_groups(spk_shown, spk_title, horizontal=True)

    def img(uri: str | None, alt: str) -> str:
        return f'<img src="{uri}" class="plot" alt="{_e(alt)}">' if uri else ""

    worst = []
    for r in analysis.worst:
        worst.append(
            f"<div class=utt><div class=meta><b>{_e(r['id'])}</b> · speaker {_e(r['speaker'])}"
            f" · {float(r['duration']):.2f} s · WER <b>{_pct(r.get('wer'), 1)}</b> · "
            f"{r['errors']} error{'s' if r['errors'] != 1 else ''} (S {r['substitutions']}, D {r['deletions']}, "
            f"I {r['insertions']}){' · <b>hypothesis missing</b>' if r.get('missing') else ''}"
            f"</div>{_html_diff(r['ops'])}</div>"
        )
    worst_html = "".join(worst) or "<p class=muted>No utterance has a word error.</p>"
    norm = summary.get("normalization") or {}

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<p class=sub>{_e(summary["num_utterances"])} utterances · {w["reference"]} reference words ·
{_e(_settings_line(summary.get("decoding") or {}))} · created {_e(summary.get("created", ""))}</p>
<div class=cards>{cards}</div>

<section><h2>Setup</h2><table class=kv>{setup}</table>
<p class=muted>Both references and hypotheses were normalised with
<b>{_e(norm.get("name", "?"))}</b> before scoring. Error rates are corpus-level (total edits /
total reference words or characters), not averages of per-utterance rates.</p></section>

<section><h2>WER by utterance duration</h2><div class=two>
<div>{_html_group_table(analysis.durations, "duration")}</div>
<div>{img(dur_plot, "WER by duration")}</div></div></section>

<section><h2>WER by speaker</h2><div class=two>
<div class=scroll>{_html_group_table(analysis.speakers, "speaker")}</div>
<div>{img(spk_plot, "WER per speaker")}</div></div></section>

<section><h2>Frequent errors</h2><div class=three>
{_html_counts("Substitutions (ref → hyp)", analysis.substitutions)}
{_html_counts("Deleted words", analysis.deletions)}
{_html_counts("Inserted words", analysis.insertions)}
</div></section>

<section><h2>Worst utterances</h2>
<p class=legend><span class=sub>substitution</span><span class=del>deletion</span>
<span class=ins>insertion</span><span class=muted>top: reference, bottom: hypothesis; ranked by
word errors</span></p>
{worst_html}</section>
</main></body></html>
"""


# --------------------------------------------------------------------------------------------
# transcript writers (asr transcribe --format ...)


@dataclass(frozen=True)
class Cue:
    """One subtitle cue: [start, end) seconds and its text."""

    start: float
    end: float
    text: str


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """HH:MM:SS<marker>mmm (SRT uses ',', WebVTT '.'); hours are not wrapped at 24."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"timestamp must be a finite, non-negative number of seconds ({seconds})")
    # Round once to whole milliseconds so 59.9996 s becomes 00:01:00,000, not 00:00:59,1000.
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal_marker}{ms:03d}"


def group_cues(
    words: Sequence[tuple[str, float, float]],
    max_duration: float = 7.0,
    max_chars: int = 42,
    max_gap: float = 1.5,
) -> list[Cue]:
    """Group timed words into subtitle cues of at most ``max_duration`` seconds and
    ``max_chars`` characters; a pause longer than ``max_gap`` also starts a new cue.

    A single word that alone exceeds the limits gets a cue of its own.
    """
    cues: list[Cue] = []
    cur: list[tuple[str, float, float]] = []
    for i, (word, start, end) in enumerate(words):
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise ValueError(f"word {i} {word!r}: bad timing start={start} end={end}")
        if cur:
            text_len = len(" ".join(w for w, _, _ in cur)) + 1 + len(word)
            if (
                end - cur[0][1] > max_duration
                or text_len > max_chars
                or start - cur[-1][2] > max_gap
            ):
                cues.append(Cue(cur[0][1], cur[-1][2], " ".join(w for w, _, _ in cur)))
                cur = []
        cur.append((word, start, end))
    if cur:
        cues.append(Cue(cur[0][1], cur[-1][2], " ".join(w for w, _, _ in cur)))
    return cues


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _result_cues(result: Any) -> list[Cue]:
    words = list(getattr(result, "words", None) or [])
    try:
        if words:
            return group_cues([(str(w), float(s), float(e)) for w, s, e in words])
        segments = list(getattr(result, "segments", None) or [])
        if segments:
            return [
                Cue(float(_get(s, "start")), float(_get(s, "end")), str(_get(s, "text")).strip())
                for s in segments
            ]
    except ValueError as e:
        raise ValueError(f"{result.path}: {e}") from e
    if str(result.text).strip():
        raise ValueError(f"{result.path}: no word or segment timings; cannot write subtitles")
    return []


def write_txt(result: Any, out_path: str | Path) -> None:
    Path(out_path).write_text(str(result.text).strip() + "\n", encoding="utf-8")


def write_json(result: Any, out_path: str | Path) -> None:
    doc: dict[str, Any] = {
        "path": str(result.path),
        "text": str(result.text),
        "words": [
            {"word": w, "start": round(float(s), 3), "end": round(float(e), 3)}
            for w, s, e in (getattr(result, "words", None) or [])
        ],
    }
    segments = getattr(result, "segments", None)
    if segments:
        doc["segments"] = [
            {
                "start": round(float(_get(s, "start")), 3),
                "end": round(float(_get(s, "end")), 3),
                "text": str(_get(s, "text")),
            }
            for s in segments
        ]
    Path(out_path).write_text(
        json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )


def _cue_end(cue: Cue) -> float:
    # Players drop zero-length cues; a one-frame word still deserves to be seen.
    return max(cue.end, cue.start + 0.001)


def write_srt(result: Any, out_path: str | Path) -> None:
    blocks = [
        f"{i}\n{format_timestamp(c.start, ',')} --> {format_timestamp(_cue_end(c), ',')}\n{c.text}\n"
        for i, c in enumerate(_result_cues(result), 1)
    ]
    Path(out_path).write_text("\n".join(blocks), encoding="utf-8")


def write_vtt(result: Any, out_path: str | Path) -> None:
    blocks = ["WEBVTT\n"] + [
        f"{format_timestamp(c.start, '.')} --> {format_timestamp(_cue_end(c), '.')}\n{c.text}\n"
        for c in _result_cues(result)
    ]
    Path(out_path).write_text("\n".join(blocks), encoding="utf-8")


# format -> writer(result, out_path); result has .path, .text, .words [(word, start_s, end_s)]
# and optionally .segments (objects or dicts with start, end, text).
WRITERS: dict[str, Callable[[Any, str | Path], None]] = {
    "txt": write_txt,
    "json": write_json,
    "srt": write_srt,
    "vtt": write_vtt,
}
