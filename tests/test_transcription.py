"""Batched inference, manifest transcription, `asr transcribe`, and long-file windowing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.cli import main
from asr.config import ExperimentConfig, to_dict
from asr.data.manifest import Utterance, write_manifest
from asr.data.sampler import plan_batches
from asr.decode.decoding import DecodingOptions, greedy_decode
from asr.features import LogMel
from asr.infer.inference import emissions, emissions_for_manifest, transcribe_manifest
from asr.infer.transcription import find_audio_files, plan_windows, transcribe
from asr.model import AcousticModel, ModelConfig
from asr.package import ModelPackage, load_package
from asr.text import CharTokenizer
from asr.train.export import export

SR = 16000
TOKENIZER = CharTokenizer("abcdefgh")


# --------------------------------------------------------------------------------------------
# a tiny real package (random weights)


@pytest.fixture(scope="module")
def package_path(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pkg")
    cfg = ExperimentConfig(model=ModelConfig(hidden=16, num_layers=2, conv_channels=4, dropout=0.0))
    torch.manual_seed(0)
    model = AcousticModel(cfg.model, cfg.features.n_mels, TOKENIZER.vocab_size)
    model.cmvn.mean.fill_(-8.0)  # roughly centres log-mels of quiet noise
    model.cmvn.istd.fill_(0.3)
    with torch.no_grad():
        model.output.weight.mul_(5)  # sharper outputs: random weights emit some text
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": to_dict(cfg), "tokenizer": TOKENIZER.to_dict()}}
    torch.save(ckpt, tmp / "a.ckpt")
    return export([tmp / "a.ckpt"], tmp / "model.asr")


def noise(seconds: float, seed: int, sr: int = SR, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    x = 0.1 * rng.standard_normal((n, channels)) + 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t)[:, None]
    return x.astype(np.float32) if channels > 1 else x[:, 0].astype(np.float32)


def test_plan_batches_respects_limits_and_covers_everything():
    durations = [3.0, 0.5, 12.0, 7.0, 7.0, 1.0, 30.0, 2.0]
    batches = plan_batches(durations, batch_size=3, max_batch_seconds=20.0)
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))
    for b in batches:
        assert len(b) <= 3
        longest = max(durations[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= 20.0
    assert [6] in batches  # longer than the cap: alone


def test_utterance_alone_or_in_a_batch_gives_the_same_output(package_path):
    pkg = load_package(package_path)
    waves = [torch.from_numpy(noise(s, i)) for i, s in enumerate((0.73, 1.9, 0.31, 1.24, 1.9))]
    batched = emissions(pkg, waves, batch_size=8)
    alone = [emissions(pkg, [w])[0] for w in waves]
    for b, a, w in zip(batched, alone, waves):
        assert b.shape == a.shape == (pkg.model.out_lengths(torch.tensor(w.numel() // 160 + 1)).item(), 10)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    text = [greedy_decode(e[None], torch.tensor([e.shape[0]]), pkg.tokenizer)[0].text for e in batched]
    assert text == [greedy_decode(e[None], torch.tensor([e.shape[0]]), pkg.tokenizer)[0].text for e in alone]
    assert any(text), "the random model should emit some text for the comparison to mean anything"


def test_transcribe_manifest_scores_unreadable_audio_as_empty(package_path, tmp_path, caplog):
    good = tmp_path / "good.wav"
    sf.write(good, noise(1.2, 3), SR)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    utts = [
        Utterance("u1", str(good), 1.2, "abc", "s1", SR),
        Utterance("u2", str(bad), 1.0, "abc", "s1", SR),
        Utterance("u3", str(good), 0.5, "abc", "s1", SR, offset=0.6),  # a segment
    ]
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, utts)
    pkg = load_package(package_path)

    failed: dict[str, str] = {}
    ems, got_utts = emissions_for_manifest(pkg, manifest, failed=failed, progress=False)
    assert [u.id for u in got_utts] == ["u1", "u2", "u3"]
    assert ems[1].shape == (0, 10) and ems[0].shape[0] > ems[2].shape[0] > 0
    assert set(failed) == {"u2"} and "bad.wav: not a readable audio file" in failed["u2"]

    caplog.clear()
    with caplog.at_level("WARNING", logger="asr.infer.inference"):
        hyps, rtf, settings, info = transcribe_manifest(package_path, manifest, progress=False)
    assert set(hyps) == {"u1", "u2", "u3"} and hyps["u2"] == ""
    assert hyps["u1"] == greedy_decode(ems[0][None], torch.tensor([ems[0].shape[0]]), pkg.tokenizer)[0].text
    assert settings["failed"] == 1 and set(settings["failed_items"]) == {"u2"}
    assert settings["decoder"] == "greedy"
    assert rtf > 0 and info["sha256"] == pkg.info["sha256"]
    # Logged (asr.log: "warning: ..." on stderr under the CLI), not printed.
    [warning] = [r for r in caplog.records if r.name == "asr.infer.inference"]
    assert warning.levelname == "WARNING"
    assert warning.getMessage().startswith("utterance u2: ") and "scored as an empty hypothesis" in warning.getMessage()


def test_beam_options_need_the_beam_decoder(package_path, tmp_path):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [])
    with pytest.raises(ValueError, match="need.*decoder='beam'"):
        transcribe_manifest(package_path, manifest, DecodingOptions(decoder="greedy", beam_size=4), progress=False)


# --------------------------------------------------------------------------------------------
# `asr transcribe`


@pytest.fixture()
def audio_dir(tmp_path) -> Path:
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    sf.write(d / "a.wav", noise(1.5, 1), SR)
    sf.write(d / "sub" / "b.flac", noise(0.8, 2, sr=8000, channels=2), 8000)  # other rate, stereo
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("this is not a wav file\n")
    (d / "notes.txt").write_text("ignored: not an audio extension\n")
    return d


def test_find_audio_files_walks_directories(audio_dir):
    found = find_audio_files([audio_dir, audio_dir / "missing.wav"])
    assert [p.relative_to(audio_dir).as_posix() if p.is_relative_to(audio_dir) else p for p in found] == [
        "a.wav", "empty.wav", "sub/b.flac", "text.wav", "missing.wav"]


def test_cli_transcribes_good_files_and_reports_bad_ones(package_path, audio_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["transcribe", str(package_path), str(audio_dir), "--format", "all", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{audio_dir / 'empty.wav'}: empty file (0 bytes)" in captured.err
    assert f"{audio_dir / 'text.wav'}: not a readable audio file" in captured.err
    assert "transcribed 2/4 file(s)" in captured.err
    # Outputs mirror the input folder (sub/b.flac -> sub/b.*); transcripts.jsonl lists them.
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [f"{stem}.{fmt}" for stem in ("a", "sub/b") for fmt in ("txt", "json", "srt", "vtt")] + ["transcripts.jsonl"])
    doc = json.loads((out / "a.json").read_text())
    assert doc["path"] == str(audio_dir / "a.wav")
    assert (out / "a.txt").read_text().strip() == doc["text"]
    assert doc["words"], "the random model emits words for a.wav"
    assert all(0 <= w["start"] <= w["end"] <= 1.5 + 0.05 for w in doc["words"])
    assert "-->" in (out / "a.srt").read_text()
    assert (out / "sub" / "b.vtt").read_text().startswith("WEBVTT")
    assert f"# {audio_dir / 'a.wav'}" in captured.out  # transcripts go to stdout


def test_cli_exit_codes(package_path, audio_dir, tmp_path, capsys):
    assert main(["transcribe", str(package_path), str(audio_dir / "a.wav"), "--quiet"]) == 0
    assert main(["transcribe", str(package_path), str(audio_dir / "a.wav"), "--lm", "x.arpa"]) == 2
    assert "--lm needs --decoder beam" in capsys.readouterr().err
    # Unusable input (not a package): one `error:` line from asr.cli.main, exit 2.
    assert main(["transcribe", str(audio_dir / "a.wav"), str(audio_dir / "a.wav")]) == 2
    assert "not an asr model package" in capsys.readouterr().err


def test_library_function_matches_manifest_path(package_path, audio_dir):
    import asr

    results = asr.transcribe(package_path, [audio_dir / "a.wav", audio_dir / "empty.wav"])
    assert [r.text for r in asr.transcribe(package_path, str(audio_dir / "a.wav"))] == [results[0].text]
    assert [r.ok for r in results] == [True, False]
    assert results[1].error == "empty file (0 bytes)" and results[1].text == ""
    assert results[0].text == " ".join(w for w, _, _ in results[0].words)
    assert results[0].duration == pytest.approx(1.5)


# --------------------------------------------------------------------------------------------
# long files: windows, seams, word times


def test_plan_windows_tile_the_file():
    assert plan_windows(25.0, 30.0, 3.0) == [(0.0, None, 0.0, math.inf)]
    w = plan_windows(100.0, 30.0, 3.0)
    assert w == [(0.0, 33.0, 0.0, 30.0), (27.0, 36.0, 30.0, 60.0), (57.0, 36.0, 60.0, 90.0),
                 (87.0, None, 90.0, math.inf)]


# Each character is a pure tone; silence is the blank; a short tone in each gap is "|".
TONES = {"a": 250.0, "b": 400.0, "c": 600.0, "d": 900.0, "e": 1300.0, "f": 1800.0,
         "g": 2500.0, "h": 3400.0, "|": 4500.0}
CHAR_SECONDS = 0.08
SUBSAMPLING = 2


class ToneModel(nn.Module):
    """A deterministic stand-in for the acoustic model: each output frame is the character
    whose tone dominates the log-mel frame (blank when silent), as near-one-hot log-probs.
    ``peaky``: like a trained CTC model, a character only on the first frame of its tone,
    blank on the others."""

    def __init__(self, bin_to_token: Tensor, peaky: bool = False) -> None:
        super().__init__()
        self.register_buffer("bin_to_token", bin_to_token)
        self.subsampling = SUBSAMPLING
        self.peaky = peaky

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        x = feats[:, ::SUBSAMPLING]  # (N, T', F): frame 2j is output frame j
        loud = x.max(dim=-1).values > -12.0  # silence is log(1e-10) = -23
        ids = torch.where(loud, self.bin_to_token[x.argmax(dim=-1)], 0)
        if self.peaky:
            ids = torch.where(ids != F.pad(ids[:, :-1], (1, 0)), ids, 0)
        log_probs = F.log_softmax(F.one_hot(ids, TOKENIZER.vocab_size).float() * 20.0, dim=-1)
        out_lens = torch.div(feat_lens - 1, SUBSAMPLING, rounding_mode="floor") + 1
        return log_probs, out_lens


def tone_package(peaky: bool = False) -> ModelPackage:
    cfg = ExperimentConfig()
    featurizer = LogMel(cfg.features)
    table = torch.zeros(cfg.features.n_mels, dtype=torch.long)
    t = torch.arange(SR // 2) / SR
    for ch, hz in TONES.items():
        feats = featurizer.single(0.3 * torch.sin(2 * math.pi * hz * t))
        table[int(feats[5:-5].argmax(dim=-1).mode().values)] = TOKENIZER.tokens.index(ch)
    assert int((table > 0).sum()) == len(TONES), "each tone needs a mel bin of its own"
    return ModelPackage(model=ToneModel(table, peaky).eval(), tokenizer=TOKENIZER, config=cfg,
                        featurizer=featurizer.eval(), info={"path": "tone-model"})


def tone_audio(words: list[tuple[str, float]], seconds: float) -> np.ndarray:
    x = np.zeros(int(seconds * SR), dtype=np.float32)

    def put(ch: str, start: float, dur: float) -> None:
        a, b = round(start * SR), round((start + dur) * SR)
        x[a:b] = 0.3 * np.sin(2 * np.pi * TONES[ch] * np.arange(b - a) / SR)

    for word, start in words:
        for k, ch in enumerate(word):
            put(ch, start + k * CHAR_SECONDS, CHAR_SECONDS)
        put("|", start + len(word) * CHAR_SECONDS + 0.06, 0.04)  # the gap's word delimiter
    return x


def seam_words(seconds: float, chunk: float) -> list[tuple[str, float]]:
    """About four words per chunk, among them words across each seam (starting 0.1 s before
    it) and words starting exactly on a seam."""
    rng = np.random.default_rng(0)
    letters = list("abcdefgh")
    words: list[tuple[str, float]] = []
    k = 0
    while (k + 1) * chunk <= seconds:
        s = k * chunk
        offsets = [0.0 if k % 2 == 0 else 0.4, 0.31 * chunk, 0.62 * chunk]
        offsets.append(chunk - 0.1 if k % 2 == 0 else chunk - 0.6)  # across / before the seam
        for off in offsets:
            if s + off + 0.5 > seconds:
                continue
            n = int(rng.integers(1, 5))
            word = ""
            while len(word) < n:  # no letter twice in a row: CTC would merge them
                c = letters[int(rng.integers(len(letters)))]
                if not word or c != word[-1]:
                    word += c
            words.append((word, s + off))
        k += 1
    return words


@pytest.fixture(scope="module")
def long_file(tmp_path_factory) -> tuple[Path, list[tuple[str, float]]]:
    seconds, chunk = 120.0, 10.0
    words = seam_words(seconds, chunk)
    path = tmp_path_factory.mktemp("long") / "two_minutes.wav"
    sf.write(path, tone_audio(words, seconds), SR)
    return path, words


def test_tone_model_reads_a_short_file(tmp_path):
    path = tmp_path / "short.wav"
    words = [("abc", 0.2), ("hgf", 1.0)]
    sf.write(path, tone_audio(words, 2.0), SR)
    (r,) = transcribe(tone_package(), [path])
    assert r.text == "abc hgf"
    for (word, start, end), (want, t0) in zip(r.words, words):
        assert word == want
        assert start == pytest.approx(t0, abs=0.03)
        assert end == pytest.approx(t0 + len(want) * CHAR_SECONDS, abs=0.03)


@pytest.mark.parametrize("segment", ["fixed", "pauses"])
@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_long_file_windows_neither_lose_nor_duplicate_words_at_seams(long_file, decoder, segment):
    path, words = long_file
    pkg = tone_package()
    (whole,) = transcribe(pkg, [path], DecodingOptions(decoder), chunk_seconds=1000.0)
    (chunked,) = transcribe(pkg, [path], DecodingOptions(decoder), chunk_seconds=10.0, overlap_seconds=2.0,
                            batch_size=4, segment=segment)
    assert chunked.segmentation == segment
    expected = [w for w, _ in words]
    assert [w for w, _, _ in whole.words] == expected
    assert [w for w, _, _ in chunked.words] == expected
    assert chunked.text == " ".join(expected)
    seam_starts = [t for _, t in words if abs(t - 10.0 * round(t / 10.0)) < 0.15 and t > 1]
    assert len(seam_starts) >= 10  # the layout really puts words on and across seams
    for (w, s, e), (w2, s2, e2), (_, t0) in zip(chunked.words, whole.words, words):
        assert s == pytest.approx(t0, abs=0.03)
        assert (w, s, e) == (w2, pytest.approx(s2, abs=1e-6), pytest.approx(e2, abs=1e-6))
    assert chunked.duration == pytest.approx(120.0)


BIGRAM_ARPA = """\\data\\
ngram 1=6
ngram 2=3

