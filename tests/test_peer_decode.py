"""The SpeechBrain peer's log-probs reach our beam search in our tokenizer's id order."""

import importlib.util
from pathlib import Path

import pytest
import torch

from asr.decode.decoding import greedy_decode
from asr.text import CharTokenizer

_PATH = Path(__file__).resolve().parents[1] / "benchmarks/peers/speechbrain/decode_lm.py"
_spec = importlib.util.spec_from_file_location("peer_decode_lm", _PATH)
decode_lm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decode_lm)


def test_peer_columns_are_reordered_into_our_ids():
    # Peer order: space first, blank in the middle, letters reversed; ours: <blank>, |, a, b, c.
    vocab = [" ", "c", "<blank>", "b", "a"]
    tok = decode_lm.tokenizer_for(vocab, blank_id=2)
    assert tok.tokens == ["<blank>", "|", "a", "b", "c"]
    # Best peer path per frame: a, blank, b, space, c -> "ab c".
    best = [4, 2, 3, 0, 1]
    lp = torch.full((5, 5), -10.0)
    lp[torch.arange(5), torch.tensor(best)] = 0.0
    ours = decode_lm.to_tokenizer_ids(lp, vocab, 2, tok)
    assert ours.argmax(dim=1).tolist() == [2, 0, 3, 1, 4]
    assert greedy_decode(ours[None], torch.tensor([5]), tok)[0].text == "ab c"


def test_peer_token_missing_from_our_tokenizer_is_refused():
    with pytest.raises(decode_lm.VocabError, match="no counterpart"):
        decode_lm.column_order(["<blank>", " ", "a", "z"], 0, CharTokenizer("a"))
    with pytest.raises(decode_lm.VocabError, match="not in the peer"):
        decode_lm.column_order(["<blank>", " ", "a"], 0, CharTokenizer("ab"))
