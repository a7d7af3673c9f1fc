"""``report.html``: the evaluation report as one self-contained page (inline CSS, plots as
PNG data URIs), so it can be mailed or archived and opened offline."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asr.evaluate.reports.analysis import Analysis, GroupStat
from asr.evaluate.reports.data import HTML_RUN_STAMP
from asr.evaluate.reports.formatting import (
    ci_header,
    ci_text,
    pct,
    settings_line,
    setup_rows,
    visible,
)
from asr.evaluate.reports.plots import plot_groups

HTML_FILE = "report.html"

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
    return html.escape(visible(str(x)), quote=True)


def _html_group_table(groups: Sequence[GroupStat], first: str, confidence: float) -> str:
    max_wer = max((g.wer or 0.0 for g in groups), default=0.0) or 1.0
    rows = []
    for g in groups:
        width = 0 if g.wer is None else round(60 * g.wer / max_wer)
        rows.append(
            f"<tr><td>{_e(g.name)}</td><td class=n>{g.utterances}</td>"
            f"<td class=n>{g.ref_words}</td><td class=n>{g.errors}</td>"
            f"<td class=n>{pct(g.wer)}</td><td class='n muted'>{ci_text(g.ci_low, g.ci_high)}</td>"
            f"<td><span class=bar style='width:{width}px'></span></td></tr>"
        )
    return (
        f"<table><tr><th>{_e(first)}</th><th class=n>utts</th><th class=n>words</th>"
        f"<th class=n>errors</th><th class=n>WER</th><th class=n>{ci_header(confidence)}</th><th></th></tr>"
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

    ci_label = ci_header(analysis.confidence)
    cards = "".join(
        [
            card("WER", pct(summary["wer"]), f"{ci_label} {ci_text(*summary['wer_ci'])}", main=True),
            card("CER", pct(summary["cer"]), f"{ci_label} {ci_text(*summary['cer_ci'])}", main=True),
            card(
                "Sentence error rate",
                pct(summary["ser"], 1),
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
    setup = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in setup_rows(summary))

    dur_plot = plot_groups(analysis.durations, "WER by utterance duration", horizontal=False)
    max_spk = 40
    spk_shown = analysis.speakers[:max_spk]
    spk_title = (
        "WER per speaker"
        if len(analysis.speakers) <= max_spk
        else f"WER per speaker ({max_spk} highest of {len(analysis.speakers)})"
    )
    spk_plot = plot_groups(spk_shown, spk_title, horizontal=True)

    def img(uri: str | None, alt: str) -> str:
        return f'<img src="{uri}" class="plot" alt="{_e(alt)}">' if uri else ""

    worst = []
    for r in analysis.worst:
        worst.append(
            f"<div class=utt><div class=meta><b>{_e(r['id'])}</b> · speaker {_e(r['speaker'])}"
            f" · {float(r['duration']):.2f} s · WER <b>{pct(r.get('wer'), 1)}</b> · "
            f"{r['errors']} error{'s' if r['errors'] != 1 else ''} (S {r['substitutions']}, D {r['deletions']}, "
            f"I {r['insertions']}){' · <b>hypothesis missing</b>' if r.get('missing') else ''}"
            f"</div>{_html_diff(r['ops'])}</div>"
        )
    worst_html = "".join(worst) or "<p class=muted>No utterance has a word error.</p>"
    norm = summary.get("normalization") or {}

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
{HTML_RUN_STAMP.format(_e(summary["run_id"])) if summary.get("run_id") else ""}
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_e(title)}</h1>
<p class=sub>{_e(summary["num_utterances"])} utterances · {w["reference"]} reference words ·
{_e(settings_line(summary.get("decoding") or {}))} · created {_e(summary.get("created", ""))}</p>
<div class=cards>{cards}</div>

<section><h2>Setup</h2><table class=kv>{setup}</table>
<p class=muted>Both references and hypotheses were normalised with
<b>{_e(norm.get("name", "?"))}</b> before scoring. Error rates are corpus-level (total edits /
total reference words or characters), not averages of per-utterance rates.</p></section>

<section><h2>WER by utterance duration</h2><div class=two>
<div>{_html_group_table(analysis.durations, "duration", analysis.confidence)}</div>
<div>{img(dur_plot, "WER by duration")}</div></div></section>

<section><h2>WER by speaker</h2><div class=two>
<div class=scroll>{_html_group_table(analysis.speakers, "speaker", analysis.confidence)}</div>
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
