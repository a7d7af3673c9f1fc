"""Audio I/O: every file the toolkit reads goes through :func:`load_audio`.

soundfile (libsndfile) does the decoding because ``torchaudio.load`` needs torchcodec,
which is not available everywhere; libsndfile 1.1+ reads WAV, FLAC, OGG/Vorbis, MP3 and
NIST SPHERE, among others. Resampling uses ``torchaudio.functional.resample`` (windowed
sinc), computed per call so nothing global leaks into DataLoader/process-pool workers.

Every problem with a file is raised as one exception type, :class:`AudioError`, whose
message names the file and the cause, so batch jobs can report and skip bad items.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000  # Hz: the rate every model in the toolkit consumes

# Container formats whose decoded length can legitimately differ a little from the
# header's frame count: libsndfile estimates MP3 length from the Xing/VBR header or the
# bit rate. Tolerance in frames = max(absolute, relative * expected).
_LOSSY_LENGTH_TOLERANCE = {"MP3": (1152, 0.01)}  # 1152 = samples in one MPEG-1 layer III frame

# When a segment (offset + duration) runs past the end of the file by at most this much,
# it is clipped to the file end instead of being an error: manifests store durations
# rounded to a few decimals, so the last sample can be "missing" by rounding alone.
_SEGMENT_END_SLACK = 0.01  # seconds

# libsndfile's parse log for a RIFF/WAVE file whose data chunk claims more bytes than the
# file holds reads e.g. "data : 64000 (should be 31978)"; it then silently shortens the
# file, so this log line is the only sign of truncation that soundfile exposes.
_WAV_DATA_TOO_LONG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers that cannot seek back leave a placeholder data size; not truncation.
_WAV_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}

# Largest sample magnitude accepted. Integer PCM is decoded to [-1, 1]; float files are
# returned as stored, and those are nominally in [-1, 1] too, but legitimately a little over
# after processing, and some tools write floats at integer scale (up to 32768 for 16-bit,
# 2**31 ~ 2.1e9 for 32-bit). So the bound sits above every integer scale: 1e10. Beyond it a
# file is corrupt (random bytes read as floats give peaks like 1e29), and it is far below
# where the log-mel overflows: float32 power |X|^2 ~ (peak * n_fft / 2)^2 reaches 3.4e38 at a
# peak of ~7e16, after which features are inf/NaN and the model silently emits nothing.
MAX_SAMPLE_MAGNITUDE = 1e10


class AudioError(ValueError):
    """A file that cannot be used as audio. ``str(e) == f"{path}: {reason}"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when the error crosses a process boundary
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, read without decoding the samples."""

    path: str  # the file, as given
    sample_rate: int  # Hz, as stored in the file
    frames: int  # samples per channel
    channels: int  # number of channels before any downmix
    duration: float  # seconds = frames / sample_rate


def _open(path: str | os.PathLike) -> sf.SoundFile:
    """Open ``path`` for reading after the checks soundfile does not do (or words badly)."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise AudioError(path, f"dangling or looping symbolic link (-> {os.readlink(p)})")
        raise AudioError(path, "file not found")
    if not p.is_file():
        raise AudioError(path, "not a regular file")
    if p.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        f = sf.SoundFile(p)
    except (sf.SoundFileError, RuntimeError, OSError) as e:
        raise AudioError(path, f"not a readable audio file ({_libsndfile_reason(e)})") from e
    try:
        _check_header(f, path)
    except AudioError:
        f.close()
        raise
    return f


def _libsndfile_reason(e: Exception) -> str:
    # LibsndfileError messages repeat the file name ("Error opening 'x.wav': ..."); keep the cause.
    msg = str(getattr(e, "error_string", "") or e).strip()
    return msg.split(": ", 1)[-1] if msg.startswith("Error opening") else msg


def _check_header(f: sf.SoundFile, path: str | os.PathLike) -> None:
    """Raise for headers that contradict the file: truncation that libsndfile hides."""
    if f.samplerate <= 0 or f.channels <= 0:
        raise AudioError(
            path, f"invalid header (sample rate {f.samplerate}, channels {f.channels})"
        )
    if f.format in ("WAV", "WAVEX", "RF64", "W64"):
        m = _WAV_DATA_TOO_LONG.search(f.extra_info)
        if m:
            declared, actual = int(m.group(1)), int(m.group(2))
            if declared not in _WAV_UNKNOWN_SIZES and declared > actual:
                raise AudioError(
                    path,
                    f"truncated: header declares {declared} data bytes, file holds {actual}",
                )
    elif f.format == "NIST":
        samples = _nist_sample_count(f.name)
        if samples is not None and samples > f.frames:
            raise AudioError(
                path, f"truncated: header declares {samples} samples, file holds {f.frames}"
            )
    if f.frames <= 0:
        raise AudioError(path, "contains no audio samples")


