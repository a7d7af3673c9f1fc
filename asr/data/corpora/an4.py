"""CMU AN4 (census database, close-talking microphone): the classic small benchmark.

Layout, as the publisher's repository ships it (github.com/cmusphinx/an4)::

    SRC/etc/an4_{train,test}.fileids        an4_clstk/fash/an251-fash-b  (relative to wav/)
    SRC/etc/an4_{train,test}.transcription  <s> YES </s> (an251-fash-b)   (train)
                                            RUBOUT G M E F (an406-fcaw-b)  (test: no <s> </s>)
    SRC/wav/an4_clstk/<spk>/<id>.wav        train: 948 utterances, 74 speakers
    SRC/wav/an4test_clstk/<spk>/<id>.wav    test: 130 utterances, 10 speakers

The audio may be ``.wav`` (as published) or ``.flac`` (a lossless re-encoding): the first
that exists is used. The speaker is the fileid's folder. Spelled letters stay words
("R O B E R T"), as every published AN4 score counts them. Dev: 7 of the 74 train speakers
(~10%), chosen by the seed; test is the publisher's 130-utterance test set.
"""

from __future__ import annotations

import re
from pathlib import Path

from asr.data.corpora import CorpusError, CorpusOptions, DevSplit, RawItem
from asr.data.download import Archive, fetch_and_extract

DESCRIPTION = "CMU AN4 census database: 948 train / 130 test utterances, 16 kHz"
DEV_DEFAULT = DevSplit(speakers=7)

# GitHub builds archives on demand and does not promise byte-stable output, so there is no
# checksum to pin: the archive's integrity is checked on extraction and find_items checks
# the layout afterwards. The commit is pinned so the content is fixed.
COMMIT = "b567d13"
ARCHIVE = Archive(url=f"https://github.com/cmusphinx/an4/archive/{COMMIT}.tar.gz")

_SPLITS = {"train": "an4_train", "test": "an4_test"}
_AUDIO_EXTENSIONS = (".wav", ".flac")
# "<s> TEXT </s> (utt-id)" (train) or "TEXT (utt-id)" (test); the id is the last (...) group.
_LINE = re.compile(r"^(?P<text>.*?)\s*\((?P<id>[^()\s]+)\)\s*$")
_MARKERS = {"<s>", "</s>", "<sil>"}


def is_present(src: Path, options: CorpusOptions) -> bool:
    return (src / "etc" / "an4_train.fileids").is_file()


def download(src: Path, options: CorpusOptions) -> None:
    fetch_and_extract(ARCHIVE, src, only_under=("etc", "wav", "LICENSE"))  # LICENSE: CMU's notice


def parse_transcription(line: str) -> tuple[str, str] | None:
    """``"<s> YES </s> (an251-fash-b)"`` -> ``("an251-fash-b", "YES")``; None if malformed.

    Both published formats are accepted: with the sentence markers (train) and without (test).
    """
    m = _LINE.match(line.strip())
    if m is None:
        return None
    words = [w for w in m.group("text").split() if w.lower() not in _MARKERS]
    return m.group("id"), " ".join(words)


def _audio_path(wav_dir: Path, fileid: str) -> Path:
    for ext in _AUDIO_EXTENSIONS:
        path = wav_dir / (fileid + ext)
        if path.exists():
            return path
    return wav_dir / (fileid + _AUDIO_EXTENSIONS[0])  # missing: validation rejects it by name


def _read_split(src: Path, split: str) -> list[RawItem]:
    stem = _SPLITS[split]
    fileids_path = src / "etc" / f"{stem}.fileids"
    trans_path = src / "etc" / f"{stem}.transcription"
    for path in (fileids_path, trans_path):
        if not path.is_file():
            raise CorpusError(f"{src}: missing etc/{path.name} (expected the AN4 layout here)")
    try:
        fileids = [ln.strip() for ln in fileids_path.read_text(encoding="utf-8").splitlines()]
        trans_lines = trans_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{src}: etc/{stem}.*: not UTF-8 text ({e.reason})") from e
    texts: dict[str, str] = {}
    items: list[RawItem] = []
    for lineno, line in enumerate(trans_lines, start=1):
        if not line.strip():
            continue
        parsed = parse_transcription(line)
        if parsed is None:
            raise CorpusError(f"{trans_path}:{lineno}: not 'TEXT (utterance-id)': {line[:60]!r}")
        uid, text = parsed
        if uid in texts:
            raise CorpusError(f"{trans_path}:{lineno}: duplicate utterance id {uid}")
        texts[uid] = text
    listed: set[str] = set()
    for fileid in fileids:
        if not fileid:
            continue
        parts = fileid.split("/")
        uid = parts[-1]
        speaker = parts[-2] if len(parts) >= 2 else ""
        listed.add(uid)
        audio = _audio_path(src / "wav", fileid)
        problem = None
        if uid not in texts:
            problem = f"no transcript in {trans_path}"
        elif not texts[uid]:
            problem = f"empty transcript in {trans_path}"
        elif not speaker:
            problem = f"{fileids_path}: fileid {fileid!r} has no speaker folder"
        items.append(RawItem(uid, audio, texts.get(uid, ""), speaker, split, problem=problem))
    # Transcripts without a fileid are listed too, so nothing disappears silently.
    for uid in sorted(set(texts) - listed):
        items.append(
            RawItem(
                uid, fileids_path, texts[uid], "", split, problem=f"not listed in {fileids_path}"
            )
        )
    return items


def find_items(src: Path, options: CorpusOptions) -> list[RawItem]:
    if not is_present(src, options):
        raise CorpusError(
            f"{src}: no etc/an4_train.fileids (expected the AN4 layout: etc/ and wav/ here)"
        )
    items = _read_split(src, "train")
    if (src / "etc" / "an4_test.fileids").is_file():
        items += _read_split(src, "test")
    return items
