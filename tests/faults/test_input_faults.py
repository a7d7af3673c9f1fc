"""Hostile inputs x sub-commands (input side): never a traceback, the documented
exit code (2 unusable input, 1 some items failed), and the good items still processed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from tiny_package import SR, make_tiny_package, noise

import asr.audio
from asr.audio import AudioError, load_audio
from asr.cli import main
from asr.data.manifest import Utterance, write_manifest
from asr.infer.inference import NON_FINITE, transcribe_manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return make_tiny_package(tmp_path_factory.mktemp("pkg"))


def write_huge(path: Path) -> None:
    x = noise(1.0)
    x[100] = 1e29  # finite, but the log-mel overflows
    sf.write(path, x, SR, subtype="FLOAT")


def write_truncated(path: Path) -> None:
    sf.write(path, noise(1.0), SR)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture()
def hostile(tmp_path) -> Path:
    """A folder of one good file and every kind of bad one, each with a transcript."""
    d = tmp_path / "in"
    d.mkdir()
    sf.write(d / "good.wav", noise(1.2), SR)
    (d / "empty.wav").write_bytes(b"")
    write_truncated(d / "trunc.wav")
    (d / "text.wav").write_text("this is not audio\n")
    write_huge(d / "huge.wav")
    (d / "dangling.wav").symlink_to(d / "missing-target.wav")
    (d / "loop.wav").symlink_to(d / "loop.wav")
    (d / "dir.wav").mkdir()
    for stem in ("good", "empty", "trunc", "text", "huge", "dangling", "loop"):
        (d / f"{stem}.txt").write_text("yes no\n")
    return d


BAD = ("empty.wav", "trunc.wav", "text.wav", "huge.wav", "dangling.wav", "loop.wav")


def manifest_for(d: Path, names, out: Path, **kw) -> Path:
    utts = [Utterance(Path(n).stem, str(d / n), 1.0, kw.get("text", "yes no"), kw.get("speaker", "s1"), SR)
            for n in names]
    write_manifest(out, utts)
    return out


def assert_clean(capsys_or_err) -> str:
    err = capsys_or_err if isinstance(capsys_or_err, str) else capsys_or_err.readouterr().err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------------------------
# audio: absurd samples


def test_load_audio_rejects_absurd_float_samples_but_keeps_integer_scaled_floats(tmp_path):
    write_huge(tmp_path / "huge.wav")
    with pytest.raises(AudioError, match=r"huge\.wav: sample magnitude 1e\+29 is absurd"):
        load_audio(tmp_path / "huge.wav")
    loud = noise(0.5) * 32768  # float WAVs at int16 scale exist in the wild: still readable
    loud[0] = 1.5e9  # even at int32 scale
    sf.write(tmp_path / "loud.wav", loud, SR, subtype="FLOAT")
    assert load_audio(tmp_path / "loud.wav").abs().max() == pytest.approx(1.5e9)


# --------------------------------------------------------------------------------------------
# prepare


def test_prepare_folder_reports_every_bad_file(hostile, tmp_path, capsys):
    out = tmp_path / "prep"
    rc = main(["prepare", "folder", "--src", str(hostile), "--out", str(out), "--workers", "1"])
    assert_clean(capsys)
    assert rc == 1
    rejected = {json.loads(line)["audio"].split("/")[-1]: json.loads(line)["reason"]
                for line in (out / "rejected.jsonl").read_text().splitlines()}
    assert set(BAD) <= set(rejected)
    assert "dangling or looping symbolic link" in rejected["dangling.wav"]
    assert "dangling or looping symbolic link" in rejected["loop.wav"]
    assert "sample magnitude" in rejected["huge.wav"]
    kept = [json.loads(line)["id"] for f in out.glob("*.jsonl") if f.name != "rejected.jsonl"
            for line in f.read_text().splitlines()]
    assert kept == ["good"]


def test_prepare_readable_file_wins_the_id_over_an_unreadable_sibling(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    (d / "trunc.flac").write_bytes(b"fLaC" + b"\0" * 40)  # sorts first, unreadable
    sf.write(d / "trunc.wav", noise(1.0), SR)
    (d / "trunc.txt").write_text("yes\n")
    sf.write(d / "other.wav", noise(1.0, 1), SR)
    (d / "other.txt").write_text("no\n")
    out = tmp_path / "prep"
    assert main(["prepare", "folder", "--src", str(d), "--out", str(out), "--workers", "1"]) == 1
    assert_clean(capsys)
    utts = [json.loads(line) for f in out.glob("*.jsonl") if f.name != "rejected.jsonl"
            for line in f.read_text().splitlines()]
    assert {u["id"]: Path(u["audio"]).name for u in utts}["trunc"] == "trunc.wav"
    (rej,) = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert rej["audio"].endswith("trunc.flac") and rej["category"] != "duplicate id"


def test_prepare_list_not_utf8_and_empty_path(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", noise(1.0), SR)
    bad = tmp_path / "list.csv"
    bad.write_bytes(b"path,text\na.wav,yes\nb.wav,caf\xe9\n")
    assert main(["prepare", "folder", "--list", str(bad), "--out", str(tmp_path / "o1")]) == 2
    assert f"{bad}:3: not UTF-8" in assert_clean(capsys)

    ok = tmp_path / "list2.csv"
    ok.write_text("path,text\na.wav,yes\n,no\n")
    out = tmp_path / "o2"
    assert main(["prepare", "folder", "--list", str(ok), "--out", str(out), "--workers", "1"]) == 1
    assert_clean(capsys)
    (rej,) = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert f"{ok}:3: empty path" in rej["reason"]


# --------------------------------------------------------------------------------------------
# transcribe


def test_transcribe_reports_every_bad_file_and_keeps_the_good_one(package, hostile, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["transcribe", str(package), str(hostile), "--out", str(out), "--quiet"])
    err = assert_clean(capsys)
    assert rc == 1
    for name in BAD:
        assert f"{hostile / name}: " in err, name
    assert f"transcribed 1/{len(BAD) + 1} file(s)" in err
    assert sorted(p.name for p in out.iterdir()) == ["good.txt", "transcripts.jsonl"]  # the lock is gone too


def test_non_finite_features_fail_the_item_not_silently_empty(package, tmp_path, monkeypatch):
    """Even past load_audio's bound (lifted here), non-finite emissions fail the item."""
    from asr.infer.transcription import transcribe

    monkeypatch.setattr(asr.audio, "MAX_SAMPLE_MAGNITUDE", float("inf"))
    write_huge(tmp_path / "huge.wav")
    sf.write(tmp_path / "good.wav", noise(1.0), SR)
    results = transcribe(package, [tmp_path / "huge.wav", tmp_path / "good.wav"])
    assert [r.error for r in results] == [NON_FINITE, None]


