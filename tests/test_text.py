"""asr.text: normalisation table and tokenizer round-trips."""

from __future__ import annotations

import json
import pickle

import pytest

from asr.text import (
    BLANK,
    BpeTokenizer,
    CharTokenizer,
    Tokenizer,
    TokenizerError,
    normalize_text,
)

NORMALISATION = [
    # case
    ("HELLO World", "hello world"),
    # punctuation -> space, then whitespace collapsed
    ("Hello, world! How are you?", "hello world how are you"),
    ("wait...what;now:yes", "wait what now yes"),
    ("(quoted) [bracket] {brace}", "quoted bracket brace"),
    # whitespace of every kind
    ("  a \t b\n\nc\u00a0d  ", "a b c d"),
    ("", ""),
    ("   ", ""),
    ("?!... --", ""),
    # apostrophes inside words are kept, curly ones straightened
    ("don't", "don't"),
    ("DON\u2019T", "don't"),
    ("it\u02bcs", "it's"),
    ("rock `n` roll", "rock n roll"),
    # leading/trailing quotes and possessive-plural apostrophes are dropped
    ("'hello'", "hello"),
    ("\u2018hello\u2019", "hello"),
    ('"quoted" words', "quoted words"),
    ("\u201cDon\u2019t\u201d", "don't"),
    ("the students' books", "the students books"),
    ("'tis", "tis"),
    ("a ' b", "a b"),
    # hyphens and dashes separate words
    ("well-known", "well known"),
    ("long\u2014dash \u2013 en", "long dash en"),
    ("snake_case", "snake case"),
    # digits kept as they are
    ("Room 101, 3.5 km", "room 101 3 5 km"),
    ("1st 2nd", "1st 2nd"),
    # unicode: NFKC composes accents and folds compatibility forms
    ("Cafe\u0301", "caf\u00e9"),
    ("CAF\u00c9", "caf\u00e9"),
    ("\uff28\uff45\uff4c\uff4c\uff4f", "hello"),  # full-width
    ("\ufb01ne", "fine"),  # ligature fi
    ("na\u00efve Stra\u00dfe", "na\u00efve stra\u00dfe"),
    ("x\u00b2", "x2"),
]


@pytest.mark.parametrize("raw,expected", NORMALISATION)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected
    assert normalize_text(expected) == expected  # idempotent


# ---------------------------------------------------------------------------- CharTokenizer


def test_char_tokenizer_layout_and_round_trip():
    tok = CharTokenizer.from_texts(["hello world", "don't"])
    assert tok.tokens[:2] == [BLANK, "|"] and tok.blank_id == 0
    assert tok.tokens[2:] == sorted(set("helloworddon't") - {" "})
    assert len(tok) == tok.vocab_size == len(tok.tokens)
    assert tok.word_delimiter == "|"
    for text in ["hello world", "don't", "well hello", "ll"]:
        ids = tok.encode(text)
        assert 0 not in ids
        assert tok.decode(ids) == text
    assert tok.encode("o w") == [tok.tokens.index("o"), 1, tok.tokens.index("w")]


def test_char_decode_drops_blanks_and_keeps_repeats():
    tok = CharTokenizer("abl")
    a, b, bar = tok.tokens.index("a"), tok.tokens.index("b"), 1
    assert tok.decode([0, a, a, 0, b, 0]) == "aab"  # no CTC collapsing here
    assert tok.decode([bar, a, bar, bar, b, bar]) == "a b"  # edge/multiple separators tidied
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([len(tok)])


def test_char_unknown_chars_named():
    tok = CharTokenizer("abc")
    assert tok.unknown_chars("abz cy") == {"z", "y"}
    with pytest.raises(TokenizerError, match="'y', 'z'"):
        tok.encode("abz cy")
    with pytest.raises(TokenizerError):
        tok.encode("a|b")  # a literal "|" is not the space token


def test_char_tokenizer_rejects_bad_chars():
    with pytest.raises(TokenizerError):
        CharTokenizer(["a", "|"])
    with pytest.raises(TokenizerError):
        CharTokenizer(["ab"])


def test_char_to_dict_from_dict():
    tok = CharTokenizer.from_texts(["it's a test 42"])
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["type"] == "char"
    again = Tokenizer.from_dict(d)
    assert isinstance(again, CharTokenizer) and again.tokens == tok.tokens
    assert again.encode("a test") == tok.encode("a test")
    with pytest.raises(TokenizerError):
        Tokenizer.from_dict({"type": "char", "tokens": ["a", "b"]})
    with pytest.raises(TokenizerError, match="unknown tokenizer type"):
        Tokenizer.from_dict({"type": "wordpiece"})


# ---------------------------------------------------------------------------- BpeTokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "don't stop me now i'm having such a good time",
    "we call it bear",
    "zero three five one",
    "she sells sea shells by the sea shore",
    "peter piper picked a peck of pickled peppers",
    "how much wood would a woodchuck chuck",
    "one two three four five six seven eight nine ten",
] * 10


@pytest.fixture(scope="module")
def bpe():
    return BpeTokenizer.train(iter(CORPUS), vocab_size=60)


def test_bpe_layout(bpe):
    assert bpe.vocab_size == len(bpe) == 60
    assert bpe.tokens[0] == BLANK and bpe.tokens[1] == "<unk>"
    assert bpe.blank_id == 0 and bpe.word_delimiter == "\u2581"
    assert any(t.startswith("\u2581") and len(t) > 1 for t in bpe.tokens)


@pytest.mark.parametrize(
    "text", ["the quick brown fox", "don't stop", "a peck of peppers", "chuck"]
)
def test_bpe_round_trip(bpe, text):
    ids = bpe.encode(text)
    assert ids and min(ids) >= 2  # never blank, never <unk>
    assert bpe.decode(ids) == text
    assert bpe.decode([0, *ids, 0]) == text  # blanks ignored
    # Our ids are sentencepiece ids + 1.
    assert [bpe.tokens[i] for i in ids] == bpe._sp.encode(text, out_type=str)


def test_bpe_unknown_chars(bpe):
    assert bpe.unknown_chars("the caf\u00e9 qx") == {"\u00e9"}
    with pytest.raises(TokenizerError, match="'\u00e9'"):
        bpe.encode("caf\u00e9")


def test_bpe_to_dict_from_dict_and_pickle(bpe):
    d = json.loads(json.dumps(bpe.to_dict()))
    assert d["type"] == "bpe"
    again = Tokenizer.from_dict(d)
    assert isinstance(again, BpeTokenizer) and again.tokens == bpe.tokens
    text = "she sells sea shells"
    assert again.encode(text) == bpe.encode(text)
    unpickled = pickle.loads(pickle.dumps(bpe))
    assert unpickled.encode(text) == bpe.encode(text)
    with pytest.raises(TokenizerError):
        Tokenizer.from_dict({"type": "bpe", "model": "not base64!"})
    with pytest.raises(TokenizerError):
        Tokenizer.from_dict({"type": "bpe", "model": "aGVsbG8="})  # base64, not a model


def test_bpe_vocab_too_large():
    with pytest.raises(TokenizerError, match="Vocabulary size too high"):
        BpeTokenizer.train(["ab ab ab", "ba ba"], vocab_size=500)
