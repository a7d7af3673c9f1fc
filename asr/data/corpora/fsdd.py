"""Free Spoken Digit Dataset: 3000 isolated digits, 6 speakers, 8 kHz WAV.

Layout: ``SRC/recordings/{digit}_{speaker}_{index}.wav``; the transcript is the digit's
English word ("zero".."nine"). The publisher's split: index 0-4 -> test, 5-49 -> train.
Dev: one of the six speakers' train utterances, chosen by the seed (speaker-disjoint).
"""

from __future__ import annotations

import re
from pathlib import Path

from asr.data.corpora import CorpusError, CorpusOptions, DevSplit, RawItem
from asr.data.download import Archive, fetch_and_extract

DESCRIPTION = "Free Spoken Digit Dataset: 3000 digits zero..nine, 6 speakers, 8 kHz"
DEV_DEFAULT = DevSplit(speakers=1)

# GitHub builds archives on demand and does not promise byte-stable output, so there is no
# checksum to pin: the zip's CRCs are verified on extraction and find_items checks the
# layout afterwards. The commit is pinned so the content is fixed.
COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
ARCHIVE = Archive(
    url=f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{COMMIT}.zip"
)

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_NAME = re.compile(r"^(\d)_([A-Za-z0-9]+)_(\d+)$")
_TEST_INDICES = range(0, 5)  # publisher's test split


def is_present(src: Path, options: CorpusOptions) -> bool:
    return any((src / "recordings").glob("*.wav"))


def download(src: Path, options: CorpusOptions) -> None:
    fetch_and_extract(ARCHIVE, src, only_under="recordings")


def find_items(src: Path, options: CorpusOptions) -> list[RawItem]:
    files = sorted(p for p in (src / "recordings").glob("*.wav") if p.is_file())
    if not files:
        raise CorpusError(f"{src}: no recordings/*.wav files (expected the FSDD corpus here)")
    items = []
    for path in files:
        m = _NAME.match(path.stem)
        if not m:
            items.append(
                RawItem(
                    path.stem,
                    path,
                    "",
                    "",
                    "train",
                    problem="file name is not {digit}_{speaker}_{index}.wav",
                )
            )
            continue
        digit, speaker, index = m.group(1), m.group(2), int(m.group(3))
        split = "test" if index in _TEST_INDICES else "train"
        items.append(RawItem(path.stem, path, WORDS[int(digit)], speaker, split))
    return items