\\1-grams:
-2.0\t<unk>\t0
-99\t<s>\t-0.3
-0.7\t</s>\t0
-0.7\tabc\t-0.3
-0.7\thgf\t-0.3
-0.7\tfed\t-0.3

\\2-grams:
-0.2\t<s> abc
-0.2\tabc hgf
-0.2\thgf </s>

\\end\\
"""


def test_beam_with_a_word_lm_and_its_tuned_weights(tmp_path):
    from asr.decode.factory import make_decoder

    lm = tmp_path / "lm.arpa"
    lm.write_text(BIGRAM_ARPA)
    (tmp_path / "lm.arpa.tune.json").write_text(json.dumps({"lm_weight": 0.3, "word_score": 1.0}))
    pkg = tone_package()
    _, settings = make_decoder(pkg, DecodingOptions("beam", lm=lm, beam_size=8))
    assert settings["mode"] == "lexicon" and settings["lm_weight"] == 0.3 and settings["word_score"] == 1.0
    assert settings["beam_size"] == 8
    _, settings = make_decoder(pkg, DecodingOptions("beam", lm=lm, lm_weight=0.1))
    assert settings["lm_weight"] == 0.1 and settings["word_score"] == 1.0  # explicit value wins

    path = tmp_path / "short.wav"
    sf.write(path, tone_audio([("abc", 0.2), ("hgf", 1.0)], 2.0), SR)
    (r,) = transcribe(pkg, [path], DecodingOptions("beam", lm=lm))
    assert r.text == "abc hgf"
    assert [w for w, _, _ in r.words] == ["abc", "hgf"]
    assert r.words[1][1] == pytest.approx(1.0, abs=0.03)