def test_transcribe_out_is_a_file_and_corrupt_package(package, hostile, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["transcribe", str(package), str(hostile / "good.wav"), "--out", str(f)]) == 2
    assert "exists and is not a directory" in assert_clean(capsys)
    corrupt = tmp_path / "corrupt.asr"
    corrupt.write_bytes(package.read_bytes()[:200] if package.is_file() else b"garbage")
    assert main(["transcribe", str(corrupt), str(hostile / "good.wav")]) == 2
    err = assert_clean(capsys)
    assert err.startswith("error: ") and "corrupt.asr" in err


def test_same_named_outputs_mirror_their_folders(package, tmp_path, capsys):
    for sub, seconds in (("a", 0.5), ("b", 2.0)):  # b is longer: its batch runs first
        (tmp_path / sub).mkdir()
        sf.write(tmp_path / sub / "x.wav", noise(seconds), SR)
    out = tmp_path / "out"
    rc = main(["transcribe", str(package), str(tmp_path / "a" / "x.wav"), str(tmp_path / "b" / "x.wav"),
               "--out", str(out), "--format", "json", "--batch-size", "1"])
    assert rc == 0
    assert_clean(capsys)
    assert json.loads((out / "a" / "x.json").read_text())["path"].endswith("a/x.wav")
    assert json.loads((out / "b" / "x.json").read_text())["path"].endswith("b/x.wav")


# --------------------------------------------------------------------------------------------
# evaluate (model and --hyps)