def _nist_sample_count(path: str | os.PathLike) -> int | None:
    """``sample_count`` from a NIST SPHERE header (1024 ASCII bytes), if present."""
    with open(path, "rb") as fh:
        header = fh.read(1024).decode("ascii", errors="replace")
    m = re.search(r"^sample_count\s+-i\s+(\d+)", header, re.MULTILINE)
    return int(m.group(1)) if m else None


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information of ``path`` without decoding the samples.

    Raises:
        AudioError: the file is missing, empty, not audio, has no samples, or its header
            shows that it was truncated (WAV/NIST; FLAC/MP3 truncation only shows when
            decoding, see :func:`load_audio`).
    """
    with _open(path) as f:
        return AudioInfo(
            path=str(path),
            sample_rate=int(f.samplerate),
            frames=int(f.frames),
            channels=int(f.channels),
            duration=f.frames / f.samplerate,
        )


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    offset: float = 0.0,
    duration: float | None = None,
) -> torch.Tensor:
    """Read ``path`` (or a segment of it) as mono float32 at ``sample_rate``.

    Multi-channel audio is downmixed by averaging the channels.

    Args:
        path: any format libsndfile reads (WAV, FLAC, OGG, MP3, NIST SPHERE, ...).
        sample_rate: output rate in Hz; the file is resampled when its rate differs.
        offset: start of the segment in seconds.
        duration: length of the segment in seconds; ``None`` reads to the end.

    Returns:
        Tensor of shape (samples,), dtype float32, nominally in [-1, 1].

    Raises:
        AudioError: missing/empty/non-audio/truncated file, zero samples, NaN, infinite or
            absurdly large samples (:data:`MAX_SAMPLE_MAGNITUDE`), or a segment outside the file.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive (is {sample_rate})")
    if offset < 0 or not math.isfinite(offset):
        raise AudioError(path, f"invalid segment offset {offset} s")
    if duration is not None and (duration <= 0 or not math.isfinite(duration)):
        raise AudioError(path, f"invalid segment duration {duration} s")

    with _open(path) as f:
        sr, total = int(f.samplerate), int(f.frames)
        start = round(offset * sr)
        if start >= total:
            raise AudioError(
                path, f"segment offset {offset} s is past the end ({total / sr:.3f} s)"
            )
        stop = total
        if duration is not None:
            stop = start + round(duration * sr)
            if stop > total:
                if (stop - total) / sr > _SEGMENT_END_SLACK:
                    raise AudioError(
                        path,
                        f"segment {offset}+{duration} s runs past the end ({total / sr:.3f} s)",
                    )
                stop = total
        try:
            if start:
                f.seek(start)
            data = f.read(stop - start, dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError) as e:
            raise AudioError(path, f"decoding failed, file corrupt or truncated ({e})") from e
        fmt = f.format

    expected, got = stop - start, data.shape[0]
    absolute, relative = _LOSSY_LENGTH_TOLERANCE.get(fmt, (0, 0.0))
    if expected - got > max(absolute, relative * expected):
        raise AudioError(path, f"truncated: header declares {expected} frames, decoded {got}")
    if got == 0:
        raise AudioError(path, "contains no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")
    peak = max(float(data.max()), -float(data.min()))
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise AudioError(
            path,
            f"sample magnitude {peak:.3g} is absurd (> {MAX_SAMPLE_MAGNITUDE:.0e}; audio is "
            "nominally within [-1, 1]): corrupt float data",
        )

    # (frames, channels) -> (frames,): averaging keeps the level of correlated channels.
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    wave = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    return resample(wave, sr, sample_rate)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample along the last dimension.

    Args:
        wave: (..., samples) float tensor.
        orig_sr, new_sr: rates in Hz.

    Returns:
        (..., ceil(samples * new_sr / orig_sr)) tensor; ``wave`` itself when the rates match.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive (got {orig_sr} -> {new_sr})")
    if orig_sr == new_sr:
        return wave
    # torchaudio reduces the ratio by the gcd itself, so 44100 -> 16000 costs 441/160 phases.
    return AF.resample(wave, orig_sr, new_sr)
