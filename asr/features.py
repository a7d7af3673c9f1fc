"""Log-mel features, global CMVN and SpecAugment.

One function, :func:`num_frames`, owns the samples -> frames arithmetic; everything that
needs a frame count (datasets, the model's length bookkeeping, CTC feasibility checks,
timestamps) calls it rather than re-deriving it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import overload

import torch
import torchaudio
from torch import Tensor, nn

from asr.audio import SAMPLE_RATE


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key.

    Defined here, in the lowest module with a config section, so that every section's
    ``validate`` (features, model, experiment) raises the same type; :mod:`asr.config`
    re-exports it.
    """


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = SAMPLE_RATE  # Hz; audio is resampled to this on load
    n_mels: int = 80  # mel filterbank channels
    win_ms: float = 25.0  # analysis window length (ms)
    hop_ms: float = 10.0  # frame shift (ms)
    n_fft: int = 512  # FFT size (>= window length in samples)
    f_min: float = 20.0  # lowest filter edge (Hz)
    f_max: float | None = None  # highest filter edge (Hz); None = Nyquist

    def validate(self) -> None:
        if self.sample_rate <= 0:
            raise ConfigError(f"features.sample_rate must be > 0 (is {self.sample_rate})")
        if self.n_mels < 1:
            raise ConfigError(f"features.n_mels must be >= 1 (is {self.n_mels})")
        if self.win_ms <= 0 or self.hop_ms <= 0:
            raise ConfigError(f"features.win_ms and features.hop_ms must be > 0 (are {self.win_ms}, {self.hop_ms})")
        if self.hop_length < 1 or self.win_length < 1:
            raise ConfigError("features.win_ms and features.hop_ms must each span at least one sample")
        if self.n_fft < self.win_length:
            raise ConfigError(f"features.n_fft ({self.n_fft}) must be >= the window length in samples "
                              f"({self.win_length} = {self.win_ms} ms at {self.sample_rate} Hz)")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ConfigError(f"features.f_min and features.f_max must satisfy 0 <= f_min < f_max <= "
                              f"{nyquist:g} Hz (are {self.f_min}, {self.f_max})")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.win_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def frame_shift(self) -> float:
        """Seconds between consecutive feature frames."""
        return self.hop_length / self.sample_rate


@dataclass(frozen=True)
class SpecAugmentConfig:
    freq_masks: int = 2  # number of frequency masks per utterance (0 disables)
    freq_width: int = 15  # max mel channels per frequency mask
    time_masks: int = 2  # number of time masks per utterance (0 disables)
    time_width: int = 40  # max frames per time mask
    time_width_ratio: float = 0.05  # ... and at most this fraction of the utterance

    def validate(self) -> None:
        for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.spec_augment.{key} must be >= 0 (is {getattr(self, key)})")
        if not 0.0 <= self.time_width_ratio <= 1.0:
            raise ConfigError(f"model.spec_augment.time_width_ratio must be in [0, 1] (is {self.time_width_ratio})")


@overload
def num_frames(num_samples: int, cfg: FeatureConfig = ...) -> int: ...
@overload
def num_frames(num_samples: Tensor, cfg: FeatureConfig = ...) -> Tensor: ...
def num_frames(num_samples: int | Tensor, cfg: FeatureConfig = FeatureConfig()) -> int | Tensor:
    """Number of feature frames :class:`LogMel` yields for ``num_samples`` samples.

    torchaudio's STFT with ``center=True`` pads ``n_fft // 2`` on both sides, giving
    ``1 + num_samples // hop`` frames for any non-empty input.
    """
    if isinstance(num_samples, Tensor):
        return torch.div(num_samples, cfg.hop_length, rounding_mode="floor") + 1
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0 (is {num_samples})")
    return num_samples // cfg.hop_length + 1


