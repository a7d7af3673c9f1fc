"""The acoustic model: log-mel features -> CMVN [-> per-utterance or running mean removal] ->
[SpecAugment] -> conv subsampling ->
N bidirectional LSTM/GRU/RNN layers -> [self-attention] -> linear -> log-softmax.

With ``model.chunk_frames`` the recurrent layers are latency-controlled (LC-BLSTM): they run
chunk by chunk, each with ``model.right_context_frames`` of look-ahead
(:meth:`AcousticModel.recurrent_windows`), which is what makes the model stream
(:mod:`asr.infer.streaming`).

A plain ``nn.Module``: it knows nothing of Lightning, so inference and export load it
without the training stack.

Padding invariance: an utterance's output is the same alone as in a padded batch.
Every stage masks frames past each utterance's length, and the backward direction of each
recurrent layer runs on each sequence *flipped within its own length* (``rnn_impl="flip"``),
so the padding is only ever seen after the valid frames. This is exact, like packed
sequences (``rnn_impl="packed"``, also available), but on CPU its backward pass is several
times faster (see benchmarks/bench_rnn.py and BENCHMARKS.md).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from asr.features import ConfigError, GlobalCMVN, SpecAugment, SpecAugmentConfig, length_mask

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CMVN_MODES = ("global", "utterance", "causal")
# model.cmvn=causal: the running mean starts from this many frames of the global mean (zero
# after global CMVN), so the first frames of a stream are not normalised to exactly zero.
CAUSAL_CMVN_PRIOR_FRAMES = 100

# A recurrent layer's carried forward state: h (GRU, RNN) or (h, c) (LSTM), each (1, N, H).
RNNState = Tensor | tuple[Tensor, Tensor]


def detach_state(state: RNNState) -> RNNState:
    """The state with its history cut off: truncated backpropagation through time."""
    if isinstance(state, tuple):
        return (state[0].detach(), state[1].detach())
    return state.detach()


def _stack_states(states: list[RNNState]) -> RNNState:
    """Per-chunk states [(1, N, H)] * C -> one state (1, N * C, H), row n * C + k."""
    if isinstance(states[0], tuple):
        return (_stack_states([s[0] for s in states]), _stack_states([s[1] for s in states]))  # type: ignore[return-value]
    h = torch.stack(states, dim=2)  # type: ignore[arg-type]  # (1, N, C, H)
    return h.reshape(1, -1, h.shape[-1])


def causal_mean_removal(x: Tensor, offset: Tensor | None = None, count: Tensor | None = None) -> Tensor:
    """``x`` (N, T, F) minus, at each frame, the mean of the frames up to it (with
    :data:`CAUSAL_CMVN_PRIOR_FRAMES` frames of zero before the first): a streamable stand-in
    for per-utterance mean removal. ``offset`` (N, F) and ``count`` (N,) carry the running
    sum and frame count of earlier frames of the same stream (streaming inference)."""
    total = x.cumsum(1)
    n = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)[None, :]
    if offset is not None and count is not None:
        total = total + offset[:, None, :]
        n = n + count[:, None].to(x.dtype)
    return x - total / (n + CAUSAL_CMVN_PRIOR_FRAMES)[..., None]


class ModelOutputs(NamedTuple):
    log_probs: Tensor  # (N, T', V), zero past lens
    lens: Tensor  # (N,) output frames
    mask: Tensor  # (N, T') bool, True on valid frames
    inter: Tensor | None  # intermediate CTC log-probs (training mode, inter_ctc_weight > 0)
    tapped: Tensor | None  # (N, T', layer_dim) output of the layer asked for, zero past lens


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "lstm"  # recurrent cell: lstm | gru | rnn
    num_layers: int = 3  # stacked recurrent layers
    hidden: int = 256  # hidden units per direction
    bidirectional: bool = True  # False gives a streaming-capable left-to-right model
    dropout: float = 0.1  # dropout between recurrent layers and before the output layer
    layer_norm: bool = True  # LayerNorm on each recurrent layer's output: leaves the CTC blank plateau several times sooner
    proj: int = 0  # project each layer's output to this size (0 = no projection)
    subsampling: int = 2  # time subsampling of the conv front-end: 1, 2 or 4
    conv_channels: int = 32  # channels of the conv front-end (ignored for subsampling 1)
    attention: bool = False  # one self-attention block over the recurrent outputs
    attention_heads: int = 4  # heads of that block
    rnn_impl: str = "flip"  # flip (exact padded path, fast on CPU) | packed (pack_padded_sequence)
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()  # training-time masking
    spec_augment_enabled: bool = True  # SpecAugment on/off (applies in training mode only)
    cmvn: str = "global"  # global (training-set statistics) | utterance (global, then each utterance's, or long-file chunk's, own mean removed; needs the whole input, so not for streaming) | causal (global, then the running mean of the frames so far removed: streamable)
    # Latency-controlled BiLSTM (LC-BLSTM, Zhang et al. 2016; Xue et al. 2017), for streaming:
    # the recurrent layers see the input in chunks of chunk_frames output frames (after
    # subsampling); the forward direction carries its state from chunk to chunk, the backward
    # direction starts afresh in every chunk and reads right_context_frames more. 0 = off
    # (the full-context BiLSTM). Algorithmic latency: (chunk + right context) output frames.
    chunk_frames: int = 0
    right_context_frames: int = 0
    inter_ctc_weight: float = 0.0  # weight of an intermediate CTC loss on the middle recurrent layer (0 = off)
    phone_ctc_weight: float = 0.0  # weight of an auxiliary phone CTC loss (training only; needs data.lexicon; 0 = off)
    phone_ctc_layer: int = 0  # recurrent layer (1 = the lowest, num_layers = the top) the phone head reads; 0 = the middle one (as inter_ctc)

    def validate(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"model.cell must be one of {sorted(CELLS)} (is {self.cell!r})")
        if self.subsampling not in (1, 2, 4):
            raise ConfigError(f"model.subsampling must be 1, 2 or 4 (is {self.subsampling})")
        if self.num_layers < 1 or self.hidden < 1:
            raise ConfigError(f"model.num_layers and model.hidden must be >= 1 (are {self.num_layers}, {self.hidden})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1) (is {self.dropout})")
        if self.cmvn not in CMVN_MODES:
            raise ConfigError(f"model.cmvn must be one of {', '.join(CMVN_MODES)} (is {self.cmvn!r})")
        if not 0.0 <= self.inter_ctc_weight < 1.0:
            raise ConfigError(f"model.inter_ctc_weight must be in [0, 1) (is {self.inter_ctc_weight})")
        if self.inter_ctc_weight > 0 and self.num_layers < 2:
            raise ConfigError("model.inter_ctc_weight needs model.num_layers >= 2 (it taps the middle layer)")
        if not 0.0 <= self.phone_ctc_weight < 1.0 or self.inter_ctc_weight + self.phone_ctc_weight >= 1.0:
            raise ConfigError(f"model.phone_ctc_weight must be in [0, 1) and model.inter_ctc_weight + "
                              f"model.phone_ctc_weight < 1 (are {self.phone_ctc_weight}, {self.inter_ctc_weight})")
        if not 0 <= self.phone_ctc_layer <= self.num_layers:
            raise ConfigError(f"model.phone_ctc_layer must be 0 (the middle layer) or 1..model.num_layers="
                              f"{self.num_layers} (is {self.phone_ctc_layer})")
        if self.chunk_frames < 0 or self.right_context_frames < 0:
            raise ConfigError(f"model.chunk_frames and model.right_context_frames must be >= 0 (are "
                              f"{self.chunk_frames}, {self.right_context_frames})")
        if self.right_context_frames and not self.chunk_frames:
            raise ConfigError("model.right_context_frames needs model.chunk_frames >= 1 (the chunked LC-BLSTM)")
        if self.chunk_frames and self.cmvn == "utterance":
            raise ConfigError("model.chunk_frames (a streaming model) cannot use model.cmvn=utterance: it needs the "
                              "whole utterance; use model.cmvn=global or model.cmvn=causal")
        if self.chunk_frames and self.attention:
            raise ConfigError("model.chunk_frames (a streaming model) cannot use model.attention: it reads the whole "
                              "utterance")
        if self.rnn_impl not in ("flip", "packed"):
            raise ConfigError(f"model.rnn_impl must be flip or packed (is {self.rnn_impl!r})")
        if self.proj < 0 or self.conv_channels < 1 or self.attention_heads < 1:
            raise ConfigError("model.proj must be >= 0, model.conv_channels and model.attention_heads >= 1")
        if self.attention:
            width = self.layer_width
            if width % self.attention_heads:
                raise ConfigError(
                    f"attention width {width} is not divisible by model.attention_heads="
                    f"{self.attention_heads}; change model.attention_heads or model.hidden"
                )
        self.spec_augment.validate()

    @property
    def rnn_width(self) -> int:
        """Width of each recurrent layer's own output: ``hidden`` per direction."""
        return self.hidden * (2 if self.bidirectional else 1)

    @property
    def layer_width(self) -> int:
        """Width of each recurrent layer's output after its projection (``proj``, if any):
        what the next layer, the attention block, the output layer and the phone head read."""
        return self.proj or self.rnn_width


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence of ``x`` (N, T, D) within its own length; padding stays put."""
    n, t = x.shape[:2]
    idx = torch.arange(t, device=x.device).expand(n, t)
    rev = lengths.to(x.device)[:, None] - 1 - idx
    rev = torch.where(rev >= 0, rev, idx)
    return x.gather(1, rev.unsqueeze(-1).expand_as(x))


class ConvSubsampling(nn.Module):
    """2-D conv front-end: (N, T, F) -> (N, T // factor (ceil), D) with stride-2 layers."""

    def __init__(self, in_dim: int, channels: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.layers = nn.ModuleList()
        f, c_in = in_dim, 1
        for _ in range({1: 0, 2: 1, 4: 2}[factor]):
            self.layers.append(nn.Conv2d(c_in, channels, kernel_size=3, stride=2, padding=1))
            c_in, f = channels, (f - 1) // 2 + 1
        self.out_dim = c_in * f if self.layers else in_dim

    @staticmethod
    def out_lengths(lengths: Tensor, factor: int) -> Tensor:
        for _ in range({1: 0, 2: 1, 4: 2}[factor]):
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return lengths

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if not self.layers:
            return x, lengths
        h = x.unsqueeze(1)  # (N, 1, T, F)
        for conv in self.layers:
            h = F.relu(conv(h))
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
            # Zero the frames past each length so the next conv sees the same zero padding
            # an utterance would get alone.
            h = h * length_mask(lengths, h.shape[2])[:, None, :, None]
        n, c, t, f = h.shape
        return h.permute(0, 2, 1, 3).reshape(n, t, c * f), lengths


class RecurrentLayer(nn.Module):
    """One (bi)directional recurrent layer, exact for padded batches."""

    def __init__(self, cell: str, in_dim: int, hidden: int, bidirectional: bool, impl: str) -> None:
        super().__init__()
        rnn = CELLS[cell]
        self.fwd = rnn(in_dim, hidden, batch_first=True)
        self.bwd = rnn(in_dim, hidden, batch_first=True) if bidirectional else None
        self.impl = impl

    def _run(self, rnn: nn.Module, x: Tensor, lengths: Tensor) -> Tensor:
        if self.impl == "packed":
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, _ = rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            return out
        # A causal recurrence never looks at frames after t, so trailing padding cannot
        # change the valid outputs: the padded path is exact for a forward direction.
        out, _ = rnn(x)
        return out

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out = self._run(self.fwd, x, lengths)
        if self.bwd is None:
            return out
        back = reverse_padded(self._run(self.bwd, reverse_padded(x, lengths), lengths), lengths)
        return torch.cat([out, back], dim=-1)

    def forward_windows(self, xw: Tensor, win_lens: Tensor, chunk: int, state: RNNState | None = None,
                        tbptt: int = 0) -> tuple[Tensor, RNNState]:
        """The latency-controlled layer on windows ``xw`` (N, C, W, D): window k of
        utterance n is chunk k (its first ``chunk`` frames) plus ``W - chunk`` frames of right
        context, ``win_lens`` (N, C) of them valid.

        The forward direction runs through the chunks in order, carrying its state from the
        end of chunk k to the start of chunk k + 1 (``state``: the state before chunk 0), and
        detaches it every ``tbptt`` chunks (0: never); over each window's right context it
        continues from the chunk's end state, which is then dropped. The backward direction
        starts from zero in each window, at its last valid frame. Returns the outputs
        (N, C, W, H * directions), valid on each window's valid frames, and the forward state
        after the last chunk (what the next call, in streaming, starts from)."""
        n, c, w, d = xw.shape
        outs, states = [], []
        for k in range(c):
            out, state = self.fwd(xw[:, k, :chunk], state)
            outs.append(out)
            states.append(state)
            if tbptt and (k + 1) % tbptt == 0:
                state = detach_state(state)
        fwd = torch.stack(outs, dim=1)  # (N, C, chunk, H)
        if w > chunk:
            ctx, _ = self.fwd(xw[:, :, chunk:].reshape(n * c, w - chunk, d), _stack_states(states))
            fwd = torch.cat([fwd, ctx.reshape(n, c, w - chunk, -1)], dim=2)
        assert state is not None
        if self.bwd is None:
            return fwd, state
        flat, lens = xw.reshape(n * c, w, d), win_lens.reshape(n * c)
        back, _ = self.bwd(reverse_padded(flat, lens))
        back = reverse_padded(back, lens).reshape(n, c, w, -1)
        return torch.cat([fwd, back], dim=-1), state


class AcousticModel(nn.Module):
    """(feats (N, T, n_mels), feat_lens (N,)) -> (log_probs (N, T', V), out_lens (N,))."""

    def __init__(self, cfg: ModelConfig, n_mels: int, vocab_size: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.cmvn = GlobalCMVN(n_mels)
        self.spec_augment = SpecAugment(cfg.spec_augment) if cfg.spec_augment_enabled else None
        self.frontend = ConvSubsampling(n_mels, cfg.conv_channels, cfg.subsampling)
        dim = self.frontend.out_dim
        self.rnns = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.projs = nn.ModuleList()
        width = cfg.rnn_width
        for _ in range(cfg.num_layers):
            self.rnns.append(RecurrentLayer(cfg.cell, dim, cfg.hidden, cfg.bidirectional, cfg.rnn_impl))
            self.norms.append(nn.LayerNorm(width) if cfg.layer_norm else nn.Identity())
            self.projs.append(nn.Linear(width, cfg.proj) if cfg.proj else nn.Identity())
            dim = cfg.layer_width
        self.dropout = nn.Dropout(cfg.dropout)
        self.attn: nn.MultiheadAttention | None = None
        if cfg.attention:
            self.attn = nn.MultiheadAttention(dim, cfg.attention_heads, dropout=cfg.dropout, batch_first=True)
            self.attn_norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, vocab_size)

    @property
    def subsampling(self) -> int:
        return self.cfg.subsampling

    def out_lengths(self, feat_lens: Tensor) -> Tensor:
        return ConvSubsampling.out_lengths(feat_lens, self.cfg.subsampling)

    @property
    def inter_layer(self) -> int:
        """Index of the recurrent layer the intermediate CTC loss taps: layer ceil(L / 2)
        (the 2nd of 3, the 2nd of 4), never the last one."""
        return (self.cfg.num_layers + 1) // 2 - 1

    def _log_probs(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.emissions(x) * mask.unsqueeze(-1)

    @property
    def phone_layer(self) -> int:
        """Index (0-based) of the recurrent layer the phone head reads (``model.phone_ctc_layer``)."""
        return self.cfg.phone_ctc_layer - 1 if self.cfg.phone_ctc_layer else self.inter_layer

    @property
    def layer_dim(self) -> int:
        """Width of each recurrent layer's output (after its projection): ``cfg.layer_width``."""
        return self.cfg.layer_width

    def forward(self, feats: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor]:
        out = self.forward_outputs(feats, feat_lens)
        return out.log_probs, out.lens

    def forward_outputs(self, feats: Tensor, feat_lens: Tensor, tap: int | None = None,
                        tbptt: int = 0) -> ModelOutputs:
        """The final log-probs and lengths; the intermediate CTC log-probs (training mode with
        ``inter_ctc_weight > 0``: Lee & Watanabe 2021, the same output layer applied to the
        middle layer, as an auxiliary loss that regularises the lower layers); and, when
        ``tap`` is a layer index, that recurrent layer's output, zero past each length (what
        the phone CTC head reads: the head is not part of this module; a package exported
        from a run with one holds it beside the model, :class:`asr.package.PhoneHead`).

        With ``model.chunk_frames`` the recurrent layers run latency-controlled
        (:meth:`recurrent_windows`), the forward state detached every ``tbptt`` chunks
        (truncated backpropagation through time; 0 = never): the same computation, window
        by window, that :class:`asr.infer.streaming.StreamingRecognizer` runs on a live stream."""
        assert feats.ndim == 3, f"expected (N, T, F) features, got {tuple(feats.shape)}"
        feat_lens = feat_lens.to(feats.device)
        x = self.normalise(feats, feat_lens)
        if self.spec_augment is not None:
            x = self.spec_augment(x, feat_lens)
        x, lens = self.frontend(x, feat_lens)
        mask = length_mask(lens, x.shape[1])
        inter = tapped = None
        if self.cfg.chunk_frames:
            n, t, _ = x.shape
            xw, win_lens = self.windows(x, lens)
            top, _, inter_w, tap_w = self.recurrent_windows(xw, win_lens, tbptt=tbptt, tap=tap)
            x = self.unwindow(top, t)
            if inter_w is not None:
                inter = self._log_probs(self.unwindow(inter_w, t), mask)
            if tap_w is not None:
                tapped = self.unwindow(tap_w, t) * mask.unsqueeze(-1).to(x.dtype)
            return ModelOutputs(self._log_probs(x, mask), lens, mask, inter, tapped)
        for i, (rnn, norm, proj) in enumerate(zip(self.rnns, self.norms, self.projs)):
            if i > 0:
                x = self.dropout(x)
            x = proj(norm(rnn(x, lens)))
            if self.training and self.cfg.inter_ctc_weight > 0 and i == self.inter_layer:
                inter = self._log_probs(x, mask)
            if i == tap:
                tapped = x * mask.unsqueeze(-1).to(x.dtype)
        if self.attn is not None:
            a, _ = self.attn(x, x, x, key_padding_mask=~mask, need_weights=False)
            x = self.attn_norm(x + self.dropout(a))
        return ModelOutputs(self._log_probs(x, mask), lens, mask, inter, tapped)

    def normalise(self, feats: Tensor, feat_lens: Tensor) -> Tensor:
        """Global CMVN, then (``model.cmvn``) the utterance's mean or the running mean removed;
        zero past each length."""
        x = self.cmvn(feats, feat_lens)
        if self.cfg.cmvn == "global":
            return x
        valid = length_mask(feat_lens, x.shape[1]).unsqueeze(-1)
        if self.cfg.cmvn == "causal":
            return causal_mean_removal(x) * valid
        # Per-utterance mean removal over the valid frames only (padding-invariant): the
        # cheap speaker/channel normalisation that unseen speakers benefit from.
        mean = x.sum(1, keepdim=True) / feat_lens.clamp_min(1)[:, None, None].to(x.dtype)
        return (x - mean) * valid

    def windows(self, x: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """Front-end output (N, T', D) -> the LC-BLSTM's windows (N, C, W, D), C = ceil(T' /
        chunk) chunks each with its right context (W = chunk + right context frames; zeros
        past the end), and each window's valid frames (N, C)."""
        chunk, w = self.cfg.chunk_frames, self.cfg.chunk_frames + self.cfg.right_context_frames
        t = x.shape[1]
        c = max(1, -(-t // chunk))
        x = F.pad(x, (0, 0, 0, c * chunk + w - chunk - t))
        starts = torch.arange(c, device=x.device) * chunk
        idx = starts[:, None] + torch.arange(w, device=x.device)[None, :]
        win_lens = (lens.to(x.device)[:, None] - starts[None, :]).clamp(0, w)
        return x[:, idx], win_lens

    def unwindow(self, xw: Tensor, t: int) -> Tensor:
        """Windows (N, C, W, D) -> the chunks' frames in order (N, t, D)."""
        n, c = xw.shape[:2]
        chunk = self.cfg.chunk_frames
        return xw[:, :, :chunk].reshape(n, c * chunk, -1)[:, :t]

    def recurrent_windows(self, xw: Tensor, win_lens: Tensor, states: list[RNNState] | None = None,
                          tbptt: int = 0, tap: int | None = None
                          ) -> tuple[Tensor, list[RNNState], Tensor | None, Tensor | None]:
        """Every recurrent layer (with its norm and projection) on LC-BLSTM windows (N, C, W, D):
        a layer's output on a window's right context is what the next layer's backward
        direction reads there, so the whole stack looks ``right_context_frames`` ahead, not
        that many per layer. ``states``: each layer's forward state before chunk 0 (None:
        zeros). Returns the top layer's windows, each layer's state after the last chunk, and
        the intermediate-CTC layer's and the tapped layer's windows (None unless asked for)."""
        chunk = self.cfg.chunk_frames
        new_states: list[RNNState] = []
        inter = tapped = None
        for i, (rnn, norm, proj) in enumerate(zip(self.rnns, self.norms, self.projs)):
            if i > 0:
                xw = self.dropout(xw)
            layer = typing.cast(RecurrentLayer, rnn)
            out, state = layer.forward_windows(xw, win_lens, chunk, None if states is None else states[i], tbptt)
            xw = proj(norm(out))
            new_states.append(state)
            if self.training and self.cfg.inter_ctc_weight > 0 and i == self.inter_layer:
                inter = xw
            if i == tap:
                tapped = xw
        return xw, new_states, inter, tapped

    def emissions(self, x: Tensor) -> Tensor:
        """The output layer on top-layer frames (..., D): log-probs (..., V), float32."""
        return self.output(self.dropout(x)).float().log_softmax(dim=-1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
