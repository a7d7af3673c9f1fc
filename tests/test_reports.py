"""asr.evaluate.reports / asr.evaluate.evaluation / asr.evaluate.compare (and their commands): evaluation directories,
hypothesis files, comparison, HTML self-containment, plots, and the transcript writers
(asr.infer.transcripts)."""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jiwer
import pytest

from asr.cli import main
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.decode.decoding import DecodingOptions
from asr.evaluate.compare import CompareError, compare_reports
from asr.evaluate.evaluation import (
    HypothesisFileError,
    HypothesisWarning,
    MissingHypothesesError,
    evaluate,
    read_hypotheses,
)
from asr.evaluate.reports.analysis import GroupStat, analyse
from asr.evaluate.reports.data import ReportError, read_report
from asr.evaluate.reports.plots import group_figure
from asr.files import sha256_digest as package_sha256
from asr.infer.transcription import TranscriptionResult
from asr.infer.transcripts import WRITERS, format_timestamp, group_cues

TEXTS = {
    "u1": ("the cat sat on the mat", "s1", 2.5),
    "u2": ("hello world", "s1", 0.8),
    "u3": ("one two three four", "s2", 6.0),
    "u4": ("don't stop me now", "s2", 12.0),
    "u5": ("yes no yes no", "s3", 1.5),
}
HYPS = {
    "u1": "The cat SIT on mat.",
    "u2": "hello, there world",
    "u3": "one two tree four five",
    "u4": "Don\u2019t stop me now!",  # curly apostrophe and punctuation: correct after normalising
    "u5": "",
}


def _utts() -> list[Utterance]:
    return [Utterance(k, f"/nonexistent/{k}.wav", d, t, s, 16000) for k, (t, s, d) in TEXTS.items()]


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "test.jsonl"
    write_manifest(path, _utts())
    return path


def _write_jsonl(path: Path, hyps: dict[str, str], blank_lines: int = 0) -> Path:
    lines = [json.dumps({"id": k, "text": v}) for k, v in hyps.items()]
    path.write_text("\n".join(lines) + "\n" * (1 + blank_lines), encoding="utf-8")
    return path


def test_summary_matches_independent_jiwer(tmp_path: Path):
    summary = evaluate(_utts(), HYPS, tmp_path / "ev", {"decoder": "greedy"}, None, 0.05)
    on_disk = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert on_disk == summary
    recs = [json.loads(x) for x in (tmp_path / "ev" / "utterances.jsonl").read_text().splitlines()]
    refs = [r["reference"] for r in recs]
    hyps = [r["hypothesis"] for r in recs]
    assert summary["wer"] == pytest.approx(jiwer.wer(refs, hyps))
    assert summary["cer"] == pytest.approx(jiwer.cer(refs, hyps))
    # normalisation reached both sides: u4 differs only in case, apostrophe and punctuation
    u4 = next(r for r in recs if r["id"] == "u4")
    assert u4["errors"] == 0 and u4["hypothesis"] == "don't stop me now"
    w = summary["words"]
    assert (w["substitutions"], w["deletions"], w["insertions"]) == (2, 5, 2)
    assert w["reference"] == 20 and summary["num_utterances"] == 5
    assert summary["ser"] == pytest.approx(4 / 5)
    lo, hi = summary["wer_ci"]
    assert lo <= summary["wer"] <= hi
    assert summary["rtf"] == 0.05 and summary["decoding"] == {"decoder": "greedy"}
    assert summary["normalization"]["name"] == "asr.text.normalize_text"
    assert "apostrophe" in summary["normalization"]["description"]
    assert summary["hypotheses"] == {"missing": 0, "extra": 0}
    u1 = recs[0]
    assert set(u1) >= {
        "id",
        "speaker",
        "duration",
        "reference",
        "hypothesis",
        "ops",
        "errors",
        "wer",
    }
    assert {o["op"] for o in u1["ops"]} == {"equal", "substitute", "delete"}


def test_html_is_self_contained_with_inline_plots(tmp_path: Path):
    evaluate(
        _utts(),
        HYPS,
        tmp_path / "ev",
        {"decoder": "beam", "beam_size": 8},
        {"path": "/m/model.pt", "sha256": "0" * 64, "toolkit_version": "0.1.0"},
        None,
    )
    page = (tmp_path / "ev" / "report.html").read_text()
    assert not re.search(r"https?://", page)
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[^"'\s>]+\.(js|css|png|svg)""", page)
    assert page.count('<img src="data:image/png;base64,') == 2  # duration + speaker plots
    assert "<style>" in page and "class='tok sub'" in page and "class='tok del'" in page
    assert "u3" in page and "tree" in page  # worst utterance diff is shown
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "REF: the cat SAT on THE mat" in md
    assert "HYP: the cat SIT on *** mat" in md


