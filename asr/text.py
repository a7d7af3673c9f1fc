"""Text side of the toolkit: normalisation and the tokenizers that own the CTC vocabulary.

The tokenizer is the single owner of ``blank_id`` (always 0) and of the id <-> token map;
the loss, the decoders and the metrics read both from here.
"""

from __future__ import annotations

import base64
import io
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import sentencepiece as spm

BLANK = "<blank>"  # token 0 of every tokenizer: the CTC blank
WORD_DELIMITER = "|"  # CharTokenizer's token for the space between words

# Characters that mean "apostrophe" in real transcripts; all become "'" (U+0027).
_APOSTROPHES = str.maketrans(
    {
        "\u2019": "'",  # right single quotation mark (the usual curly apostrophe)
        "\u2018": "'",  # left single quotation mark
        "\u02bc": "'",  # modifier letter apostrophe
        "\u2032": "'",  # prime
        "\u0060": "'",  # grave accent, used as an apostrophe on some keyboards
        "\u00b4": "'",  # acute accent, likewise
    }
)


def _is_word_char(c: str) -> bool:
    # Letters, digits and combining marks (accents that NFKC could not compose) are text;
    # everything else (punctuation, symbols, hyphens, underscores, spaces) separates words.
    return unicodedata.category(c)[0] in "LNM"


