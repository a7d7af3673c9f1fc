"""asr.data.manifest: round trip and every kind of bad line."""

from __future__ import annotations

import json

import pytest

from asr.data.manifest import ManifestError, Utterance, read_manifest, write_manifest

GOOD = {
    "id": "u1",
    "audio": "a.wav",
    "duration": 1.5,
    "text": "hello world",
    "speaker": "s1",
    "sample_rate": 16000,
}


def test_round_trip_and_relative_paths(tmp_path):
    utts = [
        Utterance("u1", "/abs/a.flac", 1.25, "hello", "s1", 16000),
        Utterance("u2", "rel/b.wav", 0.5, "it's me", "s2", 8000, offset=3.0),
    ]
    path = tmp_path / "m" / "train.jsonl"
    write_manifest(path, utts)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and "offset" not in json.loads(lines[0])
    back = read_manifest(path)
    assert back[0] == utts[0]
    assert back[1].audio == str(tmp_path / "m" / "rel" / "b.wav")  # resolved against the manifest
    assert back[1].offset == 3.0 and back[1].sample_rate == 8000
    assert Utterance.from_dict(utts[1].to_dict()) == utts[1]


def test_blank_lines_and_extra_keys(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text("\n" + json.dumps({**GOOD, "lang": "en"}) + "\n\n")
    (u,) = read_manifest(path)
    assert u.id == "u1"


def _without(key):
    return {k: v for k, v in GOOD.items() if k != key}


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps(_without("text")), "missing key\\(s\\) text"),
    (json.dumps(_without("duration")), "missing key\\(s\\) duration"),
    (json.dumps({**GOOD, "duration": "1.5"}), "'duration' must be a finite number"),
    (json.dumps({**GOOD, "duration": True}), "'duration' must be a finite number"),
    (json.dumps({**GOOD, "duration": float("nan")}), "'duration' must be a finite number"),
    (json.dumps({**GOOD, "duration": 0}), "duration must be > 0 \\(is 0.0\\)"),
    (json.dumps({**GOOD, "duration": -1.0}), "duration must be > 0 \\(is -1.0\\)"),
    (json.dumps({**GOOD, "text": ""}), "empty text"),
    (json.dumps({**GOOD, "text": "   "}), "empty text"),
    (json.dumps({**GOOD, "text": 5}), "'text' must be a string"),
    (json.dumps({**GOOD, "id": ""}), "'id' must not be empty"),
    (json.dumps({**GOOD, "speaker": None}), "'speaker' must be a string"),
    (json.dumps({**GOOD, "sample_rate": 16000.0}), "sample_rate must be a positive integer"),
    (json.dumps({**GOOD, "sample_rate": 0}), "sample_rate must be a positive integer"),
    (json.dumps({**GOOD, "offset": -0.5}), "offset must be >= 0"),
]


@pytest.mark.parametrize("bad,problem", BAD_LINES)
def test_bad_line_named_with_file_and_line(tmp_path, bad, problem):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({**GOOD, "id": "u0"}) + "\n" + bad + "\n")
    with pytest.raises(ManifestError, match=problem) as e:
        read_manifest(path)
    assert str(e.value).startswith(f"{path}:2: ")
    assert (e.value.path, e.value.line) == (str(path), 2)


def test_duplicate_id(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(ManifestError, match=f"{path}:2: duplicate id 'u1' \\(first on line 1\\)"):
        read_manifest(path)


def test_write_refuses_invalid(tmp_path):
    path = tmp_path / "m.jsonl"
    with pytest.raises(ManifestError, match="duration must be > 0"):
        write_manifest(path, [Utterance("u", "a.wav", 0.0, "x", "s", 16000)])
    with pytest.raises(ManifestError, match="duplicate id"):
        write_manifest(path, [Utterance("u", "a.wav", 1.0, "x", "s", 16000)] * 2)
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_text_readers_word_bytes_that_are_not_utf8_alike(tmp_path):
    # One wording (asr.data.manifest.utf8_lines) for every text file a user hands in.
    from asr.config import ConfigError
    from asr.data.lexicon import LexiconError, read_lexicon
    from asr.decode.lm import LMError, _read_texts
    from asr.train.datamodule import read_manifest_or_fail

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xef\xbb\xbfYES Y EH S\nCAF\xc3\xa9 K AE F\nNO N \xe9\n")
    expected = f"{bad}:3: not UTF-8 text (byte 0xe9 at column 6); save the file as UTF-8"
    for call, error in ((read_lexicon, LexiconError), (_read_texts, LMError)):
        with pytest.raises(error) as e:
            call(str(bad))
        assert str(e.value) == expected, call
    manifest = tmp_path / "bad.jsonl"
    manifest.write_bytes(b'{"id": "caf\xe9"}\n')
    expected = f"{manifest}:1: not UTF-8 text (byte 0xe9 at column 12); save the file as UTF-8"
    for call, error in ((read_manifest_or_fail, ConfigError), (read_manifest, ManifestError)):
        with pytest.raises(error) as e:
            call(str(manifest))
        assert str(e.value) == expected, call
    good = tmp_path / "good.txt"
    good.write_bytes(b"\xef\xbb\xbfyes we\r\n\ncaf\xc3\xa9\n")
    assert _read_texts(good) == ["yes we", "", "café"]  # byte-order mark and CRLF dropped
    good.write_bytes(b"\xef\xbb\xbfYES Y EH1 S\r\n\nCAF\xc3\xa9 K AE F\n")
    assert read_lexicon(good) == {"yes": ("Y", "EH", "S"), "café": ("K", "AE", "F")}