@pytest.mark.slow
def test_evaluate_model_scores_bad_items_as_failed(package, hostile, tmp_path, capsys):
    names = ["good.wav", *BAD]
    m = manifest_for(hostile, names, tmp_path / "m.jsonl")
    out = tmp_path / "ev"
    rc = main(["evaluate", str(package), str(m), "--out", str(out), "--resamples", "10"])
    err = assert_clean(capsys)
    assert rc == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_utterances"] == len(names)
    assert set(summary["decoding"]["failed_items"]) == {Path(n).stem for n in BAD}
    assert "sample magnitude" in summary["decoding"]["failed_items"]["huge"]
    assert "huge.wav" in err and not (out / ".lock").exists()


def test_evaluate_unusable_inputs_exit_2(package, hostile, tmp_path, capsys):
    m = manifest_for(hostile, ["good.wav"], tmp_path / "m.jsonl")
    bad_m = tmp_path / "bad.jsonl"
    bad_m.write_bytes(m.read_bytes() + b'{"id": "caf\xe9"}\n')
    assert main(["evaluate", str(package), str(bad_m), "--out", str(tmp_path / "e1")]) == 2
    assert f"{bad_m}:2: not UTF-8" in assert_clean(capsys)

    hyps = tmp_path / "h.txt"
    hyps.write_bytes(b"good yes no\nother caf\xe9\n")
    assert main(["evaluate", "--hyps", str(hyps), str(m), "--out", str(tmp_path / "e2")]) == 2
    assert f"{hyps}:2: not UTF-8" in assert_clean(capsys)

    corrupt = tmp_path / "corrupt.asr"
    corrupt.write_bytes(b"PK\x03\x04 not really a package")
    assert main(["evaluate", str(corrupt), str(m), "--out", str(tmp_path / "e3")]) == 2
    assert "corrupt.asr" in assert_clean(capsys)

    lm = tmp_path / "broken.arpa"
    lm.write_text("this is not an ARPA file\n")
    rc = main(["evaluate", str(package), str(m), "--out", str(tmp_path / "e4"), "--decoder", "beam",
               "--lm", str(lm)])
    assert rc == 2
    assert "broken.arpa" in assert_clean(capsys)

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["evaluate", "--hyps", str(hyps), str(m), "--out", str(f)]) == 2
    assert "exists and is not a directory" in assert_clean(capsys)


def test_evaluate_hostile_speaker_names_are_escaped(tmp_path, capsys):
    utts = [Utterance(f"u{i}", "/nonexistent.wav", 1.0, "yes no", spk, SR)
            for i, spk in enumerate(("$x^2$", "<script>alert(1)</script>", "a|b*c_"))]
    m = tmp_path / "m.jsonl"
    write_manifest(m, utts)
    hyps = tmp_path / "h.txt"
    hyps.write_text("u0 yes\nu1 no no\nu2 yes no\n")
    out = tmp_path / "ev"
    assert main(["evaluate", "--hyps", str(hyps), str(m), "--out", str(out), "--resamples", "10"]) == 0
    assert_clean(capsys)
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and r"\$x^2\$" in md
    assert "<script>alert" not in html


def test_evaluate_warns_duration_mismatch_and_empty_references(package, tmp_path, capsys):
    sf.write(tmp_path / "long.wav", noise(3.0), SR)
    utts = [Utterance("stale", str(tmp_path / "long.wav"), 1.0, "yes no", "s", SR),  # file is 3 s
            Utterance("punct", str(tmp_path / "long.wav"), 3.0, "?!", "s", SR)]
    m = tmp_path / "m.jsonl"
    write_manifest(m, utts)
    out = tmp_path / "ev"
    assert main(["evaluate", str(package), str(m), "--out", str(out), "--resamples", "10"]) == 0
    err = assert_clean(capsys)
    assert "utterance stale" in err and "manifest duration 1.000 s but the file holds 3.000 s" in err
    assert "1 reference(s) are empty after normalisation" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["duration_mismatch"]["count"] == 1 and "stale" in summary["duration_mismatch"]["items"]
    assert summary["references"]["empty_after_normalization"] == 1


