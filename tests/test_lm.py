"""`asr lm`: KenLM tool discovery, building LMs with lmplz/build_binary, weight tuning."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from ctc_frames import frames as ctc_frames

from asr.cli import main
from asr.data.manifest import Utterance, write_manifest
from asr.decode import lm as lm_mod
from asr.decode.beam import BeamSearchDecoder
from asr.decode.decoding import DecodingOptions
from asr.decode.lm import LMError, build_lm, find_kenlm_bin, tune_lm
from asr.decode.lm_files import LM_TUNE_SUFFIX, LM_VOCAB_SUFFIX, lm_vocabulary, load_tuned_weights
from asr.text import CharTokenizer

TOK = CharTokenizer("abcnostuy")


def _kenlm_bin():
    try:
        return find_kenlm_bin()
    except LMError:
        return None


KENLM_BIN = _kenlm_bin()
needs_kenlm = pytest.mark.skipif(
    KENLM_BIN is None, reason="KenLM lmplz/build_binary not built: run scripts/build_kenlm.sh"
)


def frames(spec, tok=TOK) -> torch.Tensor:
    return ctc_frames(spec, tok)


def fake_tools(d, names=("lmplz", "build_binary")):
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        p = d / n
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return d


# --------------------------------------------------------------------------------------------
# finding the tools


def test_find_kenlm_bin_honours_env(tmp_path, monkeypatch):
    d = fake_tools(tmp_path / "kenlm")
    monkeypatch.setenv("KENLM_BIN", str(d))
    assert find_kenlm_bin() == d


def test_find_kenlm_bin_env_without_tools_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KENLM_BIN", str(tmp_path))
    with pytest.raises(
        LMError, match=r"KENLM_BIN=.* lacks lmplz and build_binary.*build_kenlm\.sh"
    ):
        find_kenlm_bin()


def test_find_kenlm_bin_missing_everywhere_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.delenv("KENLM_BIN", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lm_mod, "_REPO_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(LMError, match=r"not found .*scripts/build_kenlm\.sh"):
        find_kenlm_bin()
    fake_tools(tmp_path / "tools" / "kenlm" / "bin")  # ./tools/kenlm/bin is the default place
    assert find_kenlm_bin() == tmp_path / "tools" / "kenlm" / "bin"


# --------------------------------------------------------------------------------------------
# building


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"order": 1, "out_path": "lm.arpa"}, ValueError, "order must be >= 2"),
        ({"order": 3, "out_path": "lm.txt"}, ValueError, r"must end in \.arpa or \.bin"),
        ({"order": 7, "out_path": "lm.arpa"}, ValueError, "order must be <= 6"),
        ({"order": 3, "out_path": "lm.arpa", "vocab_size": 5, "tokenizer": TOK}, ValueError,
         "a token-level LM keeps every token"),
    ],
)
def test_build_lm_rejects_bad_arguments(tmp_path, kwargs, exc, match):
    kwargs["out_path"] = tmp_path / kwargs["out_path"]
    with pytest.raises(exc, match=match):
        build_lm(["a b"], **kwargs)


def test_build_lm_rejects_text_without_words(tmp_path):
    src = tmp_path / "punct.txt"
    src.write_text("!!!\n\n -- ...\n", encoding="utf-8")
    with pytest.raises(LMError, match="punct.txt: no text left after normalisation"):
        build_lm(src, 3, tmp_path / "lm.arpa", kenlm_bin=fake_tools(tmp_path / "bin"))


@needs_kenlm
def test_build_arpa_from_text_file_normalises(tmp_path):
    src = tmp_path / "corpus.txt"
    src.write_text("The CAT sat on the mat.\n\n\u201cThe cat\u201d sat, ON it!\n", encoding="utf-8")
    out = tmp_path / "lm.arpa"
    info = build_lm(src, 3, out)
    assert info.path == out and info.order == 3
    # "the cat sat on the mat" + "the cat sat on it": the blank line is dropped.
    assert (info.sentences, info.words, info.vocabulary) == (2, 11, 6)
    assert (info.lines, info.text_vocabulary, info.oov_rate) == (3, 6, 0.0)  # no cap: no OOV
    assert "ngram 3=" in out.read_text(encoding="utf-8")
    assert sorted(lm_vocabulary(out)) == ["cat", "it", "mat", "on", "sat", "the"]


def test_token_sentence_spells_words_with_the_boundary_token():
    assert lm_mod.token_sentence("cat on", TOK) == "c a t | o n"
    assert lm_mod.token_sentence("cut xyz", TOK) is None  # "x", "z" are not tokens


def test_token_level_lm_of_text_the_tokenizer_cannot_spell_is_an_error(tmp_path):
    src = tmp_path / "greek.txt"
    src.write_text("the fox\nxyz\n", encoding="utf-8")
    with pytest.raises(LMError, match=r"greek.txt: no sentence the tokenizer can spell \(2 left out\)"):
        build_lm(src, 3, tmp_path / "lm.arpa", kenlm_bin=fake_tools(tmp_path / "bin"), tokenizer=TOK)


@needs_kenlm
def test_token_level_lm_is_lexicon_free_and_spells_unseen_words(tmp_path, caplog):
    src = tmp_path / "corpus.txt"
    src.write_text("cat on\ncot on\nthe fox\n", encoding="utf-8")  # "the fox": no "h", "e", "f", "x"
    out = tmp_path / "chars.arpa"
    with caplog.at_level("WARNING"):
        info = build_lm(src, 4, out, tokenizer=TOK)
    assert "1 of 3 sentences left out" in caplog.text
    assert (info.sentences, info.unspellable) == (2, 1)
    assert sorted(lm_vocabulary(out)) == sorted(["a", "c", "n", "o", "t", "|"])
    dec = BeamSearchDecoder(TOK, lm=str(out), lm_weight=0.5)
    assert dec.settings()["mode"] == "lexicon-free"
    # "can" was never in the text: a token LM still lets the search spell it.
    lp = frames(["-", "c", "a", "n", "-"])[None]
    assert dec(lp, torch.tensor([5]))[0][0].text == "can"


@needs_kenlm
def test_build_binary_from_manifest_writes_vocab_and_drops_stale_tuning(tmp_path):
    utts = [
        Utterance(f"u{i}", f"u{i}.wav", 1.0, text, "spk", 16000)
        for i, text in enumerate(["yes no yes", "no no yes", "yes yes"])
    ]
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, utts)
    out = tmp_path / "lm" / "yesno.bin"
    out.parent.mkdir()
    stale = tmp_path / "lm" / f"yesno.bin{LM_TUNE_SUFFIX}"
    stale.write_text("{}")
    info = build_lm(manifest, 2, out)
    assert out.read_bytes().startswith(b"mmap lm ")
    assert (tmp_path / "lm" / f"yesno.bin{LM_VOCAB_SUFFIX}").read_text().split() == ["yes", "no"]
    assert info.vocabulary == 2 and info.sentences == 3
    assert not stale.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".lm-")] == []


def test_vocabulary_limit_keeps_the_most_frequent_words_ties_alphabetical(caplog):
    from collections import Counter

    counts = Counter("b a c a b d".split())  # a 2, b 2, c 1, d 1
    with caplog.at_level("INFO", logger="asr.decode.lm"):
        assert lm_mod._vocabulary_limit(counts, 3) == ["a", "b", "c"]
    assert "capped at 3 of 4 words: OOV rate 16.67%" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="asr.decode.lm"):
        assert lm_mod._vocabulary_limit(counts, 4) is None  # no cap needed
    assert "all 4 words of the text fit the cap of 4 (OOV rate 0.00%)" in caplog.text
    assert lm_mod._vocabulary_limit(counts, None) is None


@needs_kenlm
def test_cli_build_from_texts_and_a_manifest_with_a_vocabulary_cap(tmp_path, capsys):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("The cat sat.\nthe dog sat\n", encoding="utf-8")
    b.write_text("the cat ran\nA bird flew\n", encoding="utf-8")
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, [Utterance("u1", "u1.wav", 1.0, "the cat", "spk", 16000)])
    out = tmp_path / "lm.arpa"
    argv = ["lm", "build", str(a), str(b), str(manifest), "--order", "2", "--out", str(out)]
    assert main([*argv, "--vocab-size", "3"]) == 0
    # the 4, cat 3, sat 2 (ran, dog, a, bird, flew: 1 each) are kept; the rest pruned.
    assert sorted(lm_vocabulary(out)) == ["cat", "sat", "the"]
    captured = capsys.readouterr()
    assert "trained on 5 sentences / 14 words" in captured.out
    err = captured.err
    assert "a.txt: 2 lines, 2 sentences after normalisation, 6 tokens" in err
    assert "train.jsonl: 1 lines, 1 sentences after normalisation, 2 tokens" in err
    assert "3 source(s), 5 lines, 5 sentences, 14 tokens, 8 distinct words" in err
    # 14 tokens, 9 of them the/cat/sat: 5 / 14 outside the cap.
    assert "capped at 3 of 8 words: OOV rate 35.71%" in err
    assert main(argv) == 0
    assert len(lm_vocabulary(out)) == 8


def test_build_lm_rejects_a_zero_vocabulary_cap(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        build_lm(["a b"], 2, tmp_path / "lm.arpa", vocab_size=0)


@needs_kenlm
def test_built_lm_changes_beam_decision(tmp_path):
    out = tmp_path / "lm.bin"
    build_lm(["the cat sat", "a cat sat on a mat", "the cat is on the mat"] * 3, 3, out)
    # Acoustically "cut" (0.5) beats "cat" (0.4); the LM has never seen "cut".
    lp = frames(["-", "c", {"u": 0.5, "a": 0.4}, "t", "-"]).unsqueeze(0)
    lens = torch.tensor([lp.shape[1]])
    assert BeamSearchDecoder(TOK)(lp, lens)[0][0].text == "cut"
    # The automatic lexicon only holds LM words spellable with TOK ("the", "mat", "is"
    # contain letters TOK lacks) so the LM's "cat" wins.
    dec = BeamSearchDecoder(TOK, lm=str(out), lm_weight=1.0)
    assert dec(lp, lens)[0][0].text == "cat"
    assert "the" in dec.skipped_words


@needs_kenlm
def test_cli_build(tmp_path, capsys):
    src = tmp_path / "t.txt"
    src.write_text("yes no\nno yes yes\n", encoding="utf-8")
    out = tmp_path / "lm.arpa"
    assert main(["lm", "build", str(src), "--order", "2", "--out", str(out)]) == 0
    assert out.is_file()
    assert "2 words in the vocabulary" in capsys.readouterr().out


@needs_kenlm
def test_cli_build_token_level_from_a_package(tmp_path, capsys):
    from tests.tiny_package import make_tiny_package

    src = tmp_path / "t.txt"
    src.write_text("yes no\nno yes yes\n", encoding="utf-8")
    out = tmp_path / "chars.arpa"
    argv = ["lm", "build", str(src), "--order", "4", "--out", str(out), "--tokens"]
    assert main([*argv, str(make_tiny_package(tmp_path))]) == 0
    # "y e s | n o" and "n o | y e s | y e s"
    assert "6 tokens in the vocabulary, trained on 2 sentences / 16 tokens" in capsys.readouterr().out
    assert sorted(lm_vocabulary(out)) == ["e", "n", "o", "s", "y", "|"]
    assert main([*argv, str(tmp_path / "nope.asr")]) == 1
    assert "nope.asr: no such model package" in capsys.readouterr().err


def test_cli_build_missing_file_fails(tmp_path, capsys):
    rc = main(["lm", "build", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "lm.arpa")])
    assert rc == 1
    assert "nope.txt" in capsys.readouterr().err


def test_cli_tune_missing_lm_fails(tmp_path, capsys):
    rc = main(["lm", "tune", "model.pt", "dev.jsonl", "--lm", str(tmp_path / "lm.bin")])
    assert rc == 1
    assert "language model not found" in capsys.readouterr().err


def test_cli_rejects_order_one(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["lm", "build", "t.txt", "--order", "1", "--out", str(tmp_path / "lm.arpa")])
    assert "order must be >= 2" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# tuning


def _arpa(path, probs: dict[str, float]) -> str:
    """A bigram ARPA file behaving as a unigram model with these log10 probabilities."""
    entries = {"<unk>": -2.0, "<s>": -99.0, "</s>": -0.5, **probs}
    bigrams = {w: p for w, p in entries.items() if w != "<s>"}
    lines = ["\\data\\", f"ngram 1={len(entries)}", f"ngram 2={len(bigrams)}", ""]
    lines += ["\\1-grams:"] + [f"{p}\t{w}\t0" for w, p in entries.items()] + [""]
    lines += ["\\2-grams:"] + [f"{p}\t<s> {w}" for w, p in bigrams.items()]
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


def _dev_set():
    # Two utterances where the acoustics prefer a non-word ("cut"/"nut") and the LM the truth.
    ems = [
        frames(["-", "c", {"u": 0.5, "a": 0.4}, "t", "-"]),
        frames(["n", {"u": 0.5, "o": 0.4}, "t", "|", "s", "o", "-"]),
        torch.zeros(0, len(TOK.tokens)),  # unreadable audio upstream: decodes to ""
    ]
    refs = ["Cat.", "not so", "cat"]
    return ems, refs


def test_tune_lm_finds_the_weight_that_fixes_errors(tmp_path):
    lm = _arpa(
        tmp_path / "lm.arpa", {"cat": -0.3, "not": -0.3, "so": -0.3, "cut": -4.0, "nut": -4.0}
    )
    ems, refs = _dev_set()
    res = tune_lm(
        ems, refs, TOK, lm, (0.0, 1.0), (0.0, 0.5), DecodingOptions("beam", beam_size=20), save=True
    )
    grid = {(g["lm_weight"], g["word_score"]): g["wer"] for g in res["grid"]}
    assert set(grid) == {(0.0, 0.0), (0.0, 0.5), (1.0, 0.0), (1.0, 0.5)}
    # 4 reference words; the empty third hypothesis always costs 1 deletion.
    assert grid[(0.0, 0.0)] == pytest.approx(3 / 4)  # cut, nut so, "" -> 2 subs + 1 del
    assert grid[(1.0, 0.0)] == pytest.approx(1 / 4)
    assert (res["lm_weight"], res["word_score"], res["wer"]) == (1.0, 0.0, pytest.approx(0.25))
    assert res["greedy_wer"] == pytest.approx(3 / 4)
    assert res["utterances"] == 3 and res["mode"] == "lexicon" and res["tuned"] is True
    saved = json.loads((tmp_path / f"lm.arpa{LM_TUNE_SUFFIX}").read_text())
    assert saved["lm_weight"] == 1.0 and len(saved["grid"]) == 4
    assert load_tuned_weights(lm) == {"lm_weight": 1.0, "word_score": 0.0}


def test_tune_lm_does_not_save_unless_asked(tmp_path):
    lm = _arpa(tmp_path / "lm.arpa", {"cat": -0.3, "not": -0.3, "so": -0.3})
    ems, refs = _dev_set()
    res = tune_lm(ems, refs, TOK, lm, (0.5,), (0.0,), DecodingOptions("beam", beam_size=5))
    assert len(res["grid"]) == 1 and "saved_to" not in res
    assert not os.path.exists(lm + LM_TUNE_SUFFIX)


def test_tune_lm_keeps_the_defaults_when_every_point_ties(tmp_path, caplog):
    # Clear acoustics the LM agrees with: every grid point decodes the dev set perfectly.
    lm = _arpa(tmp_path / "lm.arpa", {"cat": -0.3, "not": -0.3, "so": -0.3})
    ems = [frames(["-", "c", "a", "t", "-"]), frames(["n", "o", "t", "|", "s", "o"])]
    with caplog.at_level("WARNING", logger="asr.decode.lm"):
        res = tune_lm(
            ems, ["cat", "not so"], TOK, lm, lm_weights=(2.0, 0.0), word_scores=(1.0, 0.0),
            options=DecodingOptions("beam", beam_size=5), save=True,
        )
    assert [g["wer"] for g in res["grid"]] == [0.0] * 4
    assert res["tuned"] is False and "saved_to" not in res
    defaults = (DecodingOptions.DEFAULT_LM_WEIGHT, DecodingOptions.DEFAULT_WORD_SCORE)
    assert (res["lm_weight"], res["word_score"]) == defaults == (0.5, 0.0)
    assert not os.path.exists(lm + LM_TUNE_SUFFIX)
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "cannot tune" in warning.getMessage() and "WER 0.00%" in warning.getMessage()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda e, r: (e[:1], r), "1 emissions but 3 references"),
        (lambda e, r: ([], []), "empty dev set"),
        (lambda e, r: ([torch.zeros(4, 3)] + e[1:], r), r"emissions\[0\] must be \(T, 11\)"),
    ],
)
def test_tune_lm_rejects_bad_input(tmp_path, change, match):
    lm = _arpa(tmp_path / "lm.arpa", {"cat": -0.3})
    ems, refs = change(*_dev_set())
    with pytest.raises(ValueError, match=match):
        tune_lm(ems, refs, TOK, lm, lm_weights=(0.5,), word_scores=(0.0,))
