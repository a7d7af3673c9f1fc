"""Regression: lexicon beam search could not hold a word's last character over several frames.

Flashlight's lexicon decoder finishes a word when its spelling is complete and goes back to
the trie root, where staying on a token means emitting the silence token. With words spelled
without a trailing "|" ("abc\ta b c"), the frame path "a b c c - |" could not be followed:
the search paid a whole confident frame (-20 here) or invented a second "abc" (-60) instead.
Fixed by spelling words "a b c |" and closing each utterance with one synthetic "|" frame.
"""

from __future__ import annotations

import pytest
import torch

from asr.decode.beam import BeamSearchDecoder
from asr.decode.decoding import greedy_decode
from asr.text import CharTokenizer

TOK = CharTokenizer("abc")  # ids: 0 <blank>, 1 "|", 2 a, 3 b, 4 c
PEAK = 20.0


def one_hot(path: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, T, V) log-probs: 0 on the path's token, -20 elsewhere (the reported repro)."""
    lp = (torch.nn.functional.one_hot(torch.tensor(path), len(TOK.tokens)).float() - 1) * PEAK
    return lp[None], torch.tensor([len(path)])


PATHS = [
    [0, 0, 2, 3, 4, 4, 0, 1, 0],  # the report: "c" held 2 frames, then "|"
    [0, 0, 2, 3, 4, 0, 0, 1, 0],  # "c" on one frame: always worked
    [2, 3, 4, 4, 4, 4, 0, 1],  # "a b c c c c _ |": was "abc abc" at -60
    [0, 2, 3, 4, 4, 4],  # held to the very last frame, no "|" after the last word
    [2, 3, 4, 4, 1, 2, 3, 4, 4, 4, 0],  # two words, both ending on a held "c"
]


@pytest.fixture(params=["lexicon", "lm"])
def decoder(request, tmp_path) -> BeamSearchDecoder:
    if request.param == "lexicon":  # a user lexicon spelled without the trailing "|"
        lex = tmp_path / "lexicon.txt"
        lex.write_text("abc\ta b c\n", encoding="utf-8")
        return BeamSearchDecoder(TOK, lexicon=str(lex), beam_size=10)
    # A word LM: lexicon written from its vocabulary; weight 0 leaves only the acoustics.
    arpa = tmp_path / "lm.arpa"
    arpa.write_text(
        "\\data\\\nngram 1=4\nngram 2=2\n\n\\1-grams:\n-1.0\t<unk>\t0\n-99\t<s>\t0\n"
        "-0.5\t</s>\t0\n-0.3\tabc\t0\n\n\\2-grams:\n-0.3\t<s> abc\n-0.5\tabc </s>\n\n\\end\\\n",
        encoding="utf-8",
    )
    return BeamSearchDecoder(TOK, lm=str(arpa), lm_weight=0.0, beam_size=10)


@pytest.mark.parametrize("path", PATHS, ids=["report", "single", "abc-abc", "at-end", "two-words"])
def test_lexicon_word_may_hold_its_last_character(decoder, path):
    lp, lens = one_hot(path)
    [g] = greedy_decode(lp, lens, TOK)
    assert g.score == 0.0  # the path itself is free
    [[h]] = decoder(lp, lens)
    assert decoder.settings()["mode"] == "lexicon"
    assert h.text == g.text
    assert h.score == pytest.approx(0.0, abs=1e-4)  # was -20 / -40 / -60
    assert (h.tokens, h.timesteps, h.words) == (g.tokens, g.timesteps, g.words)
    # Nothing points at the synthetic closing frame.
    assert all(w.end <= len(path) for w in h.words) and max(h.timesteps) < len(path)
