"""asr prepare: corpus readers, dev carving, validation of broken items, download errors."""

from __future__ import annotations

import io
import json
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.audio import load_audio
from asr.cli import main
from asr.data import download as dl
from asr.data.corpora import CorpusError, CorpusOptions, DevSplit, RawItem, get_corpus
from asr.data.dataset import ctc_min_frames, filter_utterances
from asr.data.manifest import Utterance, read_manifest
from asr.data.prepare import PrepareError, PrepareOptions, carve_dev, prepare_corpus
from asr.data.prepare.options import ENGLISH_VOCAB
from asr.data.prepare.validate import ctc_problem, validate_items
from asr.features import FeatureConfig
from asr.files import sha256_digest
from asr.model import ConvSubsampling
from asr.text import CharTokenizer


def write_tone(path: Path, seconds: float = 0.5, sr: int = 16000, channels: int = 1, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(sr * seconds)) / sr
    x = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, sr, **kw)
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "text,frames",
    [("a", 1), ("ab", 2), ("aa", 3), ("a b", 3), ("hello", 6), ("see all", 9), ("", 0)],
)
def test_ctc_min_frames(text, frames):
    assert ctc_min_frames(text) == frames


def _items(speakers: dict[str, int]) -> list[RawItem]:
    return [
        RawItem(f"{s}-{i}", Path(f"{s}-{i}.wav"), "x", s, "train")
        for s, n in speakers.items()
        for i in range(n)
    ] + [RawItem("t-0", Path("t.wav"), "x", "a", "test")]


def test_carve_dev_by_speaker_deterministic_and_disjoint():
    items = _items({f"s{i:02d}": 3 for i in range(20)})
    a, note = carve_dev(items, DevSplit(fraction=0.1), seed=1)
    b, _ = carve_dev(list(reversed(items)), DevSplit(fraction=0.1), seed=1)
    dev = {it.speaker for it in a if it.split == "dev"}
    assert len(dev) == 2 and dev == {it.speaker for it in b if it.split == "dev"}
    assert not dev & {it.speaker for it in a if it.split == "train"}
    assert all(it.split == "test" for it in a if it.id == "t-0")  # test untouched
    assert "2 of 20 train speakers" in note
    c, _ = carve_dev(items, DevSplit(fraction=0.1), seed=2)
    assert {it.speaker for it in c if it.split == "dev"} != dev  # seed matters
    d, _ = carve_dev(items, DevSplit(fraction=0.1), dev_speakers=5)
    assert len({it.speaker for it in d if it.split == "dev"}) == 5
    e, note = carve_dev(items, DevSplit(speakers=1), dev_fraction=0.0)
    assert not any(it.split == "dev" for it in e) and "none" in note


def test_carve_dev_single_speaker_carves_utterances():
    items = _items({"only": 30})
    out, note = carve_dev(items, DevSplit(fraction=1 / 6))
    assert sum(it.split == "dev" for it in out) == 5 and "NOT speaker-disjoint" in note
    with pytest.raises(PrepareError, match="single speaker"):
        carve_dev(items, DevSplit(fraction=0.1), dev_speakers=1)


def test_carve_dev_respects_existing_dev():
    items = [*_items({"a": 2, "b": 2}), RawItem("d", Path("d.wav"), "x", "c", "dev")]
    out, note = carve_dev(items, DevSplit(fraction=0.5))
    assert out == items and "own dev" in note
    with pytest.raises(PrepareError):
        carve_dev(items, DevSplit(fraction=0.5), dev_speakers=1)


def test_options_validated():
    with pytest.raises(PrepareError):
        PrepareOptions(dev_speakers=1, dev_fraction=0.1)
    with pytest.raises(PrepareError):
        PrepareOptions(vocab="klingon")


# ---------------------------------------------------------------------------- broken folder


