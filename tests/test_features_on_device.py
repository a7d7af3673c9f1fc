"""data.features_on_device: workers send waveforms, the LightningModule computes log-mels
after the batch reaches the device; same batches, same checkpoints."""

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.config import ExperimentConfig
from asr.data.dataset import Batch, FeatureDataset, collate, collate_waves
from asr.data.manifest import Utterance
from asr.model import AcousticModel, ModelConfig
from asr.text import CharTokenizer


def _module():
    from asr.train.module import CTCModule

    tok = CharTokenizer.from_texts(["ab ba"])
    mcfg = ModelConfig(num_layers=1, hidden=8, subsampling=2, conv_channels=4, spec_augment_enabled=False)
    cfg = replace(ExperimentConfig(), model=mcfg)
    return CTCModule(AcousticModel(mcfg, n_mels=cfg.features.n_mels, vocab_size=tok.vocab_size), tok, cfg)


def test_module_turns_wave_batches_into_feature_batches(tmp_path):
    rng = np.random.default_rng(0)
    utts = []
    for i, s in enumerate((0.8, 1.25)):
        p = tmp_path / f"{i}.wav"
        sf.write(p, rng.standard_normal(int(16000 * s)).astype("float32") * 0.1, 16000)
        utts.append(Utterance(f"u{i}", str(p), s, "ab", "s", 16000))
    module = _module()
    keys = set(module.state_dict())
    ds = FeatureDataset(utts, [[1, 2], [2, 1]], module.cfg.features, cache=False)
    expected = collate([ds[0], ds[1]])
    ds.waveforms = True
    got = module.on_after_batch_transfer(collate_waves([ds[0], ds[1]]), 0)
    assert isinstance(got, Batch) and got.ids == ["u0", "u1"]
    torch.testing.assert_close(got.feats, expected.feats, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.feat_lens, expected.feat_lens)
    assert module.on_after_batch_transfer(expected, 0) is expected  # feature batches pass through
    assert set(module.state_dict()) == keys  # the extractor is not part of checkpoints


@pytest.mark.slow
def test_training_with_features_on_device_runs_and_counts_unreadable(tmp_path):
    from test_train import ROOT, make_corpus

    from asr.config import load_config
    from asr.train.module import CTCModule
    from asr.train.training import train

    make_corpus(tmp_path)
    (tmp_path / "utt5.wav").write_bytes(b"")  # goes bad after `asr prepare`
    seen = []
    real = CTCModule.on_after_batch_transfer
    CTCModule.on_after_batch_transfer = lambda self, b, i: seen.append(type(b).__name__) or real(self, b, i)
    try:
        s = train(load_config(ROOT / "conf" / "yesno.yaml", [
            f"exp_dir={tmp_path / 'exp'}", f"data.train_manifest={tmp_path / 'train.jsonl'}",
            f"data.dev_manifest={tmp_path / 'dev.jsonl'}", "model.hidden=8", "model.num_layers=1",
            "trainer.progress_bar=false", "data.max_batch_seconds=8", "trainer.threads=1", "trainer.max_epochs=1",
            "data.cache_features=false", "data.features_on_device=true", "data.speed_perturb=[0.9,1.0,1.1]"]))
    finally:
        CTCModule.on_after_batch_transfer = real
    assert s["epochs"] == 1 and s["skipped_utterances"]["train"] == 1  # utt5, found by the CMVN pass
    assert seen and set(seen) == {"WaveBatch"}
