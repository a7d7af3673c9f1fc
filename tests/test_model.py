"""The model: shapes, length arithmetic and exact padding invariance for every cell."""

import pytest
import torch

from asr.model import AcousticModel, ModelConfig, reverse_padded

torch.set_num_threads(1)


def make(cell="lstm", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"cell": cell, "num_layers": 2, "hidden": 16, "conv_channels": 4, **kw})
    return AcousticModel(cfg, n_mels=10, vocab_size=7).eval()


def test_reverse_padded_keeps_padding_in_place():
    x = torch.arange(10.0).view(2, 5, 1)
    out = reverse_padded(x, torch.tensor([3, 5]))
    assert out[0, :, 0].tolist() == [2, 1, 0, 3, 4]
    assert out[1, :, 0].tolist() == [9, 8, 7, 6, 5]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("impl", ["flip", "packed"])
@pytest.mark.parametrize("subsampling", [1, 2, 4])
def test_output_alone_equals_output_in_padded_batch(cell, impl, subsampling):
    model = make(cell, rnn_impl=impl, subsampling=subsampling, attention=(cell == "gru"), layer_norm=True, proj=12)
    lens = torch.tensor([23, 9, 17])
    feats = torch.randn(3, 23, 10)
    for i, n in enumerate(lens.tolist()):
        feats[i, n:] = 0.0
    with torch.no_grad():
        batch_lp, batch_lens = model(feats, lens)
        for i, n in enumerate(lens.tolist()):
            alone, alone_len = model(feats[i : i + 1, :n], lens[i : i + 1])
            assert alone_len.item() == batch_lens[i].item()
            torch.testing.assert_close(batch_lp[i, : alone_len.item()], alone[0], atol=1e-5, rtol=0)
            # garbage in the padding must not leak either
    noisy = feats.clone()
    noisy[1, 9:] = 100.0
    with torch.no_grad():
        lp2, _ = model(noisy, lens)
    torch.testing.assert_close(lp2[1, : batch_lens[1]], batch_lp[1, : batch_lens[1]], atol=1e-5, rtol=0)


def test_utterance_cmvn_is_padding_invariant_and_removes_each_utterance_mean():
    model = make(cmvn="utterance", subsampling=2)
    lens = torch.tensor([12, 5])
    feats = torch.randn(2, 12, 10) + 3.0
    feats[1, 5:] = 0.0
    with torch.no_grad():
        batch_lp, batch_lens = model(feats, lens)
        alone, _ = model(feats[1:, :5], lens[1:])
        # a constant offset on one utterance (a louder speaker, another microphone) is removed
        shifted, _ = model(feats[1:, :5] + 7.0, lens[1:])
    torch.testing.assert_close(batch_lp[1, : batch_lens[1]], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted, alone, atol=1e-4, rtol=0)
    global_model = make(cmvn="global", subsampling=2)
    with torch.no_grad():
        g, _ = global_model(feats[1:, :5], lens[1:])
        g_shifted, _ = global_model(feats[1:, :5] + 7.0, lens[1:])
    assert not torch.allclose(g, g_shifted, atol=1e-3)


def test_intermediate_ctc_taps_the_middle_layer_in_training_only():
    model = make(num_layers=3, inter_ctc_weight=0.3, subsampling=2)
    assert model.inter_layer == 1
    assert make(num_layers=4, inter_ctc_weight=0.3).inter_layer == 1
    feats, lens = torch.randn(2, 16, 10), torch.tensor([16, 9])
    with torch.no_grad():
        lp, out, _, inter, _ = model.forward_outputs(feats, lens)
        assert inter is None  # eval: nothing extra is computed
        model.train()
        lp, out, _, inter, _ = model.forward_outputs(feats, lens)
    assert inter.shape == lp.shape
    torch.testing.assert_close(inter.exp().sum(-1)[0], torch.ones(out[0].item()))
    assert inter[1, out[1] :].abs().sum() == 0  # masked past the length like the final output
    assert make(num_layers=3).train().forward_outputs(feats, lens).inter is None
    with pytest.raises(ValueError, match="num_layers >= 2"):
        ModelConfig(num_layers=1, inter_ctc_weight=0.3).validate()
    with pytest.raises(ValueError, match="model.cmvn"):
        ModelConfig(cmvn="speaker").validate()


def test_flip_and_packed_give_the_same_output_and_gradients():
    torch.manual_seed(1)
    flip = make("lstm", rnn_impl="flip").train()
    packed = make("lstm", rnn_impl="packed").train()
    packed.load_state_dict(flip.state_dict())
    flip.dropout.p = packed.dropout.p = 0.0
    flip.spec_augment = packed.spec_augment = None
    feats, lens = torch.randn(3, 20, 10), torch.tensor([20, 11, 5])
    lp_f, _ = flip(feats, lens)
    lp_p, _ = packed(feats, lens)
    torch.testing.assert_close(lp_f, lp_p, atol=1e-5, rtol=0)
    lp_f.sum().backward()
    lp_p.sum().backward()
    for (name, a), b in zip(flip.named_parameters(), packed.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("subsampling,lens,expected", [(1, [7, 1], [7, 1]), (2, [7, 1, 8], [4, 1, 4]), (4, [7, 1, 8, 9], [2, 1, 2, 3])])
def test_output_lengths_match_the_tensor(subsampling, lens, expected):
    model = make(subsampling=subsampling)
    lens_t = torch.tensor(lens)
    with torch.no_grad():
        lp, out = model(torch.randn(len(lens), max(lens), 10), lens_t)
    assert out.tolist() == expected
    assert lp.shape == (len(lens), max(expected), 7)
    assert model.out_lengths(lens_t).tolist() == expected


def test_unidirectional_and_invalid_configs():
    model = make(bidirectional=False)
    lp, _ = model(torch.randn(1, 5, 10), torch.tensor([5]))
    assert lp.shape[-1] == 7
    with pytest.raises(ValueError, match="model.cell"):
        ModelConfig(cell="transformer").validate()
    with pytest.raises(ValueError, match="subsampling"):
        ModelConfig(subsampling=3).validate()