@pytest.fixture
def broken_folder(tmp_path) -> Path:
    src = tmp_path / "src"
    good = {
        "alice/a1.wav": ("Hello, World!", {}),
        "alice/a2.flac": ("It\u2019s FINE", {"format": "FLAC"}),
        "bob/b1.ogg": ("yes", {"format": "OGG", "subtype": "VORBIS"}),
    }
    for rel, (text, kw) in good.items():
        write_tone(src / rel, **kw)
        (src / rel).with_suffix(".txt").write_text(text)
    # 3-channel 48 kHz: GOOD, must be accepted.
    write_tone(src / "bob/multi.wav", seconds=0.7, sr=48000, channels=3)
    (src / "bob/multi.txt").write_text("three channels")

    bad = src / "carol"
    bad.mkdir()
    (bad / "empty.wav").write_bytes(b"")
    full = write_tone(tmp_path / "full.flac", seconds=2.0, format="FLAC")
    (bad / "truncated.flac").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    (bad / "textfile.wav").write_text("I am a text file, not a WAV\n" * 10)
    x = (0.1 * np.ones(8000)).astype(np.float32)
    x[10] = np.nan
    sf.write(bad / "nan.wav", x, 16000, subtype="FLOAT")
    write_tone(bad / "short.wav", seconds=0.05)
    write_tone(bad / "punct.wav")
    write_tone(bad / "no_transcript.wav")
    write_tone(bad / "accent.wav")
    write_tone(bad / "ctc.wav", seconds=0.2)  # 21 frames (asr.features.num_frames) for 33 tokens
    texts = {
        "empty": "empty",
        "truncated": "truncated",
        "textfile": "text",
        "nan": "not a number",
        "short": "hi",
        "punct": "?!... -- '",
        "accent": "caf\u00e9 cr\u00e8me",
        "ctc": "this is far too long for the clip",
    }
    for stem, text in texts.items():
        (bad / f"{stem}.txt").write_text(text)
    return src


EXPECTED_REJECTIONS = {
    "carol/empty": ("unreadable audio", "empty file"),
    "carol/truncated": ("unreadable audio", "truncated"),
    "carol/textfile": ("unreadable audio", "not a readable audio file"),
    "carol/nan": ("unreadable audio", "NaN"),
    "carol/short": ("too short", "0.050 s"),
    "carol/punct": ("empty text", "empty transcript"),
    "carol/no_transcript": ("corpus listing", "no transcript file no_transcript.txt"),
    "carol/accent": ("characters outside the vocabulary", "'\u00e8' '\u00e9'"),
    "carol/ctc": ("CTC-infeasible", "21 frames"),
}


def test_broken_folder(broken_folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "prepare",
        "folder",
        "--src",
        str(broken_folder),
        "--out",
        str(out),
        "--dev-fraction",
        "0",
    ]
    assert main(argv) == 1  # rejections -> non-zero exit, after writing everything
    captured = capsys.readouterr()
    assert "9 item(s) rejected" in captured.err
    assert "train.jsonl" in captured.out and "CTC-infeasible" in captured.out

    train = read_manifest(out / "train.jsonl")
    assert [u.id for u in train] == ["alice/a1", "alice/a2", "bob/b1", "bob/multi"]
    assert not (out / "dev.jsonl").exists() and not (out / "test.jsonl").exists()
    by_id = {u.id: u for u in train}
    assert by_id["alice/a1"].text == "hello world"
    assert by_id["alice/a2"].text == "it's fine"
    multi = by_id["bob/multi"]
    assert (multi.sample_rate, multi.duration, multi.speaker) == (48000, 0.7, "bob")
    assert Path(multi.audio).is_absolute() and load_audio(multi.audio).shape == (11200,)

    rejected = {r["id"]: r for r in read_jsonl(out / "rejected.jsonl")}
    assert set(rejected) == set(EXPECTED_REJECTIONS)
    for uid, (category, fragment) in EXPECTED_REJECTIONS.items():
        r = rejected[uid]
        assert r["category"] == category and fragment in r["reason"], r
        assert r["split"] == "train" and r["audio"].endswith(
            Path(uid).name + Path(r["audio"]).suffix
        )

    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"]["train"]["utterances"] == 4
    assert summary["splits"]["train"]["speakers"] == 2
    assert summary["rejected"]["total"] == 9
    assert summary["rejected"]["by_category"]["unreadable audio"] == 4

    assert main([*argv, "--allow-rejected"]) == 0


def test_output_is_deterministic(broken_folder, tmp_path):
    outs = []
    for name in ("o1", "o2"):
        out = tmp_path / name
        prepare_corpus("folder", broken_folder, out, PrepareOptions(dev_speakers=1, seed=3))
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1]
    dev = read_manifest(tmp_path / "o1" / "dev.jsonl")
    train = read_manifest(tmp_path / "o1" / "train.jsonl")
    assert dev and not {u.speaker for u in dev} & {u.speaker for u in train}


def test_vocab_chars_from_train(broken_folder, tmp_path):
    result = prepare_corpus(
        "folder",
        broken_folder,
        tmp_path / "o",
        PrepareOptions(dev_fraction=0, vocab="chars-from-train"),
    )
    assert "\u00e9" in result.vocabulary and "z" not in result.vocabulary
    assert not any(r.id == "carol/accent" for r in result.rejected)


