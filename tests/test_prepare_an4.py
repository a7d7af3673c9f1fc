"""asr prepare an4: the publisher's layout, both transcription formats, wav or flac."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.cli import main
from asr.data import download as dl
from asr.data.corpora import CorpusError, CorpusOptions, get_corpus
from asr.data.corpora.an4 import parse_transcription
from asr.data.prepare import PrepareOptions, prepare_corpus


def _tone(path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format=fmt)


def make_an4(root: Path, ext: str = "wav") -> Path:
    """A tiny AN4 tree: 3 train speakers x 2 utterances, 1 test speaker x 2."""
    fmt = "WAV" if ext == "wav" else "FLAC"
    etc = root / "etc"
    etc.mkdir(parents=True)
    train_ids, train_lines = [], []
    for spk in ("fash", "fbbh", "mcen"):
        for n, text in ((1, "YES"), (2, "R O B E R T")):
            uid = f"an{n}-{spk}-b"
            train_ids.append(f"an4_clstk/{spk}/{uid}")
            train_lines.append(f"<s> {text} </s> ({uid})")
            _tone(root / "wav" / "an4_clstk" / spk / f"{uid}.{ext}", fmt)
    test_ids = ["an4test_clstk/fcaw/an406-fcaw-b", "an4test_clstk/fcaw/an407-fcaw-b"]
    test_lines = ["RUBOUT G M E F THREE NINE (an406-fcaw-b)", "ERASE C Q Q F SEVEN (an407-fcaw-b)"]
    for fid in test_ids:
        _tone(root / "wav" / f"{fid}.{ext}", fmt)
    (etc / "an4_train.fileids").write_text("\n".join(train_ids) + "\n")
    (etc / "an4_train.transcription").write_text("\n".join(train_lines) + "\n")
    (etc / "an4_test.fileids").write_text("\n".join(test_ids) + "\n")
    (etc / "an4_test.transcription").write_text("\n".join(test_lines) + "\n")
    return root


def test_parse_both_transcription_formats():
    assert parse_transcription("<s> YES </s> (an251-fash-b)") == ("an251-fash-b", "YES")
    assert parse_transcription("RUBOUT G M E F THREE NINE (an406-fcaw-b)") == (
        "an406-fcaw-b",
        "RUBOUT G M E F THREE NINE",
    )
    assert parse_transcription("<s> ENTER SIX </s>  (cen1-fash-b)  ") == (
        "cen1-fash-b",
        "ENTER SIX",
    )
    assert parse_transcription("no id here") is None


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_an4_reader_splits_by_speaker(tmp_path, ext):
    src = make_an4(tmp_path / "an4", ext)
    result = prepare_corpus("an4", src, tmp_path / "out", PrepareOptions(dev_speakers=1, seed=3))
    train, dev, test = (result.splits[s] for s in ("train", "dev", "test"))
    assert not result.rejected
    assert len(train) == 4 and len(dev) == 2 and len(test) == 2
    assert not {u.speaker for u in train} & {u.speaker for u in dev}
    assert {u.speaker for u in test} == {"fcaw"}
    texts = {u.id: u.text for s in result.splits.values() for u in s}
    assert texts["an2-fash-b"] == "r o b e r t"  # spelled letters stay words; markers dropped
    assert texts["an406-fcaw-b"] == "rubout g m e f three nine"
    assert all(u.audio.endswith(f".{ext}") for s in result.splits.values() for u in s)
    assert (tmp_path / "out" / "test.jsonl").is_file()


def test_an4_reader_rejects_with_reasons(tmp_path):
    src = make_an4(tmp_path / "an4")
    (src / "wav" / "an4_clstk" / "mcen" / "an1-mcen-b.wav").unlink()  # audio missing
    with open(src / "etc" / "an4_train.fileids", "a") as f:
        f.write("an4_clstk/mcen/an9-mcen-b\n")  # listed, no transcript
    with open(src / "etc" / "an4_train.transcription", "a") as f:
        f.write("<s> GO </s> (an8-mcen-b)\n")  # transcript, not listed
    result = prepare_corpus("an4", src, tmp_path / "out", PrepareOptions(dev_speakers=1))
    reasons = {r.id: r.reason for r in result.rejected}
    assert set(reasons) == {"an1-mcen-b", "an9-mcen-b", "an8-mcen-b"}
    assert "no transcript" in reasons["an9-mcen-b"] and "not listed" in reasons["an8-mcen-b"]
    assert (tmp_path / "out" / "rejected.jsonl").read_text().count("\n") == 3


def test_an4_reader_layout_errors(tmp_path):
    with pytest.raises(CorpusError, match="an4_train.fileids"):
        get_corpus("an4").find_items(tmp_path, CorpusOptions())
    src = make_an4(tmp_path / "an4")
    (src / "etc" / "an4_train.transcription").write_text("<s> YES </s>\n")
    with pytest.raises(CorpusError, match=r"an4_train.transcription:1"):
        get_corpus("an4").find_items(src, CorpusOptions())


def test_an4_cli_one_line_error(tmp_path, capsys):
    assert main(["prepare", "an4", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an4_train.fileids" in err[0]


def test_an4_download_keeps_etc_wav_and_license(tmp_path, monkeypatch):
    """--download: the GitHub archive's top folder is dropped, etc/, wav/ and LICENSE kept."""
    tree = make_an4(tmp_path / "tree")
    (tree / "LICENSE").write_text("Copyright CMU")
    (tree / "README.md").write_text("readme")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tree, arcname="an4-b567d13")
    monkeypatch.setattr(dl, "fetch", lambda archive, dest: _write(dest, buf.getvalue()))
    dest = tmp_path / "dl"
    get_corpus("an4").download(dest, CorpusOptions())
    assert (dest / "LICENSE").is_file() and not (dest / "README.md").exists()
    assert len(get_corpus("an4").find_items(dest, CorpusOptions())) == 8


def _write(dest: Path, data: bytes) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "an4.tar.gz"
    path.write_bytes(data)
    return path


@pytest.mark.slow
@pytest.mark.data
def test_real_an4(shared_data, tmp_path):
    result = prepare_corpus("an4", shared_data / "an4", tmp_path, PrepareOptions())
    assert not result.rejected
    train, dev, test = (result.splits[s] for s in ("train", "dev", "test"))
    assert len(train) + len(dev) == 948 and len(test) == 130
    assert len({u.speaker for u in dev}) == 7 and not {u.speaker for u in train} & {
        u.speaker for u in dev
    }
    assert sum(len(u.text.split()) for u in test) == 773  # the published scoring base
    assert sum(len(u.text) for u in test) == 2565
