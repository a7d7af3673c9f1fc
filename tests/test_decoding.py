"""Decoders on hand-built log-probs: greedy vs beam, padding, n-best, lexicons, KenLM."""

from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from ctc_frames import frames as ctc_frames

from asr.decode.beam import BeamSearchDecoder
from asr.decode.decoding import DecoderError, Hypothesis, WordSpan, greedy_decode
from asr.decode.lm_files import (
    LM_TUNE_SUFFIX,
    LM_VOCAB_SUFFIX,
    lm_vocabulary,
    load_tuned_weights,
    write_lexicon,
)
from asr.text import BpeTokenizer, CharTokenizer

TOK = CharTokenizer("abcnostuy")  # tokens: <blank> | a b c n o s t u y


def frames(spec, tok=TOK) -> torch.Tensor:
    return ctc_frames(spec, tok)


def batch(*utts: torch.Tensor, pad_token: str = "a", tok=TOK) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with confident NON-blank frames so that reading padding would change the text."""
    t = max(u.shape[0] for u in utts)
    pad = frames([pad_token] * t, tok)
    out = torch.stack([torch.cat([u, pad[: t - u.shape[0]]]) for u in utts])
    return out, torch.tensor([u.shape[0] for u in utts])


def arpa_unigrams(path, probs: dict[str, float]) -> str:
    """An ARPA file that behaves as a unigram model with the given log10 probabilities.

    KenLM refuses order-1 models, so it is a bigram model whose only bigrams repeat the
    unigram probabilities after <s>."""
    after_start = {"<unk>": -2.0, "</s>": -0.5, **probs}
    return arpa_bigrams(path, probs, {f"<s> {w}": p for w, p in after_start.items()})


def arpa_bigrams(path, unigrams: dict[str, float], bigrams: dict[str, float]) -> str:
    """An ARPA bigram model: log10 unigram probabilities (backoff 0) and the given bigrams."""
    uni = {"<unk>": -2.0, "<s>": -99.0, "</s>": -0.5, **unigrams}
    lines = ["", "\\data\\", f"ngram 1={len(uni)}", f"ngram 2={len(bigrams)}", ""]
    lines += ["\\1-grams:"] + [f"{p}\t{w}\t0" for w, p in uni.items()] + [""]
    lines += ["\\2-grams:"] + [f"{p}\t{w}" for w, p in bigrams.items()]
    lines += ["", "\\end\\", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


CAT_ON = ["-", "c", "c", "-", "a", "t", "|", "|", "o", "-", "n", "n", "-"]


# --------------------------------------------------------------------------------------------
# greedy


def test_greedy_text_tokens_timesteps_and_words():
    lp, lens = batch(frames(CAT_ON))
    [h] = greedy_decode(lp, lens, TOK)
    assert h.text == "cat on"
    assert [TOK.tokens[i] for i in h.tokens] == ["c", "a", "t", "|", "o", "n"]
    assert h.timesteps == [1, 4, 5, 6, 8, 10]
    assert h.words == [WordSpan("cat", 1, 6), WordSpan("on", 8, 12)]
    assert h.score == pytest.approx(len(CAT_ON) * math.log(0.9), rel=1e-5)


def test_greedy_repeated_letter_needs_blank():
    lp, lens = batch(frames(["n", "o", "o", "-", "o", "n"]))
    assert greedy_decode(lp, lens, TOK)[0].text == "noon"


def test_greedy_ignores_padded_frames():
    short = frames(["-", "n", "o", "-"])
    long = frames(CAT_ON)
    alone = greedy_decode(*batch(short), TOK)[0]
    lp, lens = batch(long, short)  # short is padded with 9 confident "a" frames
    padded = greedy_decode(lp, lens, TOK)[1]
    assert alone == padded
    assert padded.text == "no"


def test_greedy_zero_length_gives_empty_hypothesis():
    lp, _ = batch(frames(CAT_ON))
    [h] = greedy_decode(lp, torch.tensor([0]), TOK)
    assert (h.text, h.tokens, h.timesteps, h.words, h.score) == ("", [], [], [], 0.0)


def test_greedy_words_are_normalised_like_transcripts():
    # A model can emit an apostrophe at a word's edge or alone; transcripts never hold one
    # there (normalize_text), so the hypothesis must not either, or it would score
    # differently in training's dev WER, `asr lm tune` and `asr evaluate`.
    tok = CharTokenizer("adnot'")
    lp, lens = batch(frames(["a", "t", "'", "|", "'", "|", "d", "o", "n", "'", "t", "-"], tok), tok=tok)
    h = greedy_decode(lp, lens, tok)[0]
    assert h.text == "at don't"
    assert h.words == [WordSpan("at", 0, 3), WordSpan("don't", 6, 11)]


def test_edge_delimiters_give_no_empty_words():
    lp, lens = batch(frames(["|", "s", "o", "|", "|", "n", "o", "|"]))
    h = greedy_decode(lp, lens, TOK)[0]
    assert h.text == "so no"
    assert [w.word for w in h.words] == ["so", "no"]


def test_word_times_uses_frame_shift():
    h = Hypothesis("cat on", [], [], 0.0, [WordSpan("cat", 1, 6), WordSpan("on", 8, 12)])
    assert h.word_times(0.04) == [
        ("cat", pytest.approx(0.04), pytest.approx(0.24)),
        ("on", pytest.approx(0.32), pytest.approx(0.48)),
    ]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.zeros(5, len(TOK.tokens)), torch.tensor([5])), r"\(N, T, V\)"),
        (lambda: (torch.zeros(1, 5, 4), torch.tensor([5])), "4 classes"),
        (lambda: (torch.zeros(2, 5, len(TOK.tokens)), torch.tensor([5])), "lengths must be"),
        (lambda: (torch.zeros(1, 5, len(TOK.tokens)), torch.tensor([6])), r"\[0, 5\]"),
    ],
)
def test_bad_inputs_raise(make, match):
    lp, lens = make()
    with pytest.raises(DecoderError, match=match):
        greedy_decode(lp, lens, TOK)
    with pytest.raises(DecoderError, match=match):
        BeamSearchDecoder(TOK)(lp, lens)


# --------------------------------------------------------------------------------------------
# beam search without LM


def test_beam_matches_greedy_on_peaky_log_probs():
    utts = [frames(CAT_ON), frames(["-", "n", "o", "o", "-", "o", "n", "|", "s", "o", "-"])]
    lp, lens = batch(*utts)
    greedy = greedy_decode(lp, lens, TOK)
    beam = BeamSearchDecoder(TOK, beam_size=10)(lp, lens)
    for g, [b] in zip(greedy, beam, strict=True):
        assert (b.text, b.tokens, b.timesteps, b.words) == (g.text, g.tokens, g.timesteps, g.words)
        # No LM, no bonuses: the beam score is the best path's log-prob (max, not log-add).
        assert b.score == pytest.approx(g.score, abs=1e-4)


def test_beam_alone_equals_padded_in_batch():
    short = frames(["-", "c", "-", "a", "|", "n", "o", "-"])
    dec = BeamSearchDecoder(TOK, beam_size=8, nbest=3)
    alone = dec(*batch(short))[0]
    lp, lens = batch(frames(CAT_ON), short, pad_token="s")
    padded = dec(lp, lens)[1]
    assert [h.text for h in alone] == [h.text for h in padded]
    assert alone == padded
    assert alone[0].text == "ca no"


def test_beam_accepts_float64_noncontiguous_input():
    lp, lens = batch(frames(CAT_ON), frames(CAT_ON))
    nc = lp.double().transpose(0, 1).contiguous().transpose(0, 1)  # (N, T, V) view, not contiguous
    assert not nc.is_contiguous()
    assert [h[0].text for h in BeamSearchDecoder(TOK)(nc, lens)] == ["cat on", "cat on"]


def test_nbest_is_sorted_distinct_and_starts_with_best():
    # Third frame is a near tie between "o" and "a": "so" (0.5) beats "sa" (0.4).
    lp, lens = batch(frames(["-", "s", {"o": 0.5, "a": 0.4}, "-"]))
    [hyps] = BeamSearchDecoder(TOK, beam_size=20, nbest=4)(lp, lens)
    assert len(hyps) == 4
    assert [h.text for h in hyps[:2]] == ["so", "sa"]
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)
    assert len({h.text for h in hyps}) == len(hyps)
    assert hyps[0].text == greedy_decode(lp, lens, TOK)[0].text


def test_beam_zero_length_gives_empty_hypothesis():
    lp, _ = batch(frames(CAT_ON))
    assert BeamSearchDecoder(TOK)(lp, torch.tensor([0])) == [[Hypothesis("", [], [], 0.0, [])]]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_threshold": 0}, "beam_threshold"),
        ({"nbest": 0}, "nbest"),
        ({"nbest": 5, "beam_size": 2}, "cannot exceed"),
        ({"lm": "/nonexistent/lm.bin"}, "lm file not found"),
        ({"lexicon": "/nonexistent/lexicon.txt"}, "lexicon file not found"),
    ],
)
def test_bad_beam_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BeamSearchDecoder(TOK, **kwargs)


# --------------------------------------------------------------------------------------------
# lexicons and language models

# "cut" is acoustically slightly better than "cat" (0.5 vs 0.4 on the vowel frame).
CUT_OR_CAT = ["-", "c", {"u": 0.5, "a": 0.4}, "t", "-"]


def test_kenlm_word_lm_changes_the_decision(tmp_path):
    lp, lens = batch(frames(CUT_OR_CAT))
    assert BeamSearchDecoder(TOK)(lp, lens)[0][0].text == "cut"
    lm = arpa_unigrams(tmp_path / "lm.arpa", {"cat": -0.1, "cut": -3.0})
    # Word LM without a lexicon: the lexicon comes from the LM's vocabulary.
    dec = BeamSearchDecoder(TOK, lm=lm, lm_weight=1.0)
    assert dec.settings()["mode"] == "lexicon"
    [h] = dec(lp, lens)[0]
    assert h.text == "cat"
    assert h.words == [WordSpan("cat", 1, 4)]
    # The same LM with weight 0 leaves the acoustics in charge.
    assert BeamSearchDecoder(TOK, lm=lm, lm_weight=0.0)(lp, lens)[0][0].text == "cut"
    # And an LM that prefers "cut" keeps it.
    lm2 = arpa_unigrams(tmp_path / "lm2.arpa", {"cat": -3.0, "cut": -0.1})
    assert BeamSearchDecoder(TOK, lm=lm2, lm_weight=1.0)(lp, lens)[0][0].text == "cut"


def test_lexicon_restricts_output_to_words(tmp_path):
    lex = tmp_path / "lexicon.txt"
    assert write_lexicon(["cat", "on", "cot"], TOK, lex) == []
    # Acoustically "cxt" is impossible; "cut" is best but not in the lexicon.
    lp, lens = batch(frames(CUT_OR_CAT + ["|", "o", "n", "-"]))
    [h] = BeamSearchDecoder(TOK, lexicon=str(lex))(lp, lens)[0]
    assert h.text == "cat on"
    assert h.words == [WordSpan("cat", 1, 4), WordSpan("on", 6, 8)]
    # Lexicon-mode tokens/timesteps still describe the frame path like greedy does.
    assert [TOK.tokens[i] for i in h.tokens] == ["c", "a", "t", "|", "o", "n"]
    assert h.timesteps == [1, 2, 3, 5, 6, 7]


def test_lexicon_words_need_a_delimiter_between_them(tmp_path):
    lex = tmp_path / "lexicon.txt"
    write_lexicon(["so", "no"], TOK, lex)
    # "sono" with no "|": lexicon words end with "|" (as the model was trained to emit
    # between words), so the search pays for one on the cheapest frame, the blank at 2.
    lp, lens = batch(frames(["s", "o", "-", "n", "o", "-"]))
    g = greedy_decode(lp, lens, TOK)[0]
    assert g.text == "sono"
    [h] = BeamSearchDecoder(TOK, lexicon=str(lex))(lp, lens)[0]
    assert h.text == "so no"
    assert [TOK.tokens[i] for i in h.tokens] == ["s", "o", "|", "n", "o"]
    assert h.words == [WordSpan("so", 0, 2), WordSpan("no", 3, 5)]
    assert h.score == pytest.approx(g.score - lp[0, 2, 0].item() + lp[0, 2, 1].item(), abs=1e-4)


# "cat" with its "t" held over three frames, then "on" with "n" held to the last frame.
HELD = ["-", "c", "a", "t", "t", "t", "|", "o", "n", "n"]


def test_lexicon_word_may_hold_its_last_character(tmp_path):
    # Regression (see tests/regressions/test_lexicon_repeats.py): flashlight could not stay
    # on a word's last character once the word was complete; now lexicon search follows the
    # best path exactly like greedy, and nothing points at the synthetic closing frame.
    lex = tmp_path / "lexicon.txt"
    write_lexicon(["cat", "on"], TOK, lex)
    lp, lens = batch(frames(HELD))
    [g] = greedy_decode(lp, lens, TOK)
    [h] = BeamSearchDecoder(TOK, lexicon=str(lex))(lp, lens)[0]
    assert (h.text, h.tokens, h.timesteps, h.words) == (g.text, g.tokens, g.timesteps, g.words)
    assert h.words == [WordSpan("cat", 1, 6), WordSpan("on", 7, 10)]
    assert h.score == pytest.approx(g.score, abs=1e-4)


def test_lexicon_alone_equals_padded_in_batch(tmp_path):
    # The closing frame goes at each utterance's own length: into padding for the short
    # one, past the padded length for the longest; padding is still never read.
    lex = tmp_path / "lexicon.txt"
    write_lexicon(["cat", "on", "no", "so"], TOK, lex)
    dec = BeamSearchDecoder(TOK, lexicon=str(lex), beam_size=8, nbest=2)
    short = frames(["-", "n", "o", "o", "-"])
    alone = dec(*batch(short))[0]
    lp, lens = batch(frames(HELD), short, pad_token="s")
    both = dec(lp, lens)
    assert both[1] == alone
    assert alone[0].text == "no" and alone[0].words == [WordSpan("no", 1, 4)]
    assert both[0][0].text == "cat on"


def test_lexicon_score_excludes_the_closing_frame(tmp_path):
    lex = tmp_path / "lexicon.txt"
    write_lexicon(["cat", "on"], TOK, lex)
    # One real "|": sil_score is earned once; the closing "|" (and its bonus) is not counted.
    lp, lens = batch(frames(["-", "c", "a", "t", "|", "o", "n", "-"]))
    g = greedy_decode(lp, lens, TOK)[0]
    for sil in (0.0, 1.5):
        [h] = BeamSearchDecoder(TOK, lexicon=str(lex), sil_score=sil)(lp, lens)[0]
        assert h.text == "cat on"
        assert h.score == pytest.approx(g.score + sil, abs=1e-4)
    # Only blanks: no word, empty text, the path's own score.
    lp, lens = batch(frames(["-", "-", "-"]))
    [h] = BeamSearchDecoder(TOK, lexicon=str(lex), sil_score=1.5)(lp, lens)[0]
    assert (h.text, h.tokens, h.words) == ("", [], [])
    assert h.score == pytest.approx(greedy_decode(lp, lens, TOK)[0].score, abs=1e-4)


def test_lexicon_path_that_cannot_end_a_word_keeps_a_finite_score(tmp_path):
    # "c a" certain (every other token -100: more than the beam threshold below it), so no
    # hypothesis can finish "cat" before the closing frame. Flashlight keeps unfinished ones;
    # the closing frame's (finite) penalty is taken back out, leaving the path's own score.
    tok = CharTokenizer("act")
    lex = tmp_path / "lexicon.txt"
    write_lexicon(["cat"], tok, lex)
    path = torch.tensor([tok.tokens.index(c) for c in "ca"])
    lp = (torch.nn.functional.one_hot(path, len(tok.tokens)).float() - 1)[None] * 100
    [[h]] = BeamSearchDecoder(tok, lexicon=str(lex), beam_size=5)(lp, torch.tensor([2]))
    assert (h.text, h.words) == ("", [])
    assert h.score == 0.0


def test_given_lexicon_gets_trailing_delimiters(tmp_path):
    # Spellings with and without the trailing "|" both work (flashlight's own lexicons have
    # it; ours did not); an entry listed both ways counts once.
    lex = tmp_path / "lexicon.txt"
    lex.write_text("cat\tc a t\ncat c a t |\n\non\to n |\n", encoding="utf-8")
    lp, lens = batch(frames(HELD))
    [hyps] = BeamSearchDecoder(TOK, lexicon=str(lex), beam_size=10, nbest=3)(lp, lens)
    assert hyps[0].text == "cat on"
    assert hyps[0].words == greedy_decode(lp, lens, TOK)[0].words


@pytest.mark.parametrize(
    "content, match",
    [
        ("cat\tc a t\nzoo\tz o o\n", r"lexicon.txt:2: spelling of 'zoo' uses tokens .*\['z'\]"),
        ("cat\tc a t\non\n", r"lexicon.txt:2: word 'on' has no spelling"),
        ("\n\n", r"lexicon.txt: lexicon has no entries"),
    ],
)
def test_bad_lexicon_raises(tmp_path, content, match):
    lex = tmp_path / "lexicon.txt"
    lex.write_text(content, encoding="utf-8")
    with pytest.raises(DecoderError, match=match):
        BeamSearchDecoder(TOK, lexicon=str(lex))


def test_token_level_lm_runs_lexicon_free(tmp_path):
    # A character LM (vocabulary = the tokens) makes "a" after "c" far likelier than "u".
    probs = {t: -1.0 for t in TOK.tokens[1:]}
    probs.update({"a": -0.05, "u": -4.0})
    lm = arpa_unigrams(tmp_path / "chars.arpa", probs)
    lp, lens = batch(frames(CUT_OR_CAT))
    dec = BeamSearchDecoder(TOK, lm=lm, lm_weight=1.0)
    assert dec.settings()["mode"] == "lexicon-free"
    assert dec(lp, lens)[0][0].text == "cat"


def test_word_lm_listing_every_letter_is_still_a_word_lm(tmp_path):
    # Broad text puts every single letter into a word LM's vocabulary ("a", "b", ... as
    # initials and list items); it must still get a lexicon of its words, not be taken for a
    # character LM and searched lexicon-free.
    probs = {t: -3.0 for t in TOK.tokens[1:] if t != "|"}
    words = ("cat cut on so soon not at to no nut bat bus busy cost boat coat tub tuna toy boy buy "
             "cab can ban bay say any sunny bunny stub cubs tab bony toast bout snout scout").split()
    probs.update({w: -1.0 for w in words})
    lm = arpa_unigrams(tmp_path / "words.arpa", probs)
    lp, lens = batch(frames(CUT_OR_CAT))
    dec = BeamSearchDecoder(TOK, lm=lm, lm_weight=1.0)
    assert dec.settings()["mode"] == "lexicon"
    assert dec(lp, lens)[0][0].text in ("cat", "cut")


def test_word_score_in_lexicon_free_char_mode_acts_per_delimiter():
    # Frame 3 is a near tie between "|" (0.45) and "o" (0.5): "so|on" vs "soon"... the bonus
    # on every "|" (= word_score in lexicon-free char decoding) flips it to two words.
    lp, lens = batch(frames(["s", "o", "-", {"|": 0.45, "o": 0.5}, "o", "n"]))
    assert BeamSearchDecoder(TOK)(lp, lens)[0][0].text == "soon"
    assert BeamSearchDecoder(TOK, word_score=1.0)(lp, lens)[0][0].text == "so on"


def test_write_lexicon_skips_unspellable_and_special_words(tmp_path):
    lex = tmp_path / "lex.txt"
    skipped = write_lexicon(["<s>", "cat", "cat", "", "dog", "<unk>", "no", "</s>"], TOK, lex)
    assert skipped == ["dog"]
    assert lex.read_text(encoding="utf-8") == "cat\tc a t |\nno\tn o |\n"
    with pytest.raises(DecoderError, match="none of the 2 words"):
        write_lexicon(["dog", "zebra"], TOK, tmp_path / "none.txt")


def test_lm_vocabulary_reads_arpa_plain_and_gzip(tmp_path):
    lm = arpa_unigrams(tmp_path / "lm.arpa", {"cat": -1.0, "on": -1.0})
    assert lm_vocabulary(lm) == ["cat", "on"]
    gz = tmp_path / "lm.arpa.gz"
    gz.write_bytes(gzip.compress((tmp_path / "lm.arpa").read_bytes()))
    assert lm_vocabulary(gz) == ["cat", "on"]
    with pytest.raises(DecoderError, match="not an ARPA file"):
        (tmp_path / "x.txt").write_text("hello\n")
        lm_vocabulary(tmp_path / "x.txt")
    with pytest.raises(DecoderError, match="cannot read language model"):
        lm_vocabulary(tmp_path / "missing.arpa")


def test_binary_lm_needs_vocab_side_file(tmp_path):
    fake = tmp_path / "lm.bin"
    fake.write_bytes(b"mmap lm http://kheafield.com/code format version 5\n\0\0\0")
    with pytest.raises(DecoderError, match=f"without its vocabulary list lm.bin{LM_VOCAB_SUFFIX}"):
        lm_vocabulary(fake)
    (tmp_path / f"lm.bin{LM_VOCAB_SUFFIX}").write_text("<s>\ncat\non\n</s>\n")
    assert lm_vocabulary(fake) == ["cat", "on"]


def test_load_tuned_weights(tmp_path):
    lm = tmp_path / "lm.bin"
    assert load_tuned_weights(lm) is None
    side = tmp_path / f"lm.bin{LM_TUNE_SUFFIX}"
    side.write_text(json.dumps({"lm_weight": 0.8, "word_score": -1, "wer": 0.1}))
    assert load_tuned_weights(lm) == {"lm_weight": 0.8, "word_score": -1.0}
    side.write_text("{not json")
    with pytest.raises(DecoderError, match="malformed tuning file"):
        load_tuned_weights(lm)


def test_bad_lm_file_raises_decoder_error(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=x\n\n\\1-grams:\n-1\tcat\n\n\\end\\\n")
    with pytest.raises(DecoderError, match="bad.arpa"):
        BeamSearchDecoder(TOK, lm=str(bad))


# --------------------------------------------------------------------------------------------
# word pieces


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    texts = ["the cat sat on the mat", "the cat is on the mat", "a cat and a hat"] * 20
    return BpeTokenizer.train(texts, vocab_size=24)


def piece_frames(tok: BpeTokenizer, text: str) -> torch.Tensor:
    """Peaky log-probs spelling ``text`` with the tokenizer's own pieces, blank-separated."""
    spec: list[dict[str, float] | str] = []
    for i in tok.encode(text):
        spec += [tok.tokens[i], "-"]
    return frames(spec, tok)


