"""The latency-controlled BiLSTM (model.chunk_frames): exactness on hand-built tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from asr.features import ConfigError
from asr.model import AcousticModel, ModelConfig, causal_mean_removal

N_MELS, VOCAB = 8, 6


def _model(cell: str = "lstm", chunk: int = 3, right: int = 2, **kw) -> AcousticModel:
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, num_layers=2, hidden=5, subsampling=1, dropout=0.0, spec_augment_enabled=False,
                      chunk_frames=chunk, right_context_frames=right, **kw)
    return AcousticModel(cfg, N_MELS, VOCAB).eval()


def _step_by_step(model: AcousticModel, x: torch.Tensor) -> torch.Tensor:
    """Run one utterance's front-end output (1, T, D) window by window, state carried, as a
    stream would: each call sees one chunk and its right context only."""
    chunk, right = model.cfg.chunk_frames, model.cfg.right_context_frames
    t = x.shape[1]
    states, outs = None, []
    for start in range(0, t, chunk):
        win = x[:, start:start + chunk + right]
        valid = win.shape[1]
        win = torch.nn.functional.pad(win, (0, 0, 0, chunk + right - valid))
        top, states, _, _ = model.recurrent_windows(win[:, None], torch.tensor([[valid]]), states)
        outs.append(top[:, 0, :min(chunk, t - start)])
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("chunk,right", [(1, 0), (3, 2), (4, 0), (2, 5)])
def test_whole_utterance_equals_chunk_by_chunk(cell: str, chunk: int, right: int) -> None:
    model = _model(cell, chunk, right)
    x = torch.randn(1, 11, N_MELS)
    xw, win_lens = model.windows(x, torch.tensor([11]))
    whole = model.unwindow(model.recurrent_windows(xw, win_lens)[0], 11)
    torch.testing.assert_close(whole, _step_by_step(model, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_one_chunk_without_right_context_is_the_full_bilstm(cell: str) -> None:
    chunked = _model(cell, chunk=50, right=0)
    full = AcousticModel(dataclasses.replace(chunked.cfg, chunk_frames=0), N_MELS, VOCAB).eval()
    full.load_state_dict(chunked.state_dict())
    feats, lens = torch.randn(1, 13, N_MELS), torch.tensor([13])
    torch.testing.assert_close(chunked(feats, lens)[0], full(feats, lens)[0], atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_an_utterance() -> None:
    model = _model(chunk=3, right=2)
    a, b = torch.randn(1, 10, N_MELS), torch.randn(1, 17, N_MELS)
    alone, _ = model(a, torch.tensor([10]))
    batch = torch.zeros(2, 17, N_MELS)
    batch[0, :10], batch[1] = a[0], b[0]
    padded, lens = model(batch, torch.tensor([10, 17]))
    assert lens.tolist() == [10, 17]
    torch.testing.assert_close(padded[0, :10], alone[0], atol=1e-5, rtol=1e-5)
    assert padded[0, 10:].abs().sum() == 0


def test_right_context_changes_the_output_and_future_frames_beyond_it_do_not() -> None:
    model = _model(chunk=3, right=2)
    x = torch.randn(1, 12, N_MELS)
    y = x.clone()
    y[:, 5:] += 1.0  # frame 5 is chunk 1's; chunk 0 (frames 0-2) reads frames 3-4 as context
    out_x, out_y = model(x, torch.tensor([12]))[0], model(y, torch.tensor([12]))[0]
    torch.testing.assert_close(out_x[:, :3], out_y[:, :3])
    assert not torch.allclose(out_x[:, 3:], out_y[:, 3:])


def test_truncated_bptt_cuts_the_gradient_at_chunk_boundaries() -> None:
    model = _model(chunk=2, right=0).train()
    x = torch.randn(1, 6, N_MELS, requires_grad=True)
    xw, win_lens = model.windows(x, torch.tensor([6]))
    top = model.unwindow(model.recurrent_windows(xw, win_lens, tbptt=1)[0], 6)
    top[0, 5].sum().backward()  # the last chunk's output: frames 4-5
    assert x.grad is not None
    assert x.grad[0, :4].abs().sum() == 0 and x.grad[0, 4:].abs().sum() > 0
    x.grad = None
    top = model.unwindow(model.recurrent_windows(*model.windows(x, torch.tensor([6])), tbptt=0)[0], 6)
    top[0, 5].sum().backward()  # no truncation: the carried state reaches frame 0
    assert x.grad[0, 0].abs().sum() > 0


def test_causal_cmvn_in_pieces_equals_whole() -> None:
    x = torch.randn(1, 9, N_MELS)
    whole = causal_mean_removal(x)
    first = causal_mean_removal(x[:, :4])
    rest = causal_mean_removal(x[:, 4:], offset=x[:, :4].sum(1), count=torch.tensor([4]))
    torch.testing.assert_close(torch.cat([first, rest], dim=1), whole)


def test_streaming_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="cmvn=utterance"):
        ModelConfig(chunk_frames=4, cmvn="utterance").validate()
    with pytest.raises(ConfigError, match="right_context_frames needs"):
        ModelConfig(right_context_frames=4).validate()
    with pytest.raises(ConfigError, match="attention"):
        ModelConfig(chunk_frames=4, attention=True).validate()