def test_evaluate_reads_long_utterances_in_windows(package, tmp_path, monkeypatch):
    import asr.infer.segments as inf

    sf.write(tmp_path / "long.wav", noise(20.0), SR)
    m = tmp_path / "m.jsonl"
    write_manifest(m, [Utterance("long", str(tmp_path / "long.wav"), 20.0, "yes", "s", SR)])
    reads: list[int] = []
    real = inf.load_audio

    def spy(*a, **kw):
        w = real(*a, **kw)
        reads.append(w.numel())
        return w

    monkeypatch.setattr(inf, "load_audio", spy)
    hyps, _, settings, _ = transcribe_manifest(package, m, progress=False, chunk_seconds=4.0,
                                               overlap_seconds=1.0)
    assert settings["failed"] == 0 and set(hyps) == {"long"}
    assert len(reads) == 5 and max(reads) <= 6.0 * SR  # never the whole 20 s at once
    assert sum(reads) >= 20 * SR


def test_second_writer_into_one_out_dir_exits_2_naming_the_first(tmp_path, capsys):
    out = tmp_path / "ev"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from asr.lock import output_lock\n"
         f"with output_lock({str(out)!r}, 'asr evaluate FIRST-RUN'):\n"
         "    print('locked', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        m = tmp_path / "m.jsonl"
        write_manifest(m, [Utterance("u", "/x.wav", 1.0, "yes", "s", SR)])
        hyps = tmp_path / "h.txt"
        hyps.write_text("u yes\n")
        assert main(["evaluate", "--hyps", str(hyps), str(m), "--out", str(out)]) == 2
        err = assert_clean(capsys)
        assert f"pid {holder.pid}: asr evaluate FIRST-RUN" in err and str(out) in err
        assert not (out / "summary.json").exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert main(["evaluate", "--hyps", str(hyps), str(m), "--out", str(out), "--resamples", "10"]) == 0
    assert (out / "summary.json").exists() and not (out / ".lock").exists()


# --------------------------------------------------------------------------------------------
# lm build, compare, CLI


def test_lm_build_non_utf8_text(tmp_path, capsys):
    t = tmp_path / "t.txt"
    t.write_bytes(b"yes no\ncaf\xe9\n")
    rc = main(["lm", "build", str(t), "--order", "2", "--out", str(tmp_path / "lm.arpa")])
    assert rc != 0
    assert_clean(capsys)


def test_compare_non_utf8_report(tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    write_manifest(m, [Utterance("u", "/x.wav", 1.0, "yes no", "s", SR)])
    hyps = tmp_path / "h.txt"
    hyps.write_text("u yes\n")
    for name in ("a", "b"):
        assert main(["evaluate", "--hyps", str(hyps), str(m), "--out", str(tmp_path / name),
                     "--resamples", "10"]) == 0
    u = tmp_path / "b" / "utterances.jsonl"
    u.write_bytes(u.read_bytes().replace(b"yes", b"y\xe9s"))
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert f"{u}:1: not UTF-8" in assert_clean(capsys)


def test_overrides_after_flags_are_parsed(capsys):
    rc = main(["train", str(REPO / "conf" / "yesno.yaml"), "--print-config", "trainer.max_epochs=6"])
    assert rc == 0
    assert "max_epochs: 6" in capsys.readouterr().out


@pytest.mark.slow
def test_known_errors_are_one_line_exit_2_in_a_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # ConfigError (an unknown key; the override comes after a flag, which used to be refused).
    p = subprocess.run([sys.executable, "-m", "asr", "train", "conf/yesno.yaml", "--resume", "bogus.key=1"],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr
    out = p.stdout + p.stderr
    assert "Traceback" not in out and "error: " in out and "bogus" in out
    # PackageError raised inside a command reaches asr.cli.main's handler.
    corrupt = tmp_path / "corrupt.asr"
    corrupt.write_bytes(b"PK\x03\x04 not a package")
    m = tmp_path / "m.jsonl"
    write_manifest(m, [Utterance("u", "/x.wav", 1.0, "yes", "s", SR)])
    p = subprocess.run([sys.executable, "-m", "asr", "evaluate", str(corrupt), str(m), "--out", str(tmp_path / "e")],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.startswith("error: ") and "corrupt.asr" in p.stderr and p.stderr.count("\n") == 1
