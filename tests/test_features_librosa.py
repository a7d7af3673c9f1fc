"""features.LogMel against librosa.feature.melspectrogram on real speech.

Both are set to the same analysis: 25 ms periodic Hann window (400 samples) zero-padded to
n_fft 512, 10 ms hop, centred frames with zero padding, power spectrum, HTK mel scale without
filter-area normalisation (torchaudio's MelSpectrogram defaults, which LogMel uses; librosa
defaults to the Slaney scale and area normalisation, so those two are set explicitly), and the
same log floor log(max(power, 1e-10)).

Tolerance: LogMel runs in float32, librosa in float64. The FFT's rounding error is about
float32 epsilon (6e-8) times the frame's largest amplitude, so for a bin 60 dB (amplitude
1e-3) below the recording's peak the relative power error is at most ~1e-3, i.e. a log
difference of ~1e-3 (measured: 5e-5 on yesno). Further down, float32 noise dominates (a bin
100 dB down differs by up to ~3e-3, a few near the 1e-10 floor by ~1e-2), so those bins are
only checked loosely. A different mel scale or normalisation differs by far more (checked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from asr.audio import load_audio
from asr.features import FeatureConfig, LogMel


def _speech_files(root: Path) -> list[Path]:
    files = sorted((root / "yesno" / "waves_yesno").glob("*.wav"))[:1]
    files += sorted((root / "speechocean762" / "WAVE").glob("SPEAKER*/*.*"))[:1]
    return files


def _librosa_logmel(y: np.ndarray, cfg: FeatureConfig, htk: bool = True, norm: str | None = None) -> np.ndarray:
    import librosa

    power = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels,
        fmin=cfg.f_min, fmax=cfg.f_max, htk=htk, norm=norm)
    return np.log(np.maximum(power, 1e-10)).T  # (T, n_mels)


@pytest.mark.slow
@pytest.mark.data
def test_logmel_matches_librosa_on_real_speech(shared_data):
    files = _speech_files(shared_data)
    if not files:
        pytest.skip(f"no yesno or speechocean762 audio under {shared_data}")
    cfg = FeatureConfig()
    for path in files:
        wave = load_audio(path, cfg.sample_rate)
        ours = LogMel(cfg).single(wave).numpy().astype(np.float64)
        ref = _librosa_logmel(wave.numpy().astype(np.float64), cfg)
        assert ours.shape == ref.shape, path
        diff = np.abs(ours - ref)
        loud = ref > ref.max() - 6.0 * np.log(10)  # within 60 dB of the peak
        assert loud.mean() > 0.3, path  # enough of the recording is checked tightly
        assert diff[loud].max() < 1e-3, (path, diff[loud].max())
        assert diff.max() < 0.05, (path, diff.max())
        # The comparison can tell conventions apart: Slaney's scale differs by far more.
        slaney = _librosa_logmel(wave.numpy().astype(np.float64), cfg, htk=False)
        assert np.abs(ours - slaney)[loud].max() > 0.1