def normalize_text(text: str) -> str:
    """Normalise a transcript to the form the tokenizers and the metrics compare.

    NFKC (composes accents, folds full-width forms and ligatures), lower-case, curly and other
    apostrophe look-alikes to ``'``, every character that is not a letter, digit or
    apostrophe to a space, apostrophes kept only between two word characters (``don't``
    stays; quotes like ``'hello'`` and a trailing possessive ``students'`` lose theirs),
    whitespace collapsed and stripped. Digits are kept as they are (no number expansion).

    >>> normalize_text("  \u201cDon\u2019t\u201d  STOP -- well-known!  ")
    "don't stop well known"
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    out = []
    for i, c in enumerate(text):
        if _is_word_char(c):
            out.append(c)
        elif (
            c == "'"
            and 0 < i < len(text) - 1
            and _is_word_char(text[i - 1])
            and _is_word_char(text[i + 1])
        ):
            out.append(c)
        else:
            out.append(" ")
    return " ".join("".join(out).split())


class TokenizerError(ValueError):
    """Text the tokenizer cannot encode, ids it cannot decode, or a bad tokenizer spec."""


class Tokenizer(ABC):
    """id <-> token map for CTC. Token 0 is always the blank."""

    blank_id: int = 0
    tokens: list[str]  # id -> token string; tokens[0] == BLANK
    word_delimiter: str  # "|" for characters, "▁" (prefix of word-initial pieces) for BPE

    @property
    def vocab_size(self) -> int:
        """Number of output classes of the acoustic model, blank included."""
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of normalised ``text`` (no blanks). Raises TokenizerError on unknown chars."""

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; blanks are dropped, repeats are NOT collapsed (the decoder's job)."""

    @abstractmethod
    def unknown_chars(self, text: str) -> set[str]:
        """Characters of ``text`` (other than the space) that cannot be encoded."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description with a ``"type"`` key; see :meth:`from_dict`."""

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer saved with :meth:`to_dict` (dispatches on ``d["type"]``)."""
        if not isinstance(d, dict) or "type" not in d:
            raise TokenizerError("tokenizer spec must be a dict with a 'type' key")
        kinds: dict[str, type[Tokenizer]] = {"char": CharTokenizer, "bpe": BpeTokenizer}
        if d["type"] not in kinds:
            raise TokenizerError(f"unknown tokenizer type {d['type']!r} (known: {sorted(kinds)})")
        return kinds[d["type"]]._from_dict(d)

    @classmethod
    @abstractmethod
    def _from_dict(cls, d: dict[str, Any]) -> Tokenizer: ...

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self.tokens)]
        if bad:
            raise TokenizerError(f"ids out of range [0, {len(self.tokens)}): {bad[:10]}")
        return ids

    def _raise_unknown(self, text: str) -> None:
        bad = self.unknown_chars(text)
        if bad:
            shown = ", ".join(repr(c) for c in sorted(bad))
            raise TokenizerError(f"characters not in the vocabulary: {shown} (in {text!r})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """One token per character; the space between words is the token ``"|"``.

    ``tokens = ["<blank>", "|", *sorted(chars)]``.
    """

    word_delimiter = WORD_DELIMITER

    def __init__(self, chars: Iterable[str]) -> None:
        chars = set(chars) - {" "}
        bad = sorted(c for c in chars if len(c) != 1 or c == WORD_DELIMITER or c.isspace())
        if bad:
            raise TokenizerError(
                f"characters must be single non-space characters other than {WORD_DELIMITER!r}: {bad}"
            )
        self.tokens = [BLANK, WORD_DELIMITER, *sorted(chars)]
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._ids[" "] = self._ids[WORD_DELIMITER]
        del self._ids[WORD_DELIMITER]  # a literal "|" in text is not the space token
        del self._ids[BLANK]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """Vocabulary = every character used in (normalised) ``texts``."""
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls(chars)

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in text if c not in self._ids}

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError:
            self._raise_unknown(text)
            raise

    def decode(self, ids: Sequence[int]) -> str:
        # Whitespace is collapsed so that "|" runs and edge "|"s (common in CTC output)
        # give the same word string as the normalised reference.
        s = "".join(
            " " if i == 1 else self.tokens[i] for i in self._check_ids(ids) if i != self.blank_id
        )
        return " ".join(s.split())

    def to_dict(self) -> dict[str, Any]:
        return {"type": "char", "tokens": list(self.tokens)}

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        tokens = d.get("tokens")
        if not isinstance(tokens, list) or tokens[:2] != [BLANK, WORD_DELIMITER]:
            raise TokenizerError(
                f"char tokenizer spec needs tokens starting with {[BLANK, WORD_DELIMITER]}"
            )
        tok = cls(tokens[2:])
        if tok.tokens != tokens:
            raise TokenizerError("char tokenizer tokens must be sorted and unique after '|'")
        return tok


class BpeTokenizer(Tokenizer):
    """Subword units from a sentencepiece model; our id = sentencepiece id + 1 (blank = 0).

    The model is trained with ``unk_id=0`` and no bos/eos/pad, so ``tokens[1] == "<unk>"``.
    The serialized model bytes are kept so the tokenizer can be saved (base64 in
    :meth:`to_dict`) and pickled for DataLoader workers.
    """

    word_delimiter = "\u2581"  # "▁": sentencepiece marks word-initial pieces with it

    def __init__(self, model_proto: bytes) -> None:
        self._load(model_proto)

    def _load(self, model_proto: bytes) -> None:
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"invalid sentencepiece model: {e}") from e
        n = self._sp.get_piece_size()
        if self._sp.unk_id() != 0 or any(
            x >= 0 for x in (self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id())
        ):
            raise TokenizerError("sentencepiece model must have unk_id=0 and no bos/eos/pad")
        self.tokens = [BLANK, *(self._sp.id_to_piece(i) for i in range(n))]
        # Characters the model can spell: with character_coverage=1.0 every training
        # character is a piece of its own. Anything else would become <unk>.
        self._chars = {c for p in self.tokens[2:] for c in p.replace(self.word_delimiter, "") if c}

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        model_type: str = "bpe",
        character_coverage: float = 1.0,
        seed_sentencepiece_size: int = 1_000_000,
    ) -> BpeTokenizer:
        """Train a sentencepiece model in memory.

        Args:
            texts: normalised transcripts (an iterator is fine; it is consumed once).
            vocab_size: total number of classes INCLUDING the CTC blank, i.e. the
                sentencepiece vocabulary has ``vocab_size - 1`` pieces (``<unk>`` included).
            model_type: ``"bpe"`` or ``"unigram"``.
            character_coverage: 1.0 keeps every character seen (right for small alphabets).
        """
        if vocab_size < 3:
            raise TokenizerError(
                f"vocab_size must be >= 3 (blank, <unk>, one piece); got {vocab_size}"
            )
        writer = io.BytesIO()
        sentences = (t for t in texts if t.strip())
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=writer,
                vocab_size=vocab_size - 1,
                model_type=model_type,
                character_coverage=character_coverage,
                seed_sentencepiece_size=seed_sentencepiece_size,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                # Text is already normalised by normalize_text; sentencepiece's default NFKC
                # rule would be a second, different normaliser.
                normalization_rule_name="identity",
                minloglevel=2,
            )
        except RuntimeError as e:
            # e.g. "Vocabulary size too high (400). Please set it to a value <= 132."
            raise TokenizerError(f"sentencepiece training failed: {str(e).split('] ')[-1]}") from e
        return cls(writer.getvalue())

    @property
    def model_proto(self) -> bytes:
        """The serialized sentencepiece model."""
        return self._proto

    def unknown_chars(self, text: str) -> set[str]:
        return {c for c in text if c != " " and c not in self._chars}

    def encode(self, text: str) -> list[int]:
        self._raise_unknown(text)
        return [i + 1 for i in self._sp.encode(text, out_type=int)]

    def decode(self, ids: Sequence[int]) -> str:
        pieces = [i - 1 for i in self._check_ids(ids) if i != self.blank_id]
        return " ".join(self._sp.decode(pieces).split())

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "bpe",
            "model": base64.b64encode(self._proto).decode("ascii"),
            "tokens": list(self.tokens),  # informational; the model bytes are authoritative
        }

    @classmethod
    def _from_dict(cls, d: dict[str, Any]) -> BpeTokenizer:
        if not isinstance(d.get("model"), str):
            raise TokenizerError("bpe tokenizer spec needs 'model' (base64 sentencepiece model)")
        try:
            proto = base64.b64decode(d["model"], validate=True)
        except ValueError as e:
            raise TokenizerError(f"bpe tokenizer 'model' is not valid base64: {e}") from e
        tok = cls(proto)
        if "tokens" in d and d["tokens"] != tok.tokens:
            raise TokenizerError("bpe tokenizer 'tokens' do not match its model")
        return tok

    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self._proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._load(state["model_proto"])
