"""yesno (OpenSLR resource 1): 60 recordings of one speaker saying eight "yes"/"no" words.

Layout: ``SRC/waves_yesno/*.wav`` (8 kHz), each file named by its content, e.g.
``0_1_1_0_0_1_1_0.wav`` = "no yes yes no no yes yes no". Other files (the README) are ignored.

Split: the customary one, first half of the sorted files (30 of 60) -> train, the rest -> test.
There is a single speaker, so a speaker-disjoint dev set is impossible: dev is a few
utterances carved from train (5 of 30 by default), chosen by the seed.
"""

from __future__ import annotations

import re
from pathlib import Path

from asr.data.corpora import CorpusError, CorpusOptions, DevSplit, RawItem
from asr.data.download import Archive, fetch_and_extract

DESCRIPTION = "yesno (OpenSLR 1): 60 files x 8 yes/no words, one speaker, 8 kHz"
DEV_DEFAULT = DevSplit(fraction=1 / 6)  # 5 of the 30 train utterances (single speaker)
SPEAKER = "yesno"  # the corpus has one (unnamed) speaker

# sha256 as published with torchaudio.datasets.YESNO for this exact URL.
ARCHIVE = Archive(
    url="https://www.openslr.org/resources/1/waves_yesno.tar.gz",
    sha256="c3f49e0cca421f96b75b41640749167b52118f232498667ca7a5f9416aef8e73",
)

_NAME = re.compile(r"^[01](?:_[01])*$")
_WORDS = {"0": "no", "1": "yes"}


def _wave_dir(src: Path) -> Path:
    return src / "waves_yesno" if (src / "waves_yesno").is_dir() else src


def is_present(src: Path, options: CorpusOptions) -> bool:
    return any(_wave_dir(src).glob("*.wav"))


def download(src: Path, options: CorpusOptions) -> None:
    fetch_and_extract(ARCHIVE, src)  # the tarball holds waves_yesno/


def find_items(src: Path, options: CorpusOptions) -> list[RawItem]:
    wave_dir = _wave_dir(src)
    files = sorted(p for p in wave_dir.glob("*.wav") if p.is_file())
    if not files:
        raise CorpusError(f"{src}: no waves_yesno/*.wav files (expected the yesno corpus here)")
    n_train = len(files) // 2  # 30 of the published 60
    items = []
    for i, path in enumerate(files):
        split = "train" if i < n_train else "test"
        if _NAME.match(path.stem):
            text, problem = " ".join(_WORDS[b] for b in path.stem.split("_")), None
        else:
            text, problem = "", "file name does not encode the yes/no labels (like 0_1_1_0.wav)"
        items.append(RawItem(path.stem, path, text, SPEAKER, split, problem=problem))
    return items
