"""Frame arithmetic, log-mel shapes, CMVN and SpecAugment on hand-built tensors."""

import pytest
import torch

from asr.features import (
    FeatureConfig,
    GlobalCMVN,
    LogMel,
    SpecAugment,
    SpecAugmentConfig,
    compute_cmvn_stats,
    length_mask,
    num_frames,
)

torch.set_num_threads(1)
CFG = FeatureConfig()
LOGMEL = LogMel(CFG)


@pytest.mark.parametrize("samples", [1, 2, 159, 160, 161, 319, 320, 400, 15995, 15999, 16000, 16001, 16005])
def test_num_frames_matches_logmel(samples):
    feats, lens = LOGMEL(torch.randn(1, samples))
    assert feats.shape[1] == num_frames(samples) == int(lens[0])


def test_num_frames_tensor_and_errors():
    assert num_frames(torch.tensor([0, 159, 160, 16000])).tolist() == [1, 1, 2, 101]
    assert num_frames(16000) == 101  # 10 ms hop at 16 kHz, centred frames
    with pytest.raises(ValueError):
        num_frames(-1)


def test_logmel_batch_equals_single_and_zeroes_padding():
    a, b = torch.randn(16000), torch.randn(8000)
    batch = torch.zeros(2, 16000)
    batch[0], batch[1, :8000] = a, b
    feats, lens = LOGMEL(batch, torch.tensor([16000, 8000]))
    assert lens.tolist() == [101, 51]
    torch.testing.assert_close(feats[0], LOGMEL.single(a))
    # the last valid frame's window reaches into padding, which is zeros in both cases
    torch.testing.assert_close(feats[1, :51], LOGMEL.single(b), atol=1e-4, rtol=1e-4)
    assert feats[1, 51:].abs().sum() == 0


def test_cmvn_normalises_to_zero_mean_unit_variance():
    x = torch.randn(500, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + torch.tensor([5.0, -1.0, 0.0, 2.0])
    cmvn = GlobalCMVN(4)
    cmvn.set_stats(*compute_cmvn_stats([x[:200], x[200:]]))
    y = cmvn(x.unsqueeze(0), torch.tensor([500]))[0]
    torch.testing.assert_close(y.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    assert "mean" in cmvn.state_dict() and "istd" in cmvn.state_dict()


def test_specaugment_only_in_training_and_only_valid_frames():
    sa = SpecAugment(SpecAugmentConfig(freq_masks=2, freq_width=5, time_masks=2, time_width=10))
    x = torch.ones(2, 100, 20)
    x[1, 50:] = 7.0  # padding sentinel
    sa.eval()
    assert torch.equal(sa(x, torch.tensor([100, 50])), x)
    sa.train()
    torch.manual_seed(4)  # a seed that draws time and frequency masks in both utterances
    y = sa(x, torch.tensor([100, 50]))
    assert torch.equal(y[1, 50:], x[1, 50:])  # padding untouched
    # time width <= min(time_width, 5 % of the valid frames): 5 frames of 100, 2 of 50
    for i, n, max_time in ((0, 100, 5), (1, 50, 2)):
        zero = y[i, :n] == 0
        frames, channels = zero.all(1), zero.all(0)  # fully masked time frames / mel channels
        # The masked region is exactly whole frames and whole channels, nothing else ...
        assert torch.equal(zero, frames[:, None] | channels[None, :])
        assert torch.equal(y[i, :n][~zero], x[i, :n][~zero])
        # ... of two masks each, each at most its maximum width.
        assert 0 < int(frames.sum()) <= 2 * max_time
        assert 0 < int(channels.sum()) <= 2 * 5


def test_length_mask_marks_exactly_the_valid_frames():
    mask = length_mask(torch.tensor([3, 0, 5]), 5)
    assert mask.dtype == torch.bool
    assert mask.tolist() == [[True] * 3 + [False] * 2, [False] * 5, [True] * 5]
