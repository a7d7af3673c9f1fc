"""asr.audio: formats, resampling, downmix, segments and every kind of broken file."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import SAMPLE_RATE, AudioError, audio_info, load_audio, resample


def tone(sr: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """(frames,) or (frames, channels) float32 sine at 0.5 amplitude."""
    t = np.arange(round(sr * seconds)) / sr
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def peak_hz(wave: torch.Tensor, sr: int) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return float(spectrum.argmax()) * sr / wave.shape[0]


# ---------------------------------------------------------------------------- formats

FORMATS = [
    ("wav", "WAV", "PCM_16", True),
    ("flac", "FLAC", "PCM_16", True),
    ("sph", "NIST", "PCM_16", True),
    ("ogg", "OGG", "VORBIS", False),
    ("mp3", "MP3", "MPEG_LAYER_III", False),
]


@pytest.mark.parametrize("ext,fmt,subtype,lossless", FORMATS)
def test_formats_load(tmp_path, ext, fmt, subtype, lossless):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} here cannot write {fmt}")
    path = tmp_path / f"a.{ext}"
    x = tone(SAMPLE_RATE, 1.0)
    sf.write(path, x, SAMPLE_RATE, format=fmt, subtype=subtype)

    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.path) == (SAMPLE_RATE, 1, str(path))
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    if lossless:
        assert info.frames == len(x) and info.duration == 1.0
        assert torch.allclose(wave, torch.from_numpy(x), atol=1 / 2**14)
    else:
        assert abs(wave.shape[0] - len(x)) <= 1152  # one MP3 frame of codec padding at most
        assert peak_hz(wave, SAMPLE_RATE) == pytest.approx(440, abs=2)


# ---------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_to_16k(tmp_path, sr):
    path = tmp_path / f"tone_{sr}.wav"
    x = tone(sr, 1.3, freq=440)
    sf.write(path, x, sr, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.shape == (math.ceil(len(x) * SAMPLE_RATE / sr),)
    assert peak_hz(wave, SAMPLE_RATE) == pytest.approx(440, abs=1)
    assert float(wave.abs().max()) == pytest.approx(0.5, abs=0.02)  # level kept
    assert audio_info(path).sample_rate == sr


def test_three_channel_48k_downmix(tmp_path):
    path = tmp_path / "three.wav"
    sr = 48000
    x = tone(sr, 0.5)
    data = np.stack([x, 0.5 * x, np.zeros_like(x)], axis=1)  # mean = 0.5 * x
    sf.write(path, data, sr, subtype="FLOAT")
    info = audio_info(path)
    assert (info.channels, info.sample_rate, info.frames) == (3, sr, len(x))
    native = load_audio(path, sample_rate=sr)
    assert torch.allclose(native, torch.from_numpy(0.5 * x), atol=1e-6)
    at16 = load_audio(path)
    assert at16.shape == (len(x) // 3,)
    assert float(at16.abs().max()) == pytest.approx(0.25, abs=0.01)


def test_resample_identity_and_batch():
    w = torch.randn(2, 800)
    assert resample(w, 16000, 16000) is w
    assert resample(w, 8000, 16000).shape == (2, 1600)
    with pytest.raises(ValueError):
        resample(w, 0, 16000)


# ---------------------------------------------------------------------------- segments


@pytest.fixture
def ramp(tmp_path):
    """2 s at 8 kHz whose sample i holds i / 16000 (exact in float32 FLOAT WAV)."""
    path = tmp_path / "ramp.wav"
    sf.write(path, (np.arange(16000) / 16000).astype(np.float32), 8000, subtype="FLOAT")
    return path


def test_segment_read(ramp):
    seg = load_audio(ramp, sample_rate=8000, offset=0.5, duration=0.25)
    expected = torch.arange(4000, 6000, dtype=torch.float32) / 16000
    assert torch.equal(seg, expected)
    tail = load_audio(ramp, sample_rate=8000, offset=1.5)
    assert tail.shape == (4000,) and float(tail[0]) == 12000 / 16000
    # Rounding slack: a segment ending 5 ms past the end is clipped to the end.
    assert load_audio(ramp, sample_rate=8000, offset=1.5, duration=0.505).shape == (4000,)
    assert load_audio(ramp, offset=0.5, duration=0.25).shape == (4000,)  # resampled to 16 kHz


@pytest.mark.parametrize(
    "offset,duration,reason",
    [
        (2.0, None, "past the end"),
        (1.5, 1.0, "runs past the end"),
        (-1.0, None, "offset"),
        (0.0, 0.0, "duration"),
    ],
)
def test_bad_segments(ramp, offset, duration, reason):
    with pytest.raises(AudioError, match=reason) as e:
        load_audio(ramp, offset=offset, duration=duration)
    assert e.value.path == str(ramp)


# ---------------------------------------------------------------------------- broken files


def _missing(p):
    return p / "nope.wav"


def _empty(p):
    (p / "empty.wav").write_bytes(b"")
    return p / "empty.wav"


def _text_as_wav(p):
    (p / "text.wav").write_text("this is not audio, just text in a file named .wav\n" * 5)
    return p / "text.wav"


def _zero_samples(p):
    sf.write(p / "zero.wav", np.zeros(0, dtype=np.float32), 16000)
    return p / "zero.wav"


def _truncated(fraction, ext="flac"):
    def make(p):
        full = p / f"full.{ext}"
        rng = np.random.default_rng(0)
        sf.write(
            full, (0.3 * rng.standard_normal(48000)).astype(np.float32), 16000, subtype="PCM_16"
        )
        data = full.read_bytes()
        cut = p / f"cut.{ext}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        return cut

    return make


def _nan(p):
    x = tone(16000, 0.5)
    x[100] = np.nan
    sf.write(p / "nan.wav", x, 16000, subtype="FLOAT")
    return p / "nan.wav"


def _inf(p):
    x = tone(16000, 0.5)
    x[-1] = np.inf
    sf.write(p / "inf.flac.wav", x, 16000, subtype="DOUBLE")
    return p / "inf.flac.wav"


def _directory(p):
    (p / "dir.wav").mkdir()
    return p / "dir.wav"


BAD = [
    (_missing, "not found", True),
    (_empty, "empty file", True),
    (_text_as_wav, "not a readable audio file", True),
    (_directory, "not a regular file", True),
    (_zero_samples, "no audio samples", True),
    (_truncated(0.5), "corrupt or truncated|truncated", False),
    (_truncated(0.3), "corrupt or truncated|truncated", False),
    (_truncated(0.9), "corrupt or truncated|truncated", False),
    (_truncated(0.5, "wav"), "truncated: header declares", True),
    (_nan, "NaN or infinite", False),
    (_inf, "NaN or infinite", False),
]


@pytest.mark.parametrize(
    "make,reason,header_detects", BAD, ids=lambda v: getattr(v, "__name__", None)
)
def test_bad_files_raise_audio_error(tmp_path, make, reason, header_detects):
    path = make(tmp_path)
    with pytest.raises(AudioError, match=reason) as e:
        load_audio(path)
    assert str(e.value).startswith(f"{path}: ")
    assert e.value.path == str(path)
    assert isinstance(e.value, ValueError)
    if header_detects:  # these are visible without decoding
        with pytest.raises(AudioError, match=reason):
            audio_info(path)
    else:  # header is fine; only decoding reveals the problem
        audio_info(path)


def test_truncated_nist_detected(tmp_path):
    full = tmp_path / "a.sph"
    sf.write(full, tone(16000, 1.0), 16000, format="NIST", subtype="PCM_16")
    cut = tmp_path / "cut.sph"
    cut.write_bytes(full.read_bytes()[:20000])
    with pytest.raises(AudioError, match="truncated"):
        audio_info(cut)


def test_streamed_wav_placeholder_size_is_not_truncation(tmp_path):
    # Writers that cannot seek leave 0xFFFFFFFF as the data size; that is not truncation.
    path = tmp_path / "streamed.wav"
    sf.write(path, tone(16000, 0.25), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert load_audio(path).shape == (4000,)


def test_audio_error_pickles():
    e = pickle.loads(pickle.dumps(AudioError("/x.wav", "empty file (0 bytes)")))
    assert (e.path, e.reason, str(e)) == (
        "/x.wav",
        "empty file (0 bytes)",
        "/x.wav: empty file (0 bytes)",
    )