def test_folder_list_file(tmp_path):
    write_tone(tmp_path / "audio" / "one.wav")
    write_tone(tmp_path / "audio" / "two.flac", format="FLAC")
    lst = tmp_path / "list.tsv"
    lst.write_text(
        "path\ttext\tspeaker\n"
        "audio/one.wav\tONE\tann\n"  # relative to the list's folder
        f"{tmp_path / 'audio' / 'two.flac'}\tTwo!\t\n"
    )
    out = tmp_path / "out"
    assert (
        main(["prepare", "folder", "--list", str(lst), "--out", str(out), "--dev-fraction", "0"])
        == 0
    )
    train = read_manifest(out / "train.jsonl")
    assert [(u.id, u.text, u.speaker) for u in train] == [
        ("audio/one", "one", "ann"),
        ("audio/two", "two", "audio"),  # speaker defaults to the parent folder
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("file,words\nx.wav,hi\n")
    with pytest.raises(CorpusError, match="path,text"):
        get_corpus("folder").find_items(tmp_path, CorpusOptions(list_file=bad))


def test_empty_train_is_an_error(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "s").mkdir(parents=True)
    (src / "s" / "x.wav").write_text("not audio")
    (src / "s" / "x.txt").write_text("hello")
    assert main(["prepare", "folder", "--src", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "no usable train utterances" in capsys.readouterr().err


# ---------------------------------------------------------------------------- corpus readers


def test_yesno_reader(tmp_path):
    d = tmp_path / "waves_yesno"
    names = ["0_0_1_1", "0_1_0_1", "1_0_0_0", "1_1_1_1"]
    for n in names:
        write_tone(d / f"{n}.wav", seconds=1.0, sr=8000)
    (d / "README").write_text("readme")
    (d / "notes.wav").write_text("")
    items = get_corpus("yesno").find_items(tmp_path, CorpusOptions())
    by_id = {it.id: it for it in items}
    assert by_id["0_0_1_1"].text == "no no yes yes" and by_id["0_0_1_1"].split == "train"
    assert by_id["notes"].problem and "README" not in by_id
    # sorted 5 files: first 2 train, last 3 test
    assert [it.split for it in items] == ["train", "train", "test", "test", "test"]


def test_fsdd_reader_and_process_pool(tmp_path):
    rec = tmp_path / "src" / "recordings"
    for digit in range(10):
        for speaker in ("ann", "bob"):
            for index in range(4):
                write_tone(rec / f"{digit}_{speaker}_{index * 2}.wav", seconds=0.2, sr=8000)
    result = prepare_corpus(
        "fsdd", tmp_path / "src", tmp_path / "out", PrepareOptions(dev_speakers=0, workers=2)
    )  # 80 files: above the pool threshold, so this runs the process pool
    assert not result.rejected
    test = result.splits["test"]
    assert len(test) == 10 * 2 * 3  # indices 0, 2, 4
    assert {u.text for u in test} == set(get_corpus("fsdd").WORDS)
    assert len(result.splits["train"]) == 20


def test_speechocean_reader(tmp_path):
    src = tmp_path / "so"
    (src / "train").mkdir(parents=True)
    rows = [("u1", "0001", "WE CALL IT BEAR"), ("u2", "0002", "DON'T STOP"), ("u3", "0003", "ZERO")]
    for uid, spk, _ in rows:
        write_tone(src / "WAVE" / f"SPEAKER{spk}" / f"{uid}.flac", format="FLAC")
    (src / "train" / "wav.scp").write_text(
        "".join(f"{u}\tWAVE/SPEAKER{s}/{u}.flac\n" for u, s, _ in rows)
        + "u4\tsox x.wav -t wav - |\n"
    )
    (src / "train" / "text").write_text("".join(f"{u}\t{t}\n" for u, _, t in rows))
    (src / "train" / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s, _ in rows))
    result = prepare_corpus("speechocean762", src, tmp_path / "out", PrepareOptions(dev_speakers=1))
    kept = {u.id: u for s in result.splits.values() for u in s}
    assert set(kept) == {"u1", "u2", "u3"} and kept["u2"].text == "don't stop"
    assert len(result.splits["dev"]) == 1
    assert [r.id for r in result.rejected] == ["u4"] and "pipe" in result.rejected[0].reason
    with pytest.raises(CorpusError, match="wav.scp"):
        get_corpus("speechocean762").find_items(tmp_path, CorpusOptions())


def test_librispeech_reader(tmp_path):
    src = tmp_path / "LibriSpeech"
    for subset, spk in (("train-clean-100", "19"), ("train-clean-100", "26"), ("test-clean", "61")):
        chapter = src / subset / spk / "100"
        lines = []
        for utt in range(2):
            uid = f"{spk}-100-{utt:04d}"
            write_tone(chapter / f"{uid}.flac", format="FLAC")
            lines.append(f"{uid} HELLO THERE NUMBER {utt}\n")
        (chapter / f"{spk}-100.trans.txt").write_text("".join(lines))
    reader = get_corpus("librispeech")
    result = prepare_corpus(
        "librispeech", tmp_path, tmp_path / "out", PrepareOptions(dev_speakers=1)
    )
    assert not result.rejected
    assert {len(result.splits[s]) for s in ("train", "dev")} == {2} and len(
        result.splits["test"]
    ) == 2
    assert result.splits["test"][0].text == "hello there number 0"
    only_test = reader.find_items(tmp_path, CorpusOptions(subsets=("test-clean",)))
    assert {it.split for it in only_test} == {"test"}
    with pytest.raises(CorpusError, match="dev-clean"):
        reader.find_items(tmp_path, CorpusOptions(subsets=("dev-clean",)))


# ---------------------------------------------------------------------------- download


def test_download_network_failure(tmp_path, monkeypatch, capsys):
    def offline(url, *a, **kw):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    src = tmp_path / "yesno"
    rc = main(["prepare", "yesno", "--download", "--src", str(src), "--out", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "https://www.openslr.org/resources/1/waves_yesno.tar.gz" in err
    assert "name resolution" in err and "--src" in err
    assert not any(src.rglob("*.part"))  # no partial file left behind


def test_fetch_checksum_and_extract(tmp_path):
    # A local tarball served through file:// exercises fetch + sha256 + safe extraction.
    payload = tmp_path / "payload"
    write_tone(payload / "waves_yesno" / "0_1.wav", sr=8000)
    tgz = tmp_path / "served" / "waves_yesno.tar.gz"
    tgz.parent.mkdir()
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(payload / "waves_yesno", arcname="waves_yesno")
    url = tgz.as_uri()
    with pytest.raises(dl.DownloadError, match="sha256 mismatch") as e:
        dl.fetch(dl.Archive(url, sha256="0" * 64), tmp_path / "dest")
    assert e.value.url == url and not list((tmp_path / "dest").iterdir())
    digest = sha256_digest(tgz)
    dl.fetch_and_extract(dl.Archive(url, sha256=digest), tmp_path / "dest")
    assert (tmp_path / "dest" / "waves_yesno" / "0_1.wav").is_file()
    assert not (tmp_path / "dest" / "waves_yesno.tar.gz").exists()


def test_extract_refuses_path_traversal(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(dl.DownloadError, match="unsafe path"):
        dl.extract(evil, tmp_path / "x", "file://evil.tar")
    assert not (tmp_path / "outside.txt").exists()


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(dl.DownloadError, match="cannot extract"):
        dl.extract(bad, tmp_path / "x", "https://example.org/broken.zip")


# ---------------------------------------------------------------------------- real corpora


@pytest.mark.data
def test_real_yesno(shared_data, tmp_path):
    t0 = time.perf_counter()
    result = prepare_corpus("yesno", shared_data / "yesno", tmp_path, PrepareOptions())
    print(f"yesno prepare: {time.perf_counter() - t0:.1f} s")
    assert not result.rejected
    sizes = {s: len(u) for s, u in result.splits.items()}
    assert sizes == {"train": 25, "dev": 5, "test": 30} and sum(sizes.values()) == 60
    u = result.splits["test"][0]
    assert (
        u.sample_rate == 8000 and set(u.text.split()) <= {"yes", "no"} and len(u.text.split()) == 8
    )
    wave = load_audio(u.audio)
    assert abs(wave.shape[0] - round(u.duration * 16000)) <= 1  # 8 kHz file loads at 16 kHz


@pytest.mark.slow
@pytest.mark.data
def test_real_fsdd(shared_data, tmp_path):
    t0 = time.perf_counter()
    result = prepare_corpus("fsdd", shared_data / "fsdd", tmp_path, PrepareOptions())
    print(f"fsdd prepare: {time.perf_counter() - t0:.1f} s")
    assert not result.rejected
    splits = result.splits
    assert sum(len(u) for u in splits.values()) == 3000
    assert len(splits["test"]) == 300
    assert all(int(u.id.rsplit("_", 1)[1]) < 5 for u in splits["test"])
    assert len({u.speaker for u in splits["dev"]}) == 1
    assert not {u.speaker for u in splits["dev"]} & {u.speaker for u in splits["train"]}


@pytest.mark.slow
@pytest.mark.data
def test_real_speechocean762(shared_data, tmp_path):
    t0 = time.perf_counter()
    result = prepare_corpus(
        "speechocean762", shared_data / "speechocean762", tmp_path, PrepareOptions()
    )
    print(f"speechocean762 prepare: {time.perf_counter() - t0:.1f} s")
    assert not result.rejected
    train, dev = result.splits["train"], result.splits["dev"]
    assert len(train) + len(dev) == 2500
    train_spk, dev_spk = {u.speaker for u in train}, {u.speaker for u in dev}
    assert len(train_spk | dev_spk) == 125 and not train_spk & dev_spk
    assert len(dev_spk) == 13  # ~10% of 125 speakers
    assert (tmp_path / "train.jsonl").is_file() and not (tmp_path / "test.jsonl").exists()


def test_carve_dev_default_skips_tiny_corpus_explicit_errors():
    items = _items({"a": 1, "b": 1})
    out, note = carve_dev(items, DevSplit(speakers=2))
    assert out == items and "none" in note
    with pytest.raises(PrepareError, match="cannot move 2 of 2"):
        carve_dev(items, DevSplit(fraction=0.1), dev_speakers=2)


# ---------------------------------------------------------------------------- one frame formula

CTC_TEXTS = ["yes no", "hello world", "see all the books"]


def _train_keeps(duration: float, text: str, out_lengths) -> bool:
    utt = Utterance(id="u", audio="u.wav", duration=duration, text=text, speaker="s", sample_rate=16000)
    keep, _, _ = filter_utterances([utt], CharTokenizer(ENGLISH_VOCAB), FeatureConfig(), out_lengths)
    return bool(keep)


@pytest.mark.parametrize("subsampling", [1, 2, 4])
def test_prepare_and_training_agree_on_ctc_feasibility(subsampling):
    """Around each transcript's boundary, prepare's CTC verdict is training's filter verdict
    (both count frames with asr.features.num_frames; the model's out_lengths subsamples)."""
    def out_lengths(frames):
        return ConvSubsampling.out_lengths(frames, subsampling)

    for text in CTC_TEXTS:
        hop = FeatureConfig().hop_length
        edge = ctc_min_frames(text) * subsampling * hop  # samples near the boundary
        verdicts = set()
        for samples in range(max(1, edge - 4 * subsampling * hop), edge + 2 * subsampling * hop, 7):
            duration = round(samples / 16000, 6)  # as prepare stores it in the manifest
            prepare_ok = ctc_problem(duration, text, out_lengths=out_lengths) is None
            assert prepare_ok == _train_keeps(duration, text, out_lengths), (text, samples)
            if subsampling == 1:  # what `asr prepare` itself checks: no subsampling
                assert (ctc_problem(duration, text) is None) == prepare_ok
            verdicts.add(prepare_ok)
        assert verdicts == {True, False}, text  # the scan crossed the boundary


def test_prepare_keeps_exactly_what_training_keeps_on_real_files(tmp_path):
    """End to end through the decoded files: the items validate_items accepts as CTC-feasible
    are the ones filter_utterances (no subsampling) keeps from the written manifest."""
    text = "see all the books"  # 17 characters + 3 repeats: 20 frames, from 19 * 160 samples
    edge = (ctc_min_frames(text) - 1) * 160  # fewest samples num_frames makes enough frames of
    items = []
    for samples in range(edge - 3, edge + 4):
        path = tmp_path / f"n{samples}.wav"
        sf.write(path, np.full(samples, 0.1, np.float32), 16000)
        items.append(RawItem(f"n{samples}", path, text, "s", "train"))
    result = validate_items(items, PrepareOptions(min_duration=0.0, workers=1))
    accepted = {u.id for u in result.splits["train"]}
    assert {r.category for r in result.rejected} == {"CTC-infeasible"}
    assert accepted == {f"n{n}" for n in range(edge, edge + 4)}
    def identity(frames):
        return ConvSubsampling.out_lengths(frames, 1)

    for u in result.splits["train"] + [
        Utterance(r.id, r.audio, round(int(r.id[1:]) / 16000, 6), text, "s", 16000) for r in result.rejected
    ]:
        assert _train_keeps(u.duration, text, identity) == (u.id in accepted)