def test_bpe_greedy_and_beam_agree_and_split_words_at_pieces(bpe):
    text = "the cat sat on a mat"
    ids = bpe.encode(text)
    assert any(not bpe.tokens[i].startswith("\u2581") for i in ids), "want a multi-piece word"
    lp, lens = batch(piece_frames(bpe, text), pad_token="\u2581the", tok=bpe)
    [g] = greedy_decode(lp, lens, bpe)
    assert g.text == text
    assert [w.word for w in g.words] == text.split()
    assert g.words[0].start == 0 and g.words[-1].end == 2 * len(ids) - 1
    [[b]] = BeamSearchDecoder(bpe, beam_size=10)(lp, lens)
    assert (b.text, b.tokens, b.timesteps, b.words) == (g.text, g.tokens, g.timesteps, g.words)


def test_bpe_with_word_lm_uses_piece_spellings(bpe, tmp_path):
    lm = arpa_unigrams(tmp_path / "lm.arpa", {w: -1.0 for w in "the cat sat on a mat hat".split()})
    lp, lens = batch(piece_frames(bpe, "the cat sat on a mat"), pad_token="\u2581the", tok=bpe)
    dec = BeamSearchDecoder(bpe, lm=lm, lm_weight=0.5, word_score=0.5)
    assert dec.settings()["mode"] == "lexicon"
    [h] = dec(lp, lens)[0]
    assert h.text == "the cat sat on a mat"
    assert [w.word for w in h.words] == h.text.split()
    assert h.words == greedy_decode(lp, lens, bpe)[0].words


