"""Live transcription: :class:`StreamingRecognizer` turns audio that arrives in pieces into
partial and final hypotheses, with a streaming package (a latency-controlled BiLSTM,
``model.chunk_frames``, or a left-to-right model).

Every stage works on what has arrived, with bounded look-ahead, and computes what the
offline model computes on the whole recording (tests/test_streaming.py checks each against
it): the log-mel frames (:class:`StreamingLogMel`: the STFT's zero padding at the start, a
frame as soon as its window is complete), the CMVN (the stored global statistics, and for
``model.cmvn=causal`` the running mean, carried), the convolutional front-end
(:class:`StreamingConv`: each stride-2 layer keeps the frames its next output still needs),
and the recurrent layers (``AcousticModel.recurrent_windows`` on one chunk and its right
context at a time, the forward states carried). Look-ahead: the STFT's half window, the
front-end's receptive field (3 frames for 4x subsampling), and the chunk plus its right
context.

Decoding is greedy or flashlight's incremental beam search with the LM
(:func:`asr.decode.factory.make_stream_decoder`). A segment ends (a *final* result) when the
model has emitted only blanks and word delimiters for ``endpoint_s`` after speech, or after
``max_segment_s``; then a new search starts. Memory is flat however long the stream runs:
buffers hold a few frames, the recurrent state is fixed, and each search lives one segment.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from asr.decode.beam import BeamStream
from asr.decode.decoding import DecodingOptions, GreedyStream, Hypothesis
from asr.decode.factory import make_stream_decoder
from asr.features import LogMel
from asr.model import AcousticModel, ConvSubsampling, RNNState, causal_mean_removal
from asr.package import ModelPackage

# A left-to-right model (model.bidirectional=false) has no chunks of its own: it is run on
# this many output frames at a time (160 ms at 40 ms frames; it adds no look-ahead).
UNIDIRECTIONAL_STEP_FRAMES = 4
DEFAULT_ENDPOINT_S = 0.5
DEFAULT_MAX_SEGMENT_S = 30.0


class StreamingError(ValueError):
    """A package that cannot stream, or audio that cannot be streamed (one line)."""


@dataclass(frozen=True)
class StreamWord:
    word: str
    start: float  # seconds from the start of the stream
    end: float


@dataclass(frozen=True)
class StreamResult:
    """A partial (the segment's best hypothesis so far; it may still change) or final one."""

    final: bool
    text: str
    words: tuple[StreamWord, ...]
    start: float  # the segment's start, seconds from the start of the stream
    time: float  # the audio fed when this result was produced, in seconds


def streaming_problem(package: ModelPackage) -> str | None:
    """Why ``package`` cannot stream, or None when it can."""
    m = package.config.model
    if m.bidirectional and not m.chunk_frames:
        return ("a full-context BiLSTM reads the whole recording before its first word; fine-tune it into a "
                "latency-controlled one: asr train CONFIG model.chunk_frames=4 model.right_context_frames=4 "
                "model.cmvn=global --init-from MODEL.asr")
    if m.cmvn == "utterance":
        return "model.cmvn=utterance needs the whole recording; a streaming model uses global or causal CMVN"
    if m.attention:
        return "its self-attention block reads the whole recording"
    return None


class StreamingLogMel:
    """:class:`asr.features.LogMel` on samples that arrive in pieces: the same frames (the
    STFT with ``center=True`` zero-pads ``n_fft // 2`` samples at both ends; here the start
    padding is put in front and the end padding at :meth:`flush`), each returned as soon as
    its window is complete. Holds less than one window of samples."""

    def __init__(self, logmel: LogMel) -> None:
        cfg = logmel.cfg
        self.hop, self.n_fft = cfg.hop_length, cfg.n_fft
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
            f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=2.0, center=False,
        ).to(logmel.mel.spectrogram.window.device)
        self.n_mels = cfg.n_mels
        self.device = logmel.mel.spectrogram.window.device
        self._buf = torch.zeros(self.n_fft // 2, device=self.device)

    def push(self, samples: Tensor) -> Tensor:
        """New samples (S,) -> the frames (T, n_mels) their arrival completes."""
        self._buf = torch.cat([self._buf, samples.float().to(self._buf.device)])
        return self._frames()

    def flush(self) -> Tensor:
        """The last frames (the end padding), then ready for a new stream."""
        self._buf = torch.cat([self._buf, torch.zeros(self.n_fft // 2, device=self.device)])
        out = self._frames()
        self._buf = torch.zeros(self.n_fft // 2, device=self.device)
        return out

    def _frames(self) -> Tensor:
        n = (self._buf.numel() - self.n_fft) // self.hop + 1 if self._buf.numel() >= self.n_fft else 0
        if n <= 0:
            return torch.zeros(0, self.n_mels, device=self.device)
        spec = self.mel(self._buf[None, : (n - 1) * self.hop + self.n_fft])  # (1, n_mels, n)
        self._buf = self._buf[n * self.hop :]
        return torch.log(spec.clamp_min(1e-10))[0].transpose(0, 1)


class StreamingConv:
    """:class:`asr.model.ConvSubsampling` on frames that arrive in pieces. Each layer (kernel
    3, stride 2, zero padding 1) sees a zero frame before the first input and, at the end,
    one after the last (the padding the offline convolution has), and keeps the input frames
    its next output still needs; an output appears once its receptive field has arrived."""

    def __init__(self, frontend: ConvSubsampling) -> None:
        self.layers = [typing.cast(nn.Conv2d, conv) for conv in frontend.layers]
        self.reset()

    def reset(self) -> None:
        self._cache: list[Tensor | None] = [None] * len(self.layers)

    def push(self, x: Tensor, final: bool = False) -> Tensor:
        """Frames (T, F) -> the front-end output frames (T', D) they complete."""
        if not self.layers:
            return x
        h = x[None, None]  # (1, 1, T, F)
        for i, conv in enumerate(self.layers):
            cache = self._cache[i]
            if cache is None:  # the stream's first frames: the left zero padding goes first
                cache = h.new_zeros(1, h.shape[1], 1, h.shape[3])
            buf = torch.cat([cache, h], dim=2)
            if final:
                buf = torch.cat([buf, buf.new_zeros(1, buf.shape[1], 1, buf.shape[3])], dim=2)
            m = (buf.shape[2] - 3) // 2 + 1 if buf.shape[2] >= 3 else 0
            if m > 0:
                h = F.relu(F.conv2d(buf[:, :, : 2 * (m - 1) + 3], conv.weight, conv.bias, stride=2, padding=(0, 1)))
            else:
                h = buf.new_zeros(1, conv.out_channels, 0, (buf.shape[3] - 1) // 2 + 1)
            self._cache[i] = buf[:, :, 2 * m :]
        if final:
            self.reset()
        _, c, t, f = h.shape
        return h.permute(0, 2, 1, 3).reshape(t, c * f)


class StreamingRecognizer:
    """Audio pieces in, partial and final hypotheses out.

    >>> rec = StreamingRecognizer(load_package("stream.asr"))
    >>> for piece in pieces:               # float32 mono samples at rec.sample_rate, any size
    ...     for r in rec.feed(piece):
    ...         print("final" if r.final else "partial", r.text)
    >>> results = rec.flush()              # the end of the stream: the last final result

    Args:
        package: a streaming package (:func:`streaming_problem` says why another is refused).
        options: greedy (default) or beam search, with an LM (its tuned weights are used).
        endpoint_s: a segment ends after this much blank output following speech (0: only at
            ``max_segment_s`` and at :meth:`flush`).
        max_segment_s: a segment ends after this long regardless (bounds the search's memory).
        commit_s: beam search only: fix each word once the search has decoded this many
            seconds of output after it; the LM can no longer change it, so no word comes out
            later than about ``latency_s + commit_s`` after its end, at some accuracy (None:
            words may change until the segment's final; greedy words never change).

    Raises:
        StreamingError: the package cannot stream.
        DecoderError: the LM or lexicon is unusable.
    """

    def __init__(self, package: ModelPackage, options: DecodingOptions | None = None,
                 endpoint_s: float = DEFAULT_ENDPOINT_S, max_segment_s: float = DEFAULT_MAX_SEGMENT_S,
                 commit_s: float | None = None) -> None:
        why = streaming_problem(package)
        if why:
            raise StreamingError(f"{package.info.get('path', 'this package')}: cannot stream: {why}")
        if endpoint_s < 0 or max_segment_s <= 0 or (commit_s is not None and commit_s < 0):
            raise StreamingError(f"endpoint_s and commit_s must be >= 0 and max_segment_s > 0 "
                                 f"(are {endpoint_s}, {commit_s}, {max_segment_s})")
        self.package = package
        self.model: AcousticModel = package.model
        m = package.config.model
        self.chunk = m.chunk_frames or UNIDIRECTIONAL_STEP_FRAMES
        self.right = m.right_context_frames
        self.sample_rate = package.sample_rate
        self.frame_shift = package.frame_shift  # seconds per output frame
        self.endpoint_frames = int(round(endpoint_s / self.frame_shift)) if endpoint_s > 0 else 0
        self.max_segment_frames = max(1, int(round(max_segment_s / self.frame_shift)))
        self.commit_frames = None if commit_s is None else int(round(commit_s / self.frame_shift))
        self._new_search, self.settings = make_stream_decoder(package, options, self.commit_frames)
        if self.commit_frames is not None and self.settings["decoder"] != "greedy":
            self.settings["commit_s"] = commit_s
        tokens = package.tokenizer.tokens
        self._silent = {package.tokenizer.blank_id}
        if package.tokenizer.word_delimiter in tokens:
            self._silent.add(tokens.index(package.tokenizer.word_delimiter))
        self.features = StreamingLogMel(package.featurizer)
        self.frontend = StreamingConv(self.model.frontend)
        self.reset()

    @property
    def latency_s(self) -> float:
        """Algorithmic latency: the chunk and its right context (the front-end's few frames
        of look-ahead and the STFT's half window come on top)."""
        return (self.chunk + self.right) * self.frame_shift

    def reset(self) -> None:
        """Forget the stream: the next :meth:`feed` starts a new one."""
        self.features = StreamingLogMel(self.package.featurizer)
        self.frontend.reset()
        self._states: list[RNNState] | None = None
        self._frames = torch.zeros(0, 0)
        self._cmvn_sum: Tensor | None = None
        self._cmvn_count = 0
        self._samples = 0
        self._frame_pos = 0  # output frames decoded so far
        self._search: GreedyStream | BeamStream | None = None
        self._seg_start = 0
        self._speech = False
        self._silent_run = 0

    @torch.inference_mode()
    def feed(self, samples: Tensor | np.ndarray) -> list[StreamResult]:
        """Take the next samples (float mono in [-1, 1], or PCM integers, any count, at
        ``sample_rate``); return the results they complete: a partial for every chunk decoded
        while a segment has speech, a final at each endpoint."""
        if isinstance(samples, np.ndarray) and np.issubdtype(samples.dtype, np.integer):
            # PCM integers (16-bit from a sound card): scaled to [-1, 1) as soundfile reads them.
            samples = samples.astype(np.float32) / float(2 ** (8 * samples.dtype.itemsize - 1))
        x = torch.as_tensor(samples, dtype=torch.float32).reshape(-1).to(self.features.device)
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise StreamingError("audio holds NaN or infinite samples")
        self._samples += x.numel()
        return self._advance(self.features.push(x), final=False)

    @torch.inference_mode()
    def flush(self) -> list[StreamResult]:
        """End the stream: decode what is buffered and return the last results (the last
        final among them); the recognizer is then ready for a new stream."""
        if not self._samples:  # nothing was fed: no stream to end
            self.reset()
            return []
        results = self._advance(self.features.flush(), final=True)
        if self._search is not None and self._speech:
            results.append(self._finalize())
        self.reset()
        return results

    def _normalise(self, feats: Tensor) -> Tensor:
        cmvn = self.model.cmvn
        x = (feats.to(cmvn.mean.device) - cmvn.mean) * cmvn.istd
        if self.package.config.model.cmvn == "causal" and x.shape[0]:
            if self._cmvn_sum is None:
                self._cmvn_sum = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            out = causal_mean_removal(x[None], self._cmvn_sum[None], torch.tensor([self._cmvn_count], device=x.device))[0]
            self._cmvn_sum = self._cmvn_sum + x.sum(0)
            self._cmvn_count += x.shape[0]
            return out
        return x

    def _advance(self, feats: Tensor, final: bool) -> list[StreamResult]:
        h = self.frontend.push(self._normalise(feats), final)
        self._frames = h if not self._frames.numel() else torch.cat([self._frames, h])
        width = self.chunk + self.right
        results: list[StreamResult] = []
        while self._frames.shape[0] >= width or (final and self._frames.shape[0] > 0):
            window = self._frames[:width]
            valid = window.shape[0]
            window = F.pad(window, (0, 0, 0, width - valid))
            top, self._states, _, _ = self.model.recurrent_windows(
                window[None, None], torch.tensor([[valid]], device=window.device), self._states)
            results.extend(self._decode(self.model.emissions(top[0, 0, : min(self.chunk, valid)]).cpu()))
            self._frames = self._frames[self.chunk :]
        return results

    def _decode(self, log_probs: Tensor) -> list[StreamResult]:
        if self._search is None:
            self._search = self._new_search()
            self._seg_start = self._frame_pos
        self._search.step(log_probs)
        self._frame_pos += log_probs.shape[0]
        for label in log_probs.argmax(dim=-1).tolist():
            if label in self._silent:
                self._silent_run += 1
            else:
                self._speech, self._silent_run = True, 0
        if not self._speech:
            if self._frame_pos - self._seg_start >= self.max_segment_frames:
                self._search = None  # a long silence: start the search afresh, nothing to report
            return []
        results = [self._result(self._search.partial(), final=False)]
        if ((self.endpoint_frames and self._silent_run >= self.endpoint_frames)
                or self._frame_pos - self._seg_start >= self.max_segment_frames):
            results.append(self._finalize())
        return results

    def _finalize(self) -> StreamResult:
        assert self._search is not None
        result = self._result(self._search.finish(), final=True)
        self._search, self._speech, self._silent_run = None, False, 0
        return result

    def _result(self, hyp: Hypothesis, final: bool) -> StreamResult:
        shift, offset = self.frame_shift, self._seg_start
        words = tuple(StreamWord(w.word, (offset + w.start) * shift, (offset + w.end) * shift) for w in hyp.words)
        return StreamResult(final=final, text=hyp.text, words=words, start=offset * shift,
                            time=self._samples / self.sample_rate)