def length_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(N,) lengths -> (N, max_len) bool mask, True on valid frames (on ``lengths``' device).

    The toolkit's one padding mask: features, CMVN and every model stage use it.
    """
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class LogMel(nn.Module):
    """Waveforms (N, S) with lengths (N,) -> log-mel features (N, T, n_mels) and lengths (N,)."""

    def __init__(self, cfg: FeatureConfig = FeatureConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            power=2.0,
            center=True,
            # Zero (not reflect) padding: an utterance's edge frames then see the same zeros
            # alone as they see from batch padding, so features are padding-invariant.
            pad_mode="constant",
        )

    def forward(self, waves: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if waves.ndim == 1:
            waves = waves.unsqueeze(0)
        assert waves.ndim == 2, f"expected (N, S) waveforms, got {tuple(waves.shape)}"
        if lengths is None:
            lengths = torch.full((waves.shape[0],), waves.shape[1], dtype=torch.long)
        # MelSpectrogram runs in float32 even under autocast: log of tiny powers needs the range.
        with torch.autocast(device_type=waves.device.type, enabled=False):
            spec = self.mel(waves.float())  # (N, n_mels, T)
            feats = torch.log(spec.clamp_min(1e-10)).transpose(1, 2)  # (N, T, n_mels)
        feat_lens = num_frames(lengths.to(torch.long), self.cfg)
        # Frames whose window reaches into padding differ from those of the unpadded
        # signal; zero every frame past the valid count so downstream masking is exact.
        mask = length_mask(feat_lens.to(feats.device), feats.shape[1])
        return feats * mask.unsqueeze(-1), feat_lens

    def single(self, wave: Tensor) -> Tensor:
        """One waveform (S,) -> features (T, n_mels)."""
        feats, _ = self.forward(wave.unsqueeze(0))
        return feats[0]


class GlobalCMVN(nn.Module):
    """Global mean/variance normalisation with statistics stored as buffers.

    The statistics are accumulated once from the training features
    (:func:`compute_cmvn_stats`, then :meth:`set_stats`) and travel inside the model's state
    dict, so inference never needs the training data.
    """

    mean: Tensor
    istd: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("istd", torch.ones(dim))

    @torch.no_grad()
    def set_stats(self, total: Tensor, total_sq: Tensor, count: int, floor: float = 1e-5) -> None:
        if count <= 0:
            raise ValueError("CMVN statistics need at least one frame")
        mean = total.double() / count
        var = (total_sq.double() / count - mean**2).clamp_min(floor)
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            # A NaN here would silently turn every output of the model into NaN.
            raise ValueError("CMVN statistics are not finite")
        self.mean.copy_(mean.float())
        self.istd.copy_(var.rsqrt().float())

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        out = (feats - self.mean) * self.istd
        return out * length_mask(lengths.to(feats.device), feats.shape[1]).unsqueeze(-1)


def compute_cmvn_stats(feature_iter: Iterable[Tensor]) -> tuple[Tensor, Tensor, int]:
    """Accumulate (sum, sum of squares, frame count) over an iterable of (T, F) tensors.

    Utterances with a non-finite value (or whose squares overflow) are left out: one of them
    would make the statistics, and so every output of the model, NaN. Callers that must
    report such utterances check them before (the training dataset rejects them on load).
    """
    total = total_sq = None
    count = 0
    for f in feature_iter:
        f = f.double()
        s, sq = f.sum(0), (f * f).sum(0)
        if not (torch.isfinite(s).all() and torch.isfinite(sq).all()):
            continue
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += f.shape[0]
    if total is None or total_sq is None:
        raise ValueError("no (finite) features to compute CMVN statistics from")
    return total, total_sq, count


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019), active in training mode only.

    torchaudio's masking transforms mask the same region across a batch when given a
    batch, and ignore per-utterance lengths; we apply them per utterance over the valid
    frames only so that short utterances are not wiped out by a mask sized for long ones.
    """

    def __init__(self, cfg: SpecAugmentConfig = SpecAugmentConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.freq = torchaudio.transforms.FrequencyMasking(cfg.freq_width) if cfg.freq_width > 0 else None

    def forward(self, feats: Tensor, lengths: Tensor) -> Tensor:
        if not self.training or (self.cfg.freq_masks == 0 and self.cfg.time_masks == 0):
            return feats
        feats = feats.clone()
        for i in range(feats.shape[0]):
            n = int(lengths[i])
            x = feats[i, :n].transpose(0, 1)  # (F, T) view of the valid frames
            if self.freq is not None:
                for _ in range(self.cfg.freq_masks):
                    x = self.freq(x)
            max_w = min(self.cfg.time_width, int(self.cfg.time_width_ratio * n))
            if max_w >= 1:
                for _ in range(self.cfg.time_masks):
                    x = torchaudio.functional.mask_along_axis(x, max_w, 0.0, axis=1)
            feats[i, :n] = x.transpose(0, 1)
        return feats