def test_read_report_names_the_bad_file(tmp_path: Path):
    with pytest.raises(ReportError, match="no summary.json"):
        read_report(tmp_path)
    evaluate(_utts(), HYPS, tmp_path / "ev", {}, None, None)
    with open(tmp_path / "ev" / "utterances.jsonl", "a") as f:
        f.write('{"id": "x"}\n')
    with pytest.raises(ReportError, match=r"utterances.jsonl:6: record lacks"):
        read_report(tmp_path / "ev")


# ---- hypothesis files ----------------------------------------------------------------------


def test_read_hypotheses_kaldi_and_jsonl(tmp_path: Path):
    kaldi = tmp_path / "hyp.txt"
    kaldi.write_text("u1 the cat\n\nu2\n  \nu3 one  two\n", encoding="utf-8")
    h = read_hypotheses(kaldi)
    assert h.format == "kaldi" and h.empty_lines == 2
    assert h.texts == {"u1": "the cat", "u2": "", "u3": "one  two"}
    j = read_hypotheses(_write_jsonl(tmp_path / "hyp.jsonl", {"a": "x y", "b": ""}, 1))
    assert j.format == "jsonl" and j.texts == {"a": "x y", "b": ""} and j.empty_lines == 1


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("u1 a\nu2 b\nu1 c\n", r"hyp:3: duplicate id 'u1' \(first on line 1\)"),
        ('{"id": "u1", "text": "a"}\n{"id": "u1", "text": "b"}\n', r"hyp:2: duplicate id"),
        ('{"id": "u1", "text": "a"}\nu2 b\n', r"hyp:2: invalid JSON"),
        ('{"id": "u1"}\n', r"hyp:1: utterance u1: 'text' must be a string"),
        ('{"text": "a"}\n', r"hyp:1: 'id' must be a non-empty string"),
    ],
)
def test_read_hypotheses_errors(tmp_path: Path, content: str, match: str):
    path = tmp_path / "hyp"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(HypothesisFileError, match=match):
        read_hypotheses(path)


def test_missing_hypotheses_error_lists_examples_and_count(tmp_path: Path):
    hyps = {k: v for k, v in HYPS.items() if k not in ("u2", "u4")}
    with pytest.raises(MissingHypothesesError, match=r"2 of 5 .*\(u2, u4\).*--allow-missing"):
        evaluate(_utts(), hyps, tmp_path / "ev", {}, None, None)
    assert not (tmp_path / "ev").exists()


def test_allow_missing_scores_empty_and_counts(tmp_path: Path):
    hyps = {k: v for k, v in HYPS.items() if k != "u2"}
    with pytest.warns(HypothesisWarning, match=r"1 of 5 utterances have no hypothesis"):
        summary = evaluate(_utts(), hyps, tmp_path / "ev", {}, None, None, allow_missing=True)
    assert summary["hypotheses"]["missing"] == 1
    _, recs = read_report(tmp_path / "ev")
    u2 = next(r for r in recs if r["id"] == "u2")
    assert u2["missing"] and u2["hypothesis"] == "" and u2["deletions"] == 2


def test_extra_hypotheses_warn_with_count(tmp_path: Path):
    hyps = {**HYPS, "zz1": "a", "zz2": "b"}
    with pytest.warns(HypothesisWarning, match=r"2 hypotheses have ids that are not in the "):
        summary = evaluate(_utts(), hyps, tmp_path / "ev", {}, None, None)
    assert summary["hypotheses"]["extra"] == 2
    assert summary["num_utterances"] == 5


