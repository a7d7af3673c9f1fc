"""Lexicons and language-model side files for the beam search decoder.

- :func:`write_lexicon` spells words (e.g. an LM's vocabulary) with the tokenizer's tokens;
  :func:`copy_user_lexicon` copies a user's lexicon into the form the search needs. Both
  spell each word with :func:`search_spellings` (a trailing "|" for characters, the last
  unit doubled for word pieces, and for the phone head's phones in :mod:`asr.decode.phones`), the
  rule's one home; why is explained in :mod:`asr.decode.beam`, whose
  :class:`~asr.decode.beam.BeamSearchDecoder` uses them.
- :func:`lm_vocabulary` lists a KenLM model's words: an ARPA file's unigrams, or a binary's
  ``<lm>.vocab`` side file (:data:`LM_VOCAB_SUFFIX`, written by ``asr lm build``).
- :func:`load_tuned_weights` reads ``<lm>.tune.json`` (:data:`LM_TUNE_SUFFIX`, written by
  ``asr lm tune``).

- :func:`is_token_level_lm` tells a token-level LM (lexicon-free search) from a word LM.
- :class:`DecoderError` is raised here and by the decoders; it is defined here, the lowest
  module that raises it, and :mod:`asr.decode.decoding` re-exports it with the decoder API.

Below :mod:`asr.decode.decoding` and :mod:`asr.decode.beam` in the import order: they import this module, never the reverse.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from asr.files import atomic_write_text
from asr.text import Tokenizer

LM_VOCAB_SUFFIX = ".vocab"  # "lm.bin.vocab": one word per line, written by `asr lm build`
LM_TUNE_SUFFIX = ".tune.json"  # "lm.bin.tune.json": best lm_weight/word_score from `asr lm tune`
_LM_SPECIAL_WORDS = frozenset({"<s>", "</s>", "<unk>"})  # KenLM's own entries, never spoken
_KENLM_BINARY_MAGIC = b"mmap lm "  # first bytes of every KenLM binary file


class DecoderError(ValueError):
    """Bad decoder input: a missing/unreadable LM or lexicon, or log-probs of the wrong shape."""


def uses_word_pieces(tokenizer: Tokenizer) -> bool:
    """Whether the tokens are word pieces: BPE/sentencepiece word-initial pieces carry the
    delimiter as a prefix ("▁the"); for characters the delimiter is a token of its own ("|")
    and no other token starts with it."""
    d = tokenizer.word_delimiter
    return any(t != d and t.startswith(d) for t in tokenizer.tokens)


def write_lexicon(words: Iterable[str], tokenizer: Tokenizer, path: str | os.PathLike) -> list[str]:
    """Write a flashlight lexicon: one ``word<TAB>tok tok ...`` line per spellable word.

    Each word is spelled with ``tokenizer.encode(word)``, i.e. the tokens the acoustic model
    was trained to emit for it: characters plus a trailing "|" for a CharTokenizer (``c a t
    |``: flashlight needs the delimiter to end a word, see :mod:`asr.decode.beam`), word pieces
    starting with "▁" for a BpeTokenizer (no delimiter token: a word ends where the next
    "▁" piece begins), written twice: as encoded and with its last piece doubled, so that the
    word can hold its last piece over several frames (:mod:`asr.decode.beam`).

    Args:
        words: normalised words (e.g. an LM's vocabulary); duplicates, empty strings and
            KenLM's ``<s>``, ``</s>``, ``<unk>`` are ignored.

    Returns:
        The words that were skipped because the tokenizer cannot spell them.

    Raises:
        DecoderError: not a single word could be spelled.
    """
    from asr.text import TokenizerError

    seen: set[str] = set()
    lines: list[str] = []
    skipped: list[str] = []
    delimiter = search_delimiter(tokenizer)
    for word in words:
        if not word or word in seen or word in _LM_SPECIAL_WORDS:
            continue
        seen.add(word)
        if any(c.isspace() for c in word) or tokenizer.unknown_chars(word):
            skipped.append(word)
            continue
        try:
            ids = tokenizer.encode(word)
        except TokenizerError:
            skipped.append(word)
            continue
        if not ids:
            skipped.append(word)
            continue
        for sp in search_spellings([tokenizer.tokens[i] for i in ids], delimiter):
            lines.append(word + "\t" + " ".join(sp) + "\n")
    if not lines:
        raise DecoderError(
            f"{path}: none of the {len(seen)} words can be spelled with the tokenizer's tokens "
            f"(e.g. {sorted(seen)[:5]}); is the word list in the same script/normalisation?"
        )
    atomic_write_text(Path(path), "".join(lines))
    return skipped


def search_spellings(spelling: Sequence[str], delimiter: str | None) -> list[list[str]]:
    """The lexicon spellings our beam search needs for one word (:mod:`asr.decode.beam`), the
    one home of this rule. With a word ``delimiter`` token (characters) the spelling ends with
    it; units without one (word pieces, the phone head's phones: ``delimiter`` None) come
    twice, once with the last unit doubled, so the word can hold its last unit over several
    frames."""
    units = list(spelling)
    if delimiter is None:
        return [units, units + units[-1:]]
    return [units if units[-1] == delimiter else units + [delimiter]]


def search_delimiter(tokenizer: Tokenizer) -> str | None:
    """The delimiter that ends each lexicon spelling of ``tokenizer``'s words (see
    :func:`search_spellings`): its word delimiter for characters, None for word pieces."""
    return None if uses_word_pieces(tokenizer) else tokenizer.word_delimiter


def copy_user_lexicon(src: str, dst: str, tokenizer: Tokenizer) -> None:
    """Copy a user's lexicon to ``dst`` in the form our search needs (:mod:`asr.decode.beam`).

    Characters: every spelling ends with "|". Lexicons written for flashlight usually spell
    "c a t |" already; ones spelled "c a t" (what :func:`write_lexicon` wrote before) would
    hit the repeated-last-character problem. Word pieces: every spelling also gets a copy
    with its last piece doubled, as :func:`write_lexicon` writes them. Unknown tokens are
    reported here, with the line, rather than by flashlight's terse dictionary error.

    Raises:
        DecoderError: unreadable file, a line without a spelling, or an unknown token.
    """
    delimiter = search_delimiter(tokenizer)
    known = set(tokenizer.tokens)
    out: list[str] = []
    seen: set[tuple[str, ...]] = set()  # "cat: c a t" and "cat: c a t |" become one entry
    try:
        text = Path(src).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DecoderError(f"{src}: cannot read lexicon: {e}") from e
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()  # flashlight splits on any whitespace, word first
        if not fields:
            continue
        if len(fields) < 2:
            raise DecoderError(f"{src}:{lineno}: word {fields[0]!r} has no spelling")
        word, spelling = fields[0], fields[1:]
        unknown = sorted(set(spelling) - known)
        if unknown:
            raise DecoderError(
                f"{src}:{lineno}: spelling of {word!r} uses tokens the tokenizer lacks: {unknown}"
            )
        for sp in search_spellings(spelling, delimiter):
            key = (word, *sp)
            if key not in seen:
                seen.add(key)
                out.append(word + "\t" + " ".join(sp) + "\n")
    if not out:
        raise DecoderError(f"{src}: lexicon has no entries")
    atomic_write_text(Path(dst), "".join(out))


def _is_kenlm_binary(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_KENLM_BINARY_MAGIC)) == _KENLM_BINARY_MAGIC


def _read_arpa_unigrams(path: Path) -> list[str]:
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    words: list[str] = []
    in_unigrams = False
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not in_unigrams:
                if line == "\\1-grams:":
                    in_unigrams = True
                continue
            if not line or line.startswith("\\"):
                break
            fields = line.split("\t") if "\t" in line else line.split()
            if len(fields) < 2:
                raise DecoderError(f"{path}: malformed ARPA unigram line {line!r}")
            words.append(fields[1])
    if not in_unigrams:
        raise DecoderError(f"{path}: not an ARPA file (no \\1-grams: section)")
    return words


@functools.lru_cache(maxsize=8)
def _lm_vocabulary_cached(path: str, mtime_ns: int, size: int) -> tuple[str, ...]:
    p = Path(path)
    if not _is_kenlm_binary(p):
        return tuple(w for w in _read_arpa_unigrams(p) if w not in _LM_SPECIAL_WORDS)
    side = Path(path + LM_VOCAB_SUFFIX)
    if not side.is_file():
        raise DecoderError(
            f"{path}: binary KenLM model without its vocabulary list {side.name}; pass a lexicon "
            f"(see write_lexicon), use the ARPA file, or rebuild it with `asr lm build`"
        )
    words = side.read_text(encoding="utf-8").split()
    return tuple(w for w in words if w not in _LM_SPECIAL_WORDS)


def lm_vocabulary(lm_path: str | os.PathLike) -> list[str]:
    """Words of a KenLM model (without ``<s>``, ``</s>``, ``<unk>``).

    ARPA files (plain or gzip) are read directly. KenLM binary files store a hashed
    vocabulary that cannot be listed, so they need the ``<lm>.vocab`` side file written by
    :func:`asr.decode.lm.build_lm`.

    Raises:
        DecoderError: the file is missing, not ARPA, or a binary without its side file.
    """
    p = Path(lm_path)
    try:
        st = p.stat()
    except OSError as e:
        raise DecoderError(f"{p}: cannot read language model: {e.strerror or e}") from e
    return list(_lm_vocabulary_cached(str(p), st.st_mtime_ns, st.st_size))


def load_tuned_weights(lm_path: str | os.PathLike) -> dict[str, float] | None:
    """``{"lm_weight", "word_score"}`` saved by ``asr lm tune`` next to the LM (and
    ``"phone_weight"`` when it was tuned with a phone-head package), or None."""
    side = Path(str(lm_path) + LM_TUNE_SUFFIX)
    if not side.is_file():
        return None
    try:
        d = json.loads(side.read_text(encoding="utf-8"))
        out = {"lm_weight": float(d["lm_weight"]), "word_score": float(d["word_score"])}
        if d.get("phone_weight") is not None:
            out["phone_weight"] = float(d["phone_weight"])
            if not 0.0 <= out["phone_weight"] <= 1.0:
                raise ValueError(f"phone_weight {out['phone_weight']} is outside [0, 1]")
        return out
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DecoderError(f"{side}: malformed tuning file: {e}") from e


def is_token_level_lm(lm_path: Path, tokenizer: Tokenizer) -> bool:
    """Whether the LM's words are the tokenizer's tokens (a char/piece LM for lexicon-free)."""
    units = [t for t in tokenizer.tokens[1:] if t not in _LM_SPECIAL_WORDS]
    try:
        vocab: set[str] | None = set(lm_vocabulary(lm_path))
    except DecoderError:
        if not _is_kenlm_binary(lm_path):
            raise
        vocab = None
    if vocab is not None:
        # Most tokens present AND most of the LM's words are tokens: a token LM. The second
        # half matters: a word LM built from broad text lists every letter as a "word"
        # (initials, list items, "x marks the spot"), and taking such a 20k-word LM for a
        # character LM made the beam score every character as a word (measured: dev WER up
        # from 73% to 77-98% with the LM on, and tuning then chose weight 0).
        words = vocab - _LM_SPECIAL_WORDS
        hits = sum(u in words for u in units)
        return hits >= 0.5 * len(units) and hits >= 0.5 * len(words)
    # A binary without its side file lists no vocabulary: ask KenLM about each token. A word
    # LM of everyday text usually lacks most single letters; one that has them all is taken for
    # a token LM here, which is why `asr lm build` always writes the side file.
    import kenlm

    model = kenlm.Model(str(lm_path))
    return sum(u in model for u in units) >= 0.5 * len(units)