def test_bpe_lexicon_has_no_delimiter_token(bpe, tmp_path):
    # Word pieces mark a word's START ("▁cat"); no delimiter is appended after the last
    # piece and no closing frame is needed. Each word has a second spelling with its last
    # piece doubled, so that it can hold that piece over several frames.
    lex = tmp_path / "lex.txt"
    write_lexicon(["the", "cat"], bpe, lex)
    lines = lex.read_text(encoding="utf-8").splitlines()
    expected = []
    for w in ("the", "cat"):
        pieces = [bpe.tokens[i] for i in bpe.encode(w)]
        expected += [w + "\t" + " ".join(pieces), w + "\t" + " ".join(pieces + pieces[-1:])]
    assert lines == expected


@pytest.mark.parametrize("hold", [1, 2, 3, 5])
@pytest.mark.parametrize("blank_after", [True, False])
def test_bpe_lexicon_word_may_hold_its_last_piece(bpe, tmp_path, hold, blank_after):
    # Regression: flashlight's root only repeats the silence token, so a word completed on
    # its last piece could not hold that piece; the search invented other words instead.
    lm = arpa_unigrams(tmp_path / "lm.arpa", {w: -1.0 for w in "the cat sat on a mat hat".split()})
    spec: list[dict[str, float] | str] = []
    for i in bpe.encode("the cat on a mat"):
        spec += [bpe.tokens[i]] * hold + (["-"] if blank_after else [])
    lp, lens = batch(frames(spec, bpe), pad_token="\u2581the", tok=bpe)
    [h] = BeamSearchDecoder(bpe, lm=lm, lm_weight=0.0)(lp, lens)[0]
    assert h.text == greedy_decode(lp, lens, bpe)[0].text == "the cat on a mat"
    assert h.words == greedy_decode(lp, lens, bpe)[0].words


