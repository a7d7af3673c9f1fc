"""Streaming inference (asr.infer.streaming) against the offline path, on a tiny random model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from asr.decode.decoding import DecodingOptions, greedy_decode
from asr.decode.factory import make_decoder
from asr.features import LogMel
from asr.infer.engine import forward_batch
from asr.infer.streaming import StreamingConv, StreamingError, StreamingLogMel, StreamingRecognizer
from asr.model import ConvSubsampling
from asr.package import load_package
from tests.test_decoding import arpa_unigrams
from tests.tiny_package import SR, make_tiny_package, noise


@pytest.fixture(scope="module")
def stream_package(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    path = make_tiny_package(folder, "lc.asr", num_layers=2, subsampling=4, chunk_frames=3, right_context_frames=2,
                             cmvn="causal")
    return load_package(path)


def _speechy(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts and silences: the random model's output changes with the input."""
    x = noise(seconds, seed)
    x[int(0.4 * SR):int(0.7 * SR)] *= 0.01
    return x


def _feed(rec: StreamingRecognizer, audio: np.ndarray, piece: int):
    out = []
    for s in range(0, len(audio), piece):
        out += rec.feed(audio[s:s + piece])
    return out + rec.flush()


@pytest.mark.parametrize("n", [1, 160, 999, 16000])
def test_streaming_log_mel_equals_offline(n: int) -> None:
    logmel = LogMel()
    audio = torch.from_numpy(noise(0.37))
    stream = StreamingLogMel(logmel)
    got = torch.cat([stream.push(audio[s:s + n]) for s in range(0, audio.numel(), n)] + [stream.flush()])
    torch.testing.assert_close(got, logmel.single(audio), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("frames", [1, 2, 7, 8, 13])
def test_streaming_conv_equals_offline(factor: int, frames: int) -> None:
    torch.manual_seed(0)
    conv = ConvSubsampling(10, 3, factor)
    x = torch.randn(frames, 10)
    whole, lens = conv(x[None], torch.tensor([frames]))
    stream = StreamingConv(conv)
    got = torch.cat([stream.push(x[i:i + 2]) for i in range(0, frames, 2)] + [stream.push(x[:0], final=True)])
    assert got.shape[0] == int(lens[0])
    torch.testing.assert_close(got, whole[0], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_streaming_emissions_and_text_equal_the_offline_decode(stream_package) -> None:
    audio = _speechy(1.3)
    offline = forward_batch(stream_package, [torch.from_numpy(audio)])[0]
    want = greedy_decode(offline[None], torch.tensor([offline.shape[0]]), stream_package.tokenizer)[0]
    assert want.text  # the random model says something
    rec = StreamingRecognizer(stream_package, endpoint_s=0)
    logged = []
    original = rec.model.emissions
    rec.model.emissions = lambda x: logged.append(original(x)) or logged[-1]  # type: ignore[method-assign]
    finals = [r for r in _feed(rec, audio, 1600) if r.final]
    rec.model.emissions = original  # type: ignore[method-assign]
    torch.testing.assert_close(torch.cat(logged), offline, atol=1e-4, rtol=1e-4)
    assert [r.text for r in finals] == [want.text]
    assert [w.word for w in finals[0].words] == want.text.split()


@pytest.mark.slow
def test_piece_size_does_not_change_the_output(stream_package) -> None:
    audio = _speechy(0.8, seed=3)
    rec = StreamingRecognizer(stream_package)
    runs = [[(r.final, r.text, r.words) for r in _feed(rec, audio, n) if r.final] for n in (1, 16000, 4321)]
    assert runs[0] == runs[1] == runs[2] and runs[0]


@pytest.mark.slow
def test_partials_come_every_chunk_while_speech_goes_on(stream_package) -> None:
    rec = StreamingRecognizer(stream_package, endpoint_s=0)
    results = _feed(rec, _speechy(1.0), 160)
    partial_times = [r.time for r in results if not r.final]
    assert len(partial_times) >= 5
    assert max(np.diff(partial_times)) <= rec.chunk * rec.frame_shift + 1e-9


@pytest.mark.slow
def test_beam_with_lm_streams_as_it_decodes_offline(stream_package, tmp_path) -> None:
    lm = arpa_unigrams(tmp_path / "lm.arpa", {"a": -1.0, "b": -1.0, "ab": -1.5, "ba": -1.2})
    options = DecodingOptions(decoder="beam", lm=lm, beam_size=8, lm_weight=0.5, word_score=0.0)
    audio = _speechy(1.2, seed=5)
    offline = forward_batch(stream_package, [torch.from_numpy(audio)])[0]
    decoder, _ = make_decoder(stream_package, options)
    want = decoder(offline[None], torch.tensor([offline.shape[0]]))[0]
    rec = StreamingRecognizer(stream_package, options, endpoint_s=0)
    finals = [r for r in _feed(rec, audio, 777) if r.final]
    assert [r.text for r in finals] == ([want.text] if want.text else [])


@pytest.mark.slow
def test_commit_keeps_every_word_once_it_is_followed_by_another(stream_package, tmp_path) -> None:
    """commit_s=0: a word is fixed as soon as a token follows it, so each result's words but
    the last begin every later result of the same segment, the final included."""
    lm = arpa_unigrams(tmp_path / "lm.arpa", {"a": -1.0, "b": -1.0, "ab": -1.5, "ba": -1.2})
    options = DecodingOptions(decoder="beam", lm=lm, beam_size=8, lm_weight=2.0, word_score=1.0)
    rec = StreamingRecognizer(stream_package, options, endpoint_s=0, commit_s=0.0)
    assert rec.settings["commit_s"] == 0.0
    results = _feed(rec, _speechy(1.6, seed=5), 555)
    assert results and results[-1].final
    checked = 0
    for a, b in zip(results, results[1:]):
        if a.final or a.start != b.start:
            continue
        kept = [w.word for w in a.words[:-1]]
        assert [w.word for w in b.words[: len(kept)]] == kept, (a.text, b.text)
        checked += bool(kept)
    assert checked  # the random model does say several words here
    with pytest.raises(StreamingError, match="commit_s"):
        StreamingRecognizer(stream_package, options, commit_s=-1.0)


@pytest.mark.slow
def test_endpoints_split_at_pauses_and_memory_state_is_bounded(stream_package) -> None:
    rec = StreamingRecognizer(stream_package, endpoint_s=0.1, max_segment_s=0.5)
    results = _feed(rec, _speechy(1.6, seed=7), 1600)
    finals = [r for r in results if r.final]
    assert len(finals) >= 3  # at least every max_segment_s
    assert all(b.start >= a.start for a, b in zip(finals, finals[1:]))
    assert rec._search is None and rec._frames.numel() == 0  # flushed: nothing held


@pytest.mark.slow
def test_full_context_package_cannot_stream(tmp_path) -> None:
    package = load_package(make_tiny_package(tmp_path))
    with pytest.raises(StreamingError, match="cannot stream: a full-context BiLSTM"):
        StreamingRecognizer(package)
    rec_pkg = load_package(make_tiny_package(tmp_path, "uni.asr", bidirectional=False))
    rec = StreamingRecognizer(rec_pkg)  # a left-to-right model streams as it is
    with pytest.raises(StreamingError, match="NaN"):
        rec.feed(np.array([0.0, np.nan], dtype=np.float32))


@pytest.mark.slow
def test_cli_streams_files_as_json_lines_and_reports_bad_ones(stream_package, tmp_path, capsys) -> None:
    from asr.cli import main
    from tests.tiny_package import wav

    good, bad = wav(tmp_path / "a.wav", 0.8), tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    package = stream_package.info["path"]
    assert main(["transcribe", package, str(good), "--stream"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines and lines[-1]["type"] == "final" and lines[-1]["words"]
    assert all(a["text"] != b["text"] for a, b in zip(lines, lines[1:]) if b["type"] == "partial")  # changes only
    assert main(["transcribe", package, str(bad), str(good), "--stream"]) == 1
    captured = capsys.readouterr()
    assert f"error: {bad}" in captured.err and "1 of 2 input(s) failed" in captured.err
    assert {json.loads(line)["file"] for line in captured.out.splitlines()} == {str(good)}


@pytest.mark.slow
def test_cli_stream_errors_are_one_line(stream_package, tmp_path, capsys) -> None:
    from asr.cli import main
    from tests.tiny_package import wav

    good = str(wav(tmp_path / "a.wav", 0.3))
    full = str(make_tiny_package(tmp_path, "full.asr"))
    for argv, needle in (([full, good, "--stream"], "cannot stream: a full-context BiLSTM"),
                         ([stream_package.info["path"], good, "--stream", "--out", str(tmp_path / "o")],
                          "--out and --format are for batch"),
                         ([stream_package.info["path"], good, "--realtime"], "need --stream"),
                         ([stream_package.info["path"], good, "--stream", "--commit-seconds", "-1"],
                          "--commit-seconds must be >= 0")):
        assert main(["transcribe", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


@pytest.mark.slow
def test_pcm_integers_are_scaled_like_float_samples(stream_package) -> None:
    audio = _speechy(0.5, seed=9)
    pcm = np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)
    rec = StreamingRecognizer(stream_package)
    as_float = [r.text for r in _feed(rec, pcm.astype(np.float32) / 32768, 800) if r.final]
    assert [r.text for r in _feed(rec, pcm, 800) if r.final] == as_float
