"""FlashlightSearch builds flashlight-text's decoder as torchaudio's ctc_decoder does: the same
raw results (frame path, words, scores) on the same emissions, in every mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asr.decode.flashlight import FlashlightSearch
from asr.text import CharTokenizer

TOK = CharTokenizer("abcnostuy")  # tokens: <blank> | a b c n o s t u y
ARPA = """
\\data\\
ngram 1=7
ngram 2=3

\\1-grams:
-1.0\t<unk>\t0
-99\t<s>\t-0.3
-0.7\t</s>\t0
-0.6\tcat\t-0.2
-0.8\tsun\t-0.2
-0.9\tnot\t-0.2
-1.2\tso\t-0.2

\\2-grams:
-0.2\t<s> cat
-0.3\tcat sun
-0.4\tnot so

\\end\\
"""
LEXICON = "cat\tc a t |\nsun\ts u n |\nnot\tn o t |\nso\ts o |\n"


def _raw(decoder, em: torch.Tensor) -> list[tuple[list[int], list[int], float]]:
    t, v = em.shape
    return [(list(r.tokens), list(r.words), r.score) for r in decoder.decode(em.data_ptr(), t, v)]


@pytest.mark.parametrize("mode", ["free", "free+token-lm", "lexicon", "lexicon+lm"])
def test_same_search_as_torchaudio_ctc_decoder(tmp_path: Path, mode: str):
    from torchaudio.models.decoder import ctc_decoder

    lexicon = lm = lm_dict = None
    if "lexicon" in mode:
        lexicon = str(tmp_path / "lexicon.txt")
        Path(lexicon).write_text(LEXICON, encoding="utf-8")
    if mode == "lexicon+lm":
        lm = str(tmp_path / "lm.arpa")
        Path(lm).write_text(ARPA, encoding="utf-8")
    if mode == "free+token-lm":
        lm = str(tmp_path / "chars.arpa")
        units = TOK.tokens[1:]
        Path(lm).write_text(
            f"\\data\\\nngram 1={len(units) + 3}\nngram 2=1\n\n\\1-grams:\n"
            + "".join(f"-{0.5 + 0.1 * i:.1f}\t{u}\t0\n" for i, u in enumerate(units))
            + "-1\t<unk>\t0\n-99\t<s>\t0\n-1\t</s>\t0\n\n\\2-grams:\n-0.1\t<s> c\n\n\\end\\\n",
            encoding="utf-8",
        )
        lm_dict = str(tmp_path / "lm_dict.txt")  # token-id order, as BeamSearchDecoder passed it
        Path(lm_dict).write_text("\n".join(TOK.tokens) + "\n", encoding="utf-8")
    kw = {"beam_size": 8, "beam_threshold": 25.0, "lm_weight": 0.7, "word_score": 0.3, "sil_score": 0.1}
    ours = FlashlightSearch(TOK, lexicon, lm, "<blank>", "|", unk_word="<unk>", **kw)
    theirs = ctc_decoder(lexicon=lexicon, tokens=list(TOK.tokens), lm=lm, lm_dict=lm_dict, nbest=8,
                         blank_token="<blank>", sil_token="|", unk_word="<unk>", **kw)
    gen = torch.Generator().manual_seed(3)
    for t in (1, 7, 40):
        em = torch.log_softmax(3 * torch.randn(t, len(TOK.tokens), generator=gen), -1).contiguous()
        got = _raw(ours.decoder, em)
        assert got == _raw(theirs.decoder, em) and got
    if ours.word_dict is not None:
        size = ours.word_dict.index_size()
        assert size == theirs.word_dict.index_size()
        assert [ours.word_dict.get_entry(i) for i in range(size)] == [
            theirs.word_dict.get_entry(i) for i in range(size)
        ]