def test_bpe_lexicon_free_refuses_word_score(bpe):
    with pytest.raises(DecoderError, match="word_score has no effect"):
        BeamSearchDecoder(bpe, word_score=1.0)


def test_bpe_user_lexicon_also_lets_a_word_hold_its_last_piece(bpe, tmp_path):
    # A lexicon the user passes gets the same doubled-last-piece spelling as a generated one.
    lex = tmp_path / "lex.txt"
    lex.write_text("".join(f"{w}\t{' '.join(bpe.tokens[i] for i in bpe.encode(w))}\n" for w in ("the", "cat", "on")),
                   encoding="utf-8")
    spec: list[dict[str, float] | str] = []
    for i in bpe.encode("the cat on"):
        spec += [bpe.tokens[i]] * 3
    lp, lens = batch(frames(spec, bpe), pad_token="\u2581the", tok=bpe)
    [h] = BeamSearchDecoder(bpe, lexicon=str(lex))(lp, lens)[0]
    assert h.text == greedy_decode(lp, lens, bpe)[0].text == "the cat on"


def test_lexicon_stream_partial_shows_each_word_once_it_is_spelled(tmp_path):
    """The streamed partial reads as the final would if the stream ended now: a word shows as
    soon as its spelling is complete, before the "|" after it. (flashlight's
    get_best_hypothesis() walks back to the last completed word, which held every word back
    until the "|" after it and the last one until the final.)"""
    lm = arpa_unigrams(tmp_path / "lm.arpa", {"cat": -0.5, "on": -0.5, "cot": -1.0})
    dec = BeamSearchDecoder(TOK, lm=lm, lm_weight=1.0)
    assert dec.settings()["mode"] == "lexicon"
    stream = dec.stream()
    spoken = frames(CAT_ON)
    partials = []
    for t in range(spoken.shape[0]):
        stream.step(spoken[t : t + 1])
        partials.append(stream.partial().text)
    assert partials[5] == "cat"  # the "t" frame: "cat" before its "|"
    assert partials[9] == "cat"  # "o" of the unfinished "on" spells no word yet
    assert partials[10] == "cat on"  # its "n"
    assert partials[-1] == "cat on"
    final = stream.finish()
    assert final.text == "cat on"
    lp, lens = batch(spoken)
    assert dec(lp, lens)[0][0].text == final.text



