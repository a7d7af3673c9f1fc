"""DecodingOptions: one frozen set of decoding choices with its defaults written once, the
command-line flags that build it (asr/commands/decoding_flags.py) and asr.transcribe's
decoding keywords."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import pytest

from asr.cli import _parse, build_parser, main
from asr.commands.decoding_flags import check_decoding_flags, decoding_options
from asr.decode.decoding import DecodingOptions

REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str]):
    return _parse(build_parser(argv), argv)


def test_defaults_and_weights_resolution():
    o = DecodingOptions("beam", lm=Path("lm.bin"))
    assert o.lm == "lm.bin" and o.beam_size == 50 and o.lm_weight is None  # Path stored as str
    assert DecodingOptions().decoder == "greedy"
    assert o.with_weights().lm_weight == DecodingOptions.DEFAULT_LM_WEIGHT
    tuned = {"lm_weight": 0.3, "word_score": 1.0}
    assert (o.with_weights(tuned).lm_weight, o.with_weights(tuned).word_score) == (0.3, 1.0)
    explicit = DecodingOptions("beam", lm="lm.bin", lm_weight=0.1).with_weights(tuned)
    assert (explicit.lm_weight, explicit.word_score) == (0.1, 1.0)  # given beats tuned
    assert pickle.loads(pickle.dumps(o)) == o  # travels to worker processes
    with pytest.raises(AttributeError):
        o.beam_size = 3  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decoder": "greedy", "lm": "x.bin"}, r"lm need\(s\) decoder='beam'"),
        ({"decoder": "greedy", "beam_size": 4, "lexicon": "l"}, r"beam_size, lexicon need\(s\)"),
        ({"decoder": "viterbi"}, "decoder must be 'greedy' or 'beam'"),
        ({"decoder": "beam", "beam_size": 0}, "beam_size must be >= 1"),
        ({"decoder": "beam", "beam_threshold": 0.0}, "beam_threshold must be > 0"),
        ({"decoder": "beam", "nbest": 3, "beam_size": 2}, "cannot exceed"),
    ],
)
def test_bad_options_are_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodingOptions(**kwargs)


def test_transcribe_and_evaluate_flags_map_onto_the_options():
    argv = ["--decoder", "beam", "--lm", "lm.bin", "--lexicon", "lex.txt", "--beam-size", "8",
            "--beam-threshold", "12.5", "--lm-weight", "0.7", "--word-score", "-1"]
    expected = DecodingOptions("beam", beam_size=8, beam_threshold=12.5, lm="lm.bin", lexicon="lex.txt",
                               lm_weight=0.7, word_score=-1.0)
    for command in (["transcribe", "m.asr", "a.wav"], ["evaluate", "m.asr", "dev.jsonl", "--out", "ev"]):
        args = _args([*command, *argv])
        assert check_decoding_flags(args) is None
        assert decoding_options(args) == expected
        # No flag: exactly the defaults (greedy; None weights, resolved later from tuned files).
        assert decoding_options(_args(command)) == DecodingOptions()


def test_lm_tune_flags_map_onto_beam_options_with_the_defaults():
    args = _args(["lm", "tune", "m.asr", "dev.jsonl", "--lm", "lm.bin"])
    assert decoding_options(args) == DecodingOptions("beam", lm="lm.bin")
    args = _args(["lm", "tune", "m.asr", "dev.jsonl", "--lm", "lm.bin", "--beam-size", "7",
                  "--beam-threshold", "9", "--lexicon", "lex.txt"])
    assert decoding_options(args) == DecodingOptions("beam", lm="lm.bin", beam_size=7, beam_threshold=9.0,
                                                     lexicon="lex.txt")


def test_help_quotes_the_defaults_of_decoding_options(capsys):
    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"beam width (default {DecodingOptions.beam_size})" in text
    assert f"(default {DecodingOptions.beam_threshold:g})" in text
    assert f"else {DecodingOptions.DEFAULT_LM_WEIGHT:g})" in text


@pytest.mark.parametrize("command", ["evaluate", "transcribe"])
def test_lm_without_the_beam_decoder_is_refused(command, tmp_path, capsys):
    model, audio = tmp_path / "m.asr", tmp_path / "a.jsonl"
    model.write_bytes(b"x")
    audio.write_text("")
    argv = [command, str(model), str(audio), "--lm", str(model), "--beam-threshold", "3"]
    if command == "evaluate":
        argv += ["--out", str(tmp_path / "ev")]
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    else:
        assert main(argv) == 2
    assert "error: --lm, --beam-threshold need --decoder beam" in capsys.readouterr().err


_COMMANDS = {"transcribe": ["transcribe", "m.asr", "a.wav", "--decoder", "beam"],
             "evaluate": ["evaluate", "m.asr", "dev.jsonl", "--out", "ev", "--decoder", "beam"],
             "lm tune": ["lm", "tune", "m.asr", "dev.jsonl", "--lm", "lm.bin"]}
_BAD_FLAGS = [(["--beam-size", "0"], "--beam-size must be >= 1 (is 0)"),
              (["--beam-size", "-3"], "--beam-size must be >= 1 (is -3)"),
              (["--beam-threshold", "0"], "--beam-threshold must be > 0 (is 0)"),
              (["--beam-threshold", "-2.5"], "--beam-threshold must be > 0 (is -2.5)"),
              (["--phone-weight", "1.5"], "--phone-weight must be in [0, 1] (is 1.5)"),
              (["--phone-weight", "-0.1"], "--phone-weight must be in [0, 1] (is -0.1)")]


@pytest.mark.parametrize(
    "command, bad, message",
    [(c, bad, m) for c in _COMMANDS for bad, m in _BAD_FLAGS
     if not (c == "lm tune" and bad[0] == "--phone-weight")],  # lm tune takes --phone-weights, a list
)
def test_each_bad_flag_gives_one_line_naming_the_flag(command, bad, message):
    # The rule is DecodingOptions' (its error names the field); the command names the flag.
    args = _args([*_COMMANDS[command], *bad])
    assert check_decoding_flags(args) == message
    field = bad[0][2:].replace("-", "_")
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        decoding_options(args)  # the same rule, worded for the API


def test_flag_errors_come_from_the_options_rules():
    # Each flag error is the options' own message with the field names turned into flags.
    from asr.decode.decoding import DecodingOptionError

    for kwargs in ({"beam_size": 0}, {"beam_threshold": -1.0}, {"phone_weight": 2.0}):
        with pytest.raises(DecodingOptionError) as e:
            DecodingOptions("beam", **kwargs)
        assert e.value.fields == tuple(kwargs) and str(e.value) == f"{next(iter(kwargs))} {e.value.problem}"
        assert pickle.loads(pickle.dumps(e.value)).fields == e.value.fields  # travels from workers
    assert check_decoding_flags(_args(["transcribe", "m.asr", "a.wav"])) is None  # greedy, no beam flag


def test_lm_tune_refuses_a_zero_beam(capsys):
    with pytest.raises(SystemExit):
        main(["lm", "tune", "m.asr", "dev.jsonl", "--lm", "lm.bin", "--beam-size", "0"])
    assert "--beam-size must be >= 1 (is 0)" in capsys.readouterr().err


def test_asr_transcribe_gathers_decoding_keywords(monkeypatch):
    import asr.infer.transcription

    seen = {}
    monkeypatch.setattr(asr.infer.transcription, "transcribe", lambda model, paths, options, **kw: seen.update(
        options=options, kw=kw))
    asr.transcribe("m.asr", ["a.wav"], decoder="beam", lm="lm.bin", beam_size=8, chunk_seconds=10.0)
    assert seen == {"options": DecodingOptions("beam", lm="lm.bin", beam_size=8), "kw": {"chunk_seconds": 10.0}}
    asr.transcribe("m.asr", ["a.wav"], DecodingOptions("beam"), nbest=1)
    assert seen["options"] == DecodingOptions("beam")
    with pytest.raises(ValueError, match="need"):
        asr.transcribe("m.asr", ["a.wav"], lm="lm.bin")  # greedy with an LM: refused, not ignored


def test_only_commands_and_cli_import_argparse():
    modules = [p for p in REPO.glob("asr/**/*.py") if "commands" not in p.parts]
    importing = sorted(str(p.relative_to(REPO)) for p in modules
                       if re.search(r"^(import argparse|from argparse)", p.read_text(), re.M))
    assert importing == ["asr/cli.py"]


def test_the_beam_defaults_are_written_once():
    # "beam_size: int = 50" in DecodingOptions and nowhere else in the library (flags,
    # functions and help texts read them from DecodingOptions).
    pattern = re.compile(r"(beam[_-]size|beam[_-]threshold|lm[_-]weight|word[_-]score)\b[^=\n]*[=:]\s*(50|25(\.0)?|0\.5)\b", re.I)
    hits = [f"{p.relative_to(REPO)}:{i}" for p in sorted(REPO.glob("asr/**/*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert [h.split(":")[0] for h in hits] == ["asr/decode/decoding.py"] * 3, hits
