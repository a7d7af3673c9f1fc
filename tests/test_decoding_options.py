"""DecodingOptions: one frozen set of decoding choices, its defaults written once, and the
command-line flags that build it (asr/commands/decoding_flags.py)."""

from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import pytest

from asr.cli import main
from asr.decoding import DecodingOptions

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_weights_resolution():
    o = DecodingOptions("beam", lm=Path("lm.bin"))
    assert o.lm == "lm.bin" and o.beam_size == 50 and o.lm_weight is None  # Path stored as str
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
        ({"decoder": "greedy", "beam_size": 4}, r"beam_size need\(s\) decoder='beam'"),
        ({"decoder": "viterbi"}, "decoder must be 'greedy' or 'beam'"),
        ({"decoder": "beam", "beam_size": 0}, "beam_size must be >= 1"),
        ({"decoder": "beam", "nbest": 3, "beam_size": 2}, "cannot exceed"),
    ],
)
def test_bad_options_are_refused_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodingOptions(**kwargs)


@pytest.mark.parametrize("command", ["evaluate", "transcribe"])
def test_beam_flags_without_the_beam_decoder_say_so(command, tmp_path, capsys):
    model, audio = tmp_path / "m.asr", tmp_path / "a.jsonl"
    model.write_bytes(b"x")
    audio.write_text("")
    argv = [command, str(model), str(audio), "--lm", str(model)]
    if command == "evaluate":
        argv += ["--out", str(tmp_path / "ev")]
        with pytest.raises(SystemExit):
            main(argv)
    else:
        assert main(argv) == 2
    assert "--lm needs --decoder beam" in capsys.readouterr().err


def test_lm_tune_refuses_a_zero_beam(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["lm", "tune", "m.asr", "dev.jsonl", "--lm", "lm.bin", "--beam-size", "0"])
    assert "--beam-size must be >= 1" in capsys.readouterr().err


def test_only_commands_import_argparse():
    modules = [*REPO.glob("asr/*.py"), *REPO.glob("asr/data/*.py"), *REPO.glob("asr/reports/*.py")]
    importing = sorted(
        p.name for p in modules if any(
            line.startswith(("import argparse", "from argparse")) for line in p.read_text().splitlines()
        )
    )
    assert importing == ["cli.py"]


def test_the_beam_defaults_are_written_once():
    # "beam_size: int = 50" in DecodingOptions and nowhere else in the library.
    out = subprocess.run(
        ["grep", "-rnE", r"(beam_size|beam_threshold)[^=]*=\s*(50|25\.0)\b", "asr"],
        capture_output=True, text=True, cwd=REPO,
    ).stdout.splitlines()
    assert [line.split(":")[0] for line in out] == ["asr/decoding.py", "asr/decoding.py"], out