# "c ? t | o n": the vowel is a or o, equally; alone the LM prefers "cat", but after it
# "on" makes "cot on" far likelier, so the search changes the first word once "on" ends.
COT_ON = ["-", "c", "c", "-", {"a": 0.45, "o": 0.45}, "t", "|", "|", "o", "-", "n", "n", "-"]


def cot_on_decoder(tmp_path) -> BeamSearchDecoder:
    lm = arpa_bigrams(tmp_path / "lm.arpa", {"cat": -0.5, "cot": -1.0, "on": -0.5},
                      {"<s> cat": -0.5, "<s> cot": -1.0, "cat on": -3.0, "cot on": -0.1,
                       "on </s>": -0.1})
    return BeamSearchDecoder(TOK, lm=lm, lm_weight=1.0)


def stream_partials(stream, spoken: torch.Tensor) -> list[str]:
    out = []
    for t in range(spoken.shape[0]):
        stream.step(spoken[t : t + 1])
        out.append(stream.partial().text)
    return out


def test_stream_commit_fixes_words_the_lm_would_change_later(tmp_path):
    dec = cot_on_decoder(tmp_path)
    spoken = frames(COT_ON)
    lp, lens = batch(spoken)
    assert dec(lp, lens)[0][0].text == "cot on"  # offline: "on" turns "cat" into "cot"

    free = dec.stream()  # no commit: the partials say "cat" until the LM revises it
    partials = stream_partials(free, spoken)
    assert partials[6] == "cat"
    assert free.finish().text == "cot on"

    late = dec.stream(commit_frames=100)  # never reached: the same as no commit
    stream_partials(late, spoken)
    assert late.finish().text == "cot on"

    fixed = dec.stream(commit_frames=0)  # "cat" is fixed as soon as its "|" starts
    partials = stream_partials(fixed, spoken)
    assert all(p.startswith("cat") for p in partials[6:]), partials
    final = fixed.finish()
    assert final.text == "cat on"  # the best hypothesis in the beam that keeps "cat"
    assert [(w.word, w.start, w.end) for w in final.words] == [("cat", 1, 6), ("on", 8, 12)]