def test_cli_hyps_missing_is_an_error(tmp_path, manifest, capsys):
    hyp = _write_jsonl(tmp_path / "h.jsonl", {k: v for k, v in HYPS.items() if k != "u5"})
    rc = main(["evaluate", "--hyps", str(hyp), str(manifest), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 5 manifest utterances have no hypothesis (u5)" in err


def test_cli_hyps_allow_missing_extra_and_blank_lines(tmp_path, manifest, capsys):
    hyps = {k: v for k, v in HYPS.items() if k != "u5"} | {"extra1": "x"}
    hyp = _write_jsonl(tmp_path / "h.jsonl", hyps, blank_lines=2)
    out_dir = tmp_path / "ev"
    rc = main(
        [
            "evaluate",
            "--hyps",
            str(hyp),
            str(manifest),
            "--out",
            str(out_dir),
            "--allow-missing",
            "--resamples",
            "100",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "skipped 2 empty line(s)" in captured.err
    assert "1 hypotheses have ids that are not in the manifest" in captured.err
    assert "1 of 5 utterances have no hypothesis" in captured.err
    assert "1 scored as empty" in captured.out  # the count also reaches stdout
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["hypotheses"] == {
        "missing": 1,
        "extra": 1,
        "source": str(hyp),
        "format": "jsonl",
        "empty_lines": 2,
    }


def test_cli_hyps_duplicate_is_an_error(tmp_path, manifest, capsys):
    hyp = tmp_path / "h.txt"
    hyp.write_text("u1 a\nu1 b\n")
    rc = main(["evaluate", "--hyps", str(hyp), str(manifest), "--out", str(tmp_path / "ev")])
    assert rc == 2 and "h.txt:2: duplicate id 'u1'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--hyps", "{hyp}", "model.pt", "{man}"],  # two positionals with --hyps
        ["--hyps", "{hyp}", "{man}", "--decoder", "beam"],  # decoding options with --hyps
        ["{man}"],  # MODEL mode needs MODEL MANIFEST
        ["{man}", "{man}", "--lm-weight", "0.5"],  # beam option with greedy decoder
        ["{man}", "{man}", "--decoder", "beam", "--beam-size", "0"],
    ],
)
def test_cli_usage_errors(tmp_path, manifest, argv):
    hyp = _write_jsonl(tmp_path / "h.jsonl", HYPS)
    argv = [a.format(hyp=hyp, man=manifest) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(["evaluate", *argv, "--out", str(tmp_path / "ev")])
    assert e.value.code == 2



@pytest.mark.parametrize(
    "options, message",
    [
        (["--lm", "lm.arpa"], "--lm needs --decoder beam"),
        (["--lm", "lm.arpa", "--lm-weight", "1"], "--lm, --lm-weight need --decoder beam"),
    ],
)
def test_cli_beam_options_without_beam_say_so(tmp_path, manifest, capsys, options, message):
    with pytest.raises(SystemExit) as e:
        main(["evaluate", str(manifest), str(manifest), *options, "--out", str(tmp_path / "ev")])
    assert e.value.code == 2
    assert f"error: {message}" in capsys.readouterr().err

def _fake_inference(monkeypatch, result: Callable[[dict[str, Any]], tuple]) -> dict[str, Any]:
    """Replace asr.infer.inference by a module whose transcribe_manifest checks every call against
    the real function's signature (a renamed or removed parameter fails the test, as it would
    fail the real call) and returns ``result(arguments)``. Returns the recorded arguments:
    those the command passed, by parameter name."""
    from asr.infer.inference import transcribe_manifest as real

    signature = inspect.signature(real)
    calls: dict[str, Any] = {}

    def transcribe_manifest(*args: Any, **kwargs: Any) -> tuple:
        bound = signature.bind(*args, **kwargs)  # TypeError if the call does not fit
        calls.update(bound.arguments)
        return result(bound.arguments)

    fake = types.ModuleType("asr.infer.inference")
    fake.transcribe_manifest = transcribe_manifest
    monkeypatch.setitem(sys.modules, "asr.infer.inference", fake)
    return calls


def test_fake_inference_rejects_a_call_the_real_function_would_reject(monkeypatch):
    _fake_inference(monkeypatch, lambda a: ())
    with pytest.raises(TypeError):
        sys.modules["asr.infer.inference"].transcribe_manifest("m", "x.jsonl", no_such_option=1)


def test_cli_model_mode_calls_transcribe_manifest(tmp_path, manifest, monkeypatch, capsys):
    calls = _fake_inference(
        monkeypatch,
        lambda a: (dict(HYPS), 0.02, {"decoder": a["options"].decoder, "beam_size": 4}, {"name": "m"}),
    )
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    rc = main(
        [
            "evaluate",
            str(model),
            str(manifest),
            "--out",
            str(tmp_path / "ev"),
            "--decoder",
            "beam",
            "--beam-size",
            "4",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert calls == {
        "options": DecodingOptions("beam", beam_size=4),
        "device": "cpu",
        "devices": 1,
        "package_path": str(model),
        "manifest_path": str(manifest),
        "utterances": read_manifest(manifest),  # read once: the manifest may be a pipe
    }
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["model"]["sha256"] == package_sha256(model)
    assert summary["rtf"] == 0.02 and summary["decoding"]["beam_size"] == 4


def test_package_sha256_of_a_directory_sees_renames(tmp_path: Path):
    d = tmp_path / "pkg"
    d.mkdir()
    (d / "a").write_bytes(b"1")
    before = package_sha256(d)
    (d / "a").rename(d / "b")
    assert package_sha256(d) != before


# ---- compare -------------------------------------------------------------------------------


def test_compare_refuses_different_utterance_sets(tmp_path: Path, capsys):
    evaluate(_utts(), HYPS, tmp_path / "a", {}, None, None)
    with pytest.warns(HypothesisWarning, match="2 hypotheses"):
        evaluate(_utts()[:3], HYPS, tmp_path / "b", {}, None, None)
    with pytest.raises(CompareError, match=r"5 vs 3 ids; 2 only in .*a \(u4, u5\)"):
        compare_reports(tmp_path / "a", tmp_path / "b")
    rc = main(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert rc == 2 and "cannot compare" in capsys.readouterr().err


def test_compare_refuses_different_references(tmp_path: Path):
    evaluate(_utts(), HYPS, tmp_path / "a", {}, None, None)
    other = [
        Utterance(
            u.id,
            u.audio,
            u.duration,
            u.text + " extra" if u.id == "u2" else u.text,
            u.speaker,
            16000,
        )
        for u in _utts()
    ]
    evaluate(other, HYPS, tmp_path / "b", {}, None, None)
    with pytest.raises(
        CompareError, match=r"1 utterances have different references in the two reports \(u2\)"
    ):
        compare_reports(tmp_path / "a", tmp_path / "b")


def test_compare_paired_result_and_outputs(tmp_path: Path, capsys):
    evaluate(_utts(), HYPS, tmp_path / "a", {}, None, None)
    better = {**HYPS, "u3": "one two three four", "u5": "yes no yes no"}
    sb = evaluate(_utts(), better, tmp_path / "b", {}, None, None)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    r = compare_reports(tmp_path / "a", tmp_path / "b", num_resamples=200, seed=1)
    assert r["wer"]["rate_a"] == pytest.approx(sa["wer"])
    assert r["wer"]["rate_b"] == pytest.approx(sb["wer"])
    assert r["wer"]["delta"] < 0 and r["wer"]["p_b_better"] > 0.5
    assert r["utterances"] == {"b_better": 2, "a_better": 0, "same": 3}
    assert [d["id"] for d in r["largest_differences"]] == ["u5", "u3"]
    rc = main(
        [
            "compare",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "c"),
            "--resamples",
            "200",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "c" / "compare.json").read_text()) == json.loads(json.dumps(r))
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "| WER |" in md and "REF: yes no yes no" in md
    assert "P(B better)" in capsys.readouterr().out


# ---- transcript writers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (1.5, "00:00:01,500", "00:00:01.500"),
        (59.9996, "00:01:00,000", "00:01:00.000"),  # rounds up across the minute
        (3661.007, "01:01:01,007", "01:01:01.007"),
        (90000.0, "25:00:00,000", "25:00:00.000"),  # hours do not wrap at 24
    ],
)
def test_format_timestamp(seconds, srt, vtt):
    assert format_timestamp(seconds, ",") == srt
    assert format_timestamp(seconds, ".") == vtt


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf")])
def test_format_timestamp_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="finite, non-negative"):
        format_timestamp(bad)


def test_group_cues_respects_duration_chars_and_pauses():
    words = [(f"word{i:02d}", 0.5 * i, 0.5 * i + 0.4) for i in range(40)]
    cues = group_cues(words, max_duration=7.0, max_chars=42)
    assert " ".join(c.text for c in cues) == " ".join(w for w, _, _ in words)
    assert all(c.end - c.start <= 7.0 and len(c.text) <= 42 for c in cues)
    assert len(cues) == 7  # 6 words of 6 chars + spaces = 41 chars per cue
    paused = group_cues([("a", 0.0, 0.2), ("b", 0.3, 0.5), ("c", 3.0, 3.2)])
    assert [c.text for c in paused] == ["a b", "c"]
    long = group_cues([("x" * 50, 0.0, 1.0)])
    assert [c.text for c in long] == ["x" * 50]
    with pytest.raises(ValueError, match=r"word 1 'b': bad timing"):
        group_cues([("a", 0.0, 0.2), ("b", 0.5, 0.4)])


def _result(text: str, words: list[tuple[str, float, float]]) -> TranscriptionResult:
    return TranscriptionResult("/audio/x.wav", text, words)


def test_srt_and_vtt_files(tmp_path: Path):
    r = _result(
        "hello world again", [("hello", 0.12, 0.5), ("world", 0.6, 1.0), ("again", 65.0, 65.0)]
    )
    WRITERS["srt"](r, tmp_path / "x.srt")
    WRITERS["vtt"](r, tmp_path / "x.vtt")
    assert (tmp_path / "x.srt").read_text() == (
        "1\n00:00:00,120 --> 00:00:01,000\nhello world\n\n2\n00:01:05,000 --> 00:01:05,001\nagain\n"
    )
    assert (tmp_path / "x.vtt").read_text() == (
        "WEBVTT\n\n00:00:00.120 --> 00:00:01.000\nhello world\n\n"
        "00:01:05.000 --> 00:01:05.001\nagain\n"
    )


def test_txt_and_json_files_and_untimed_subtitles(tmp_path: Path):
    r = _result(" hi there", [("hi", 0.0, 0.4), ("there", 0.5, 1.25)])
    WRITERS["txt"](r, tmp_path / "x.txt")
    WRITERS["json"](r, tmp_path / "x.json")
    assert (tmp_path / "x.txt").read_text() == "hi there\n"
    assert json.loads((tmp_path / "x.json").read_text()) == {
        "path": "/audio/x.wav",
        "text": " hi there",
        "words": [{"word": "hi", "start": 0.0, "end": 0.4}, {"word": "there", "start": 0.5, "end": 1.25}],
    }
    with pytest.raises(ValueError, match=r"/audio/x.wav: no word timings"):
        WRITERS["vtt"](_result("untimed", []), tmp_path / "y.vtt")
    WRITERS["srt"](_result("", []), tmp_path / "empty.srt")  # nothing said: an empty file
    assert (tmp_path / "empty.srt").read_text() == ""
    with pytest.raises(ValueError, match=r"/audio/x.wav: word 0 'a': bad timing"):
        WRITERS["srt"](_result("a", [("a", 1.0, 0.5)]), tmp_path / "bad.srt")


# ---- report details ------------------------------------------------------------------------


def test_group_ci_uses_the_headline_bootstrap(tmp_path: Path):
    """One speaker holds every utterance: its CI is the headline CI, and the Setup table
    states the one bootstrap setting used for both."""
    one = [Utterance(u.id, u.audio, u.duration, u.text, "spk", 16000) for u in _utts()]
    summary = evaluate(one, HYPS, tmp_path / "ev", {}, None, None, num_resamples=300, seed=7)
    assert summary["ci"]["num_resamples"] == 300 and summary["ci"]["seed"] == 7
    md = (tmp_path / "ev" / "report.md").read_text()
    lo, hi = summary["wer_ci"]
    headline = f"[{100 * lo:.2f}, {100 * hi:.2f}]"
    speaker_row = next(line for line in md.splitlines() if line.startswith("| spk |"))
    assert speaker_row.replace("\\", "").endswith(f"| {headline} |")  # report.md escapes [ ]
    assert "300 resamples, seed 7; the same for every interval" in md
    html_page = (tmp_path / "ev" / "report.html").read_text()
    assert html_page.count(headline) >= 2  # the WER card and the speaker table
    _, recs = read_report(tmp_path / "ev")
    a = analyse(recs, num_resamples=300, seed=7)
    assert (a.speakers[0].ci_low, a.speakers[0].ci_high) == (lo, hi)


@pytest.mark.parametrize("horizontal", [True, False])
def test_plots_never_show_negative_wer(horizontal: bool):
    import matplotlib.pyplot as plt

    perfect = [GroupStat(f"g{i}", 3, 4.0, 10, 0, 0.0, 0.0, 0.0) for i in range(3)]
    some = [GroupStat("a", 3, 4.0, 10, 1, 0.1, 0.0, 0.25), *perfect]
    for groups in (perfect, some):
        fig = group_figure(groups, "t", horizontal=horizontal)
        ax = fig.axes[0]
        low, high = ax.get_xlim() if horizontal else ax.get_ylim()
        plt.close(fig)
        assert low == 0 and high > 0
        if groups is some:
            assert high >= 25  # the whole error bar is visible


def test_cli_model_mode_exits_1_when_audio_could_not_be_read(tmp_path, manifest, monkeypatch, capsys):
    first = next(iter(HYPS))
    settings = {"decoder": "greedy", "failed": 1, "failed_items": {first: "x.wav: empty file"}}
    _fake_inference(monkeypatch, lambda a: (dict(HYPS, **{first: ""}), 0.02, settings, {"name": "m"}))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    rc = main(["evaluate", str(model), str(manifest), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 1 and f"{first}: x.wav: empty file" in err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["decoding"]["failed"] == 1  # the report is still written, and says so
