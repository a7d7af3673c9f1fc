"""Corpus readers: one module per corpus, each turning a published layout into raw items.

A corpus module exposes:

- ``DESCRIPTION``: one line for ``--help``;
- ``DEV_DEFAULT``: :class:`DevSplit`, how a dev set is carved from train when the corpus has none;
- ``find_items(src: Path, options: CorpusOptions) -> list[RawItem]``: raises
  :class:`CorpusError` when ``src`` does not hold the corpus; items that the reader itself
  finds broken (e.g. a name that does not encode a label) carry ``problem`` and are rejected;
- ``is_present(src: Path, options) -> bool`` and ``download(src: Path, options) -> None``
  (the latter raising ``asr.data.download.DownloadError``) for ``--download``.

Readers only list what the corpus publishes; the audio/text validation common to every
corpus lives in :mod:`asr.data.prepare`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

SPLITS = ("train", "dev", "test")

CORPORA = ("yesno", "fsdd", "an4", "speechocean762", "librispeech", "folder")


class CorpusError(ValueError):
    """``src`` does not hold the corpus in its published layout (message names what is missing)."""


@dataclass(frozen=True)
class RawItem:
    """One utterance as the corpus lists it, before validation."""

    id: str  # unique utterance id
    audio: Path  # audio file
    text: str  # transcript as published (normalised later)
    speaker: str  # speaker id ("" when unknown)
    split: str  # "train" | "dev" | "test": the corpus' own split (dev may be carved later)
    offset: float = 0.0  # seconds into ``audio`` (segments of long recordings)
    duration: float | None = None  # seconds of the segment; None = to the end of the file
    problem: str | None = None  # a defect the reader found (item will be rejected with it)


@dataclass(frozen=True)
class DevSplit:
    """How to carve dev out of train: a number of speakers or a fraction of them.

    With a single speaker the fraction applies to utterances instead (dev is then not
    speaker-disjoint, which the summary states).
    """

    speakers: int | None = None  # number of train speakers moved to dev
    fraction: float | None = None  # fraction of train speakers (or utterances, one speaker)


@dataclass(frozen=True)
class CorpusOptions:
    """Options some readers take (others ignore them)."""

    list_file: Path | None = None  # folder: CSV/TSV with path,text[,speaker] columns
    subsets: tuple[str, ...] = field(default_factory=tuple)  # librispeech: subsets to read


def get_corpus(name: str) -> ModuleType:
    """The reader module of corpus ``name`` (one of :data:`CORPORA`)."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})")
    return importlib.import_module(f"asr.data.corpora.{name}")