def test_stream_partial_reads_as_the_final_would_if_the_stream_ended_now(tmp_path):
    """While "c?t" is spelled, the trie's look-ahead ranks "cat" first (its unigram is
    likelier); the sentence's end makes "cot" the final. The partial after the last frame
    already reads "cot", with the score the final gets: the ranking the final will use."""
    lm = arpa_bigrams(tmp_path / "lm.arpa", {"cat": -0.5, "cot": -1.0},
                      {"<s> cat": -0.5, "<s> cot": -1.0, "cat </s>": -3.0, "cot </s>": -0.1})
    dec = BeamSearchDecoder(TOK, lm=lm, lm_weight=1.0)
    spoken = frames(["-", "c", "c", "-", {"a": 0.45, "o": 0.45}, "t", "-", "-"])
    lp, lens = batch(spoken)
    assert dec(lp, lens)[0][0].text == "cot"
    stream = dec.stream()
    partials = stream_partials(stream, spoken)
    assert partials[:4] == [""] * 4  # no word spelled yet
    assert partials[5:] == ["cot", "cot", "cot"]  # from the "t" frame on
    partial = stream.partial()
    final = stream.finish()
    assert final.text == "cot" and partial.score == pytest.approx(final.score, abs=1e-4)


def test_stream_commit_splices_when_no_hypothesis_keeps_the_fixed_words(tmp_path):
    """If the beam has dropped every hypothesis that reads the fixed words, the output is the
    fixed words, a "|", and the best hypothesis' tokens after them."""
    from types import SimpleNamespace

    stream = cot_on_decoder(tmp_path).stream(commit_frames=0)
    ids = {t: i for i, t in enumerate(TOK.tokens)}
    path = lambda s: [ids["|"]] + [ids["<blank>" if c == "-" else c] for c in s] + [ids["|"]]  # noqa: E731
    stream.frames = 9
    stream._fixed = ([ids["c"], ids["a"], ids["t"]], [0, 1, 2], [1, 2, 3])
    stream._fixed_end = 3
    # The best reads "cot" and its "|" starts inside the fixed part; the other one agrees.
    best = SimpleNamespace(tokens=path("co|--on--"), score=-1.0)
    agree = SimpleNamespace(tokens=path("cat|-an--"), score=-2.0)
    hyp, _ = stream._read([(-1.0, best), (-2.0, agree)])
    assert hyp.text == "cat an"  # the best that agrees
    hyp, ends = stream._read([(-1.0, best)])
    assert hyp.text == "cat on"  # spliced: fixed "cat", a "|", then the best's "on"
    assert hyp.timesteps == [0, 1, 2, 3, 5, 6] and ends == [1, 2, 3, 3, 6, 7]
    # A path that reads one word across the fixed end still gets the "|" after the fixed words.
    across = SimpleNamespace(tokens=path("ca-tton--"), score=-1.0)
    assert stream._read([(-1.0, across)])[0].text == "cat ton"
