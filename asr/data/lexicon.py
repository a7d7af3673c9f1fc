"""Pronunciation lexicon -> phone targets for the auxiliary phone CTC loss
(``model.phone_ctc_weight``, ``data.lexicon``).

Lexicon format: one entry per line, ``WORD<TAB or spaces>PH PH ...`` (CMUdict/Kaldi style,
as the speechocean762 publisher's ``resource/lexicon.txt``). Words match case-insensitively
(manifests hold normalised lower-case text; lexicons are usually upper-case). A word listed
more than once uses its first pronunciation; CMUdict's ``WORD(2)`` variants are ignored.
ARPAbet stress digits (AH0/AH1/AH2) are stripped: stress is of no use to a character model
and would split each vowel into three rarer classes.

Only the words of the *training* transcripts are looked up: a lexicon usually lists the test
sets' words as well, and it must not leak them into training (the phone inventory is that of
the training words' pronunciations; it is never a decoding vocabulary). An utterance with a
word the training pronunciations lack gets no phone targets; its phone loss is masked out
(its character loss trains as usual) and it is counted (:class:`Coverage`).

No grapheme-to-phoneme fallback: the one well-kept package, g2p_en, downloads NLTK data at
first use, which an offline machine cannot do.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from asr.data.manifest import utf8_lines

_STRESS = re.compile(r"(?<=[A-Za-z])[0-2]$")  # the ARPAbet stress digit of a vowel
_VARIANT = re.compile(r"\(\d+\)$")  # CMUdict's alternative pronunciations: WORD(2)


class LexiconError(ValueError):
    """A lexicon file that cannot be used (the message is ``file[:line]: problem``)."""


def strip_stress(phone: str) -> str:
    """``AH0`` -> ``AH``; phones without a stress digit are unchanged."""
    return _STRESS.sub("", phone)


def read_lexicon(path: str | Path, keep_stress: bool = False) -> dict[str, tuple[str, ...]]:
    """``{word (lower-case): phones}`` of a lexicon file; the first pronunciation of each word.

    Blank lines and ``;;;`` comments (CMUdict) are skipped; a word without phones is an error
    that names the line.
    """
    prons: dict[str, tuple[str, ...]] = {}
    try:
        for n, line in utf8_lines(path, LexiconError):
            fields = line.split()
            if not fields or fields[0].startswith(";;;"):
                continue
            if len(fields) < 2:
                raise LexiconError(f"{path}:{n}: word {fields[0]!r} has no phones (expected WORD PHONE PHONE ...)")
            word = fields[0].casefold()
            if _VARIANT.search(word):
                continue
            phones = tuple(fields[1:]) if keep_stress else tuple(strip_stress(p) for p in fields[1:])
            prons.setdefault(word, phones)
    except FileNotFoundError:
        raise LexiconError(f"{path}: lexicon not found") from None
    except OSError as e:
        raise LexiconError(f"{path}: cannot read lexicon ({e.strerror or e})") from None
    if not prons:
        raise LexiconError(f"{path}: lexicon has no entries")
    return prons


@dataclass
class Coverage:
    """How many utterances got phone targets, and the words that kept the others from it."""

    utterances: int = 0
    covered: int = 0
    missing_words: Counter[str] = field(default_factory=Counter)  # word -> utterances it occurs in

    def summary(self, what: str = "utterances", n: int = 8) -> str:
        """``N of M <what> (K words missing from the lexicon: a, b, ...)``."""
        head = f"{self.covered} of {self.utterances} {what}"
        if not self.missing_words:
            return head + " (no words missing from the lexicon)"
        first = ", ".join(w for w, _ in self.missing_words.most_common(n))
        more = ", ..." if len(self.missing_words) > n else ""
        return f"{head} ({len(self.missing_words)} words missing from the lexicon: {first}{more})"


class PhoneMap:
    """Transcript -> phone ids, from the pronunciations of the training words only.

    Id 0 is the CTC blank; phone ``phones[i]`` has id ``i + 1``, so the phone head has
    ``num_phones + 1`` outputs.
    """

    def __init__(self, prons: dict[str, tuple[str, ...]]) -> None:
        self.prons = dict(prons)
        self.phones: tuple[str, ...] = tuple(sorted({p for ps in self.prons.values() for p in ps}))
        self.index = {p: i + 1 for i, p in enumerate(self.phones)}

    @classmethod
    def build(cls, lexicon: dict[str, tuple[str, ...]], train_texts: Iterable[str]) -> tuple[PhoneMap, Coverage]:
        """The map of the training texts' words that ``lexicon`` has, and its coverage of them."""
        texts = list(train_texts)
        words = {w for t in texts for w in t.casefold().split()}
        phone_map = cls({w: lexicon[w] for w in sorted(words) if w in lexicon})
        return phone_map, phone_map.coverage(texts)

    @property
    def num_phones(self) -> int:
        return len(self.phones)

    def encode(self, text: str) -> list[int] | None:
        """Phone ids of ``text``'s words in order, or None when a word has no pronunciation."""
        ids: list[int] = []
        for word in text.casefold().split():
            phones = self.prons.get(word)
            if phones is None:
                return None
            ids.extend(self.index[p] for p in phones)
        return ids

    def coverage(self, texts: Sequence[str]) -> Coverage:
        cov = Coverage(utterances=len(texts))
        for t in texts:
            missing = {w for w in t.casefold().split() if w not in self.prons}
            cov.missing_words.update(missing)
            cov.covered += not missing
        return cov
