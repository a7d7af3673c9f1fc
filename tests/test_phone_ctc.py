"""The auxiliary phone CTC head (model.phone_ctc_weight, data.lexicon): lexicon parsing,
targets from the training words only, masking, the loss, padding, and that packages never
hold the head."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from asr.config import ConfigError, DataConfig, ExperimentConfig, load_config
from asr.data.dataset import Batch, FeatureDataset, collate, phone_targets
from asr.data.lexicon import LexiconError, PhoneMap, read_lexicon, strip_stress
from asr.data.manifest import Utterance
from asr.features import FeatureConfig
from asr.model import AcousticModel, ConvSubsampling, ModelConfig
from asr.text import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]
LEXICON = "A\tAH0\nA\tEY1\nABOUT\tAH0 B AW1 T\nTEST  T EH1 S T\n;;; comment\n\nABOUT(2)  AH0 B AW2\nZEBRA\tZ IY1 B R AH0\n"


def utt(uid, text, dur=2.0):
    return Utterance(id=uid, audio="x.wav", duration=dur, text=text, speaker="s", sample_rate=16000)


@pytest.fixture
def lexicon(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text(LEXICON)
    return path


def test_strip_stress_removes_only_the_stress_digit():
    assert [strip_stress(p) for p in ["AH0", "EY1", "AW2", "S", "T"]] == ["AH", "EY", "AW", "S", "T"]


def test_read_lexicon_tabs_spaces_comments_variants_first_pronunciation(lexicon):
    prons = read_lexicon(lexicon)
    assert prons == {"a": ("AH",), "about": ("AH", "B", "AW", "T"), "test": ("T", "EH", "S", "T"),
                     "zebra": ("Z", "IY", "B", "R", "AH")}
    assert read_lexicon(lexicon, keep_stress=True)["about"] == ("AH0", "B", "AW1", "T")


def test_read_lexicon_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("YES Y EH S\nNO\n")
    with pytest.raises(LexiconError, match=r"bad.txt:2: word 'NO' has no phones"):
        read_lexicon(bad)
    with pytest.raises(LexiconError, match="lexicon not found"):
        read_lexicon(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text(";;; nothing\n")
    with pytest.raises(LexiconError, match="no entries"):
        read_lexicon(tmp_path / "empty.txt")


def test_phone_map_holds_only_training_words_and_counts_missing_ones(lexicon):
    train = ["a test", "about a test", "a zzz", "qqq zzz", "about"]
    phone_map, cov = PhoneMap.build(read_lexicon(lexicon), train)
    assert set(phone_map.prons) == {"a", "test", "about"}  # zebra (a test-set word, say) never looked up
    assert phone_map.phones == ("AH", "AW", "B", "EH", "S", "T")  # no Z/IY/R: only training words' phones
    assert phone_map.encode("A TEST") == [1, 6, 4, 5, 6]  # case-insensitive; id 0 is the blank
    assert phone_map.encode("a zebra") is None
    assert (cov.utterances, cov.covered, dict(cov.missing_words)) == (5, 3, {"zzz": 2, "qqq": 1})
    assert cov.summary("training utterances") == ("3 of 5 training utterances (2 words missing from the "
                                                  "lexicon: zzz, qqq)")


def test_phone_targets_mask_missing_words_and_infeasible_utterances(lexicon):
    phone_map, _ = PhoneMap.build(read_lexicon(lexicon), ["a test about"])
    out4 = lambda n: ConvSubsampling.out_lengths(n, 4)  # noqa: E731
    utts = [utt("ok", "a test"), utt("oov", "a zzz"), utt("short", "about test about test", dur=0.2)]
    seqs, cov, short = phone_targets(utts, phone_map, FeatureConfig(), out4)
    assert seqs == [phone_map.encode("a test"), [], []]
    assert (cov.covered, short) == (2, 1)


def test_phone_targets_travel_through_the_dataset_and_collate_with_speed_copies():
    feats = {0: torch.randn(12, 4), 1: torch.randn(7, 4)}
    ds = FeatureDataset([utt("u0", "x"), utt("u1", "y"), utt("u2", "z")], [[1], [2, 3], [1]], FeatureConfig(),
                        speed_perturb=(0.9, 1.1), phones=[[4, 5], [], [6]])
    for (i, f) in ds.versions():  # pre-filled cache: every speed copy of an utterance
        ds.cache[(i, f)] = feats.get(i, torch.randn(5, 4))
    ds.remove([0])
    items = [ds[0], ds[1]]
    assert torch.equal(items[1][3], torch.tensor([6]))  # u2's phones followed it past the removal
    batch = collate(items)
    assert batch.ids == ["u1", "u2"]
    assert batch.phone_lens.tolist() == [0, 1] and batch.phones.tolist() == [[0], [6]]
    plain = FeatureDataset([utt("u0", "x")], [[1]], FeatureConfig())
    plain.cache[(0, 1.0)] = feats[0]
    assert len(plain[0]) == 3 and collate([plain[0]]).phones is None  # off: nothing extra travels


def _module(weight=0.3, layer=0, inter=0.0, phones=("AH", "B", "T")):
    from asr.train.module import CTCModule

    tok = CharTokenizer.from_texts(["ab ba"])
    mcfg = ModelConfig(num_layers=3, hidden=8, subsampling=2, conv_channels=4, dropout=0.0,
                       spec_augment_enabled=False, phone_ctc_weight=weight, phone_ctc_layer=layer,
                       inter_ctc_weight=inter)
    torch.manual_seed(0)
    cfg = replace(ExperimentConfig(), model=mcfg)
    return CTCModule(AcousticModel(mcfg, n_mels=10, vocab_size=tok.vocab_size), tok, cfg, phones=phones), tok


def _batch(tok, phone_lists):
    targets = [torch.tensor(tok.encode(t)) for t in ["ab", "b a"]]
    phones = [torch.tensor(p, dtype=torch.long) for p in phone_lists]
    return Batch(torch.randn(2, 30, 10), torch.tensor([30, 22]),
                 torch.nn.utils.rnn.pad_sequence(targets, batch_first=True), torch.tensor([2, 3]), ["u1", "u2"],
                 (), torch.nn.utils.rnn.pad_sequence(phones, batch_first=True),
                 torch.tensor([len(p) for p in phone_lists]))


def _phone_log_probs(module, batch):
    out = module.model.forward_outputs(batch.feats, batch.feat_lens, tap=module.model.phone_layer)
    lp = module.phone_head(out.tapped).log_softmax(-1) * out.mask.unsqueeze(-1)
    return lp, out.lens


def test_loss_is_weighted_like_inter_ctc_in_training_and_final_only_on_dev():
    module, tok = _module(weight=0.3)
    batch = _batch(tok, [[1, 2], [3, 1, 3]])
    module.train()
    out = module.losses(batch)
    lp, lens = _phone_log_probs(module, batch)
    phone = F.ctc_loss(lp.transpose(0, 1), batch.phones, lens, batch.phone_lens, blank=0, reduction="sum") / 2
    torch.testing.assert_close(out.phone, phone)
    torch.testing.assert_close(out.loss, 0.7 * module._ctc(out.log_probs, out.out_lens, batch) + 0.3 * phone)
    assert out.phone_n == 2
    module.eval()
    with torch.no_grad():
        dev = module.losses(batch)
    torch.testing.assert_close(dev.loss, module._ctc(dev.log_probs, dev.out_lens, batch))
    assert dev.phone is not None and dev.phone_n == 2  # logged apart as val/phone_ctc


def test_inter_and_phone_weights_share_the_final_layer_weight():
    module, tok = _module(weight=0.2, inter=0.25)
    batch = _batch(tok, [[1, 2], [3]])
    module.train()
    out = module.losses(batch)
    inter = module.model.forward_outputs(batch.feats, batch.feat_lens).inter
    want = 0.55 * module._ctc(out.log_probs, out.out_lens, batch) + 0.25 * module._ctc(inter, out.out_lens, batch)
    torch.testing.assert_close(out.loss, want + 0.2 * out.phone)


def test_utterances_without_phone_targets_are_masked_out():
    module, tok = _module()
    module.eval()
    with torch.no_grad():
        batch = _batch(tok, [[1, 2], []])
        out = module.losses(batch)
        lp, lens = _phone_log_probs(module, batch)
        alone = F.ctc_loss(lp[:1].transpose(0, 1), batch.phones[:1], lens[:1], batch.phone_lens[:1], blank=0,
                           reduction="sum")
    torch.testing.assert_close(out.phone, alone)  # the mean over the one covered utterance
    assert out.phone_n == 1
    module.train()
    none = module.losses(_batch(tok, [[], []]))
    assert none.phone_n == 0 and none.phone.item() == 0.0
    none.loss.backward()  # the head is in the graph (DDP needs every parameter used)
    assert module.phone_head.weight.grad is not None


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_phone_head_output_alone_equals_output_in_padded_batch(layer):
    module, tok = _module(layer=layer)
    module.eval()
    assert module.model.phone_layer == (layer - 1 if layer else 1)
    feats = torch.randn(2, 30, 10)
    lens = torch.tensor([30, 17])
    with torch.no_grad():
        padded, out_lens = _phone_log_probs(module, Batch(feats, lens, None, None, []))
        alone, alone_lens = _phone_log_probs(module, Batch(feats[1:, :17], lens[1:], None, None, []))
    n = int(alone_lens[0])
    assert int(out_lens[1]) == n
    torch.testing.assert_close(padded[1, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
    assert padded[1, n:].abs().max() == 0


def test_config_validation(lexicon):
    base = [f"data.train_manifest={lexicon}", f"data.dev_manifest={lexicon}"]
    with pytest.raises(ConfigError, match="needs data.lexicon"):
        load_config(None, [*base, "model.phone_ctc_weight=0.3"])
    with pytest.raises(ConfigError, match="no such file"):
        load_config(None, [*base, "model.phone_ctc_weight=0.3", "data.lexicon=/nonexistent/lex.txt"])
    with pytest.raises(ConfigError, match="phone_ctc_layer"):
        load_config(None, [*base, "model.phone_ctc_weight=0.3", f"data.lexicon={lexicon}", "model.phone_ctc_layer=4"])
    with pytest.raises(ConfigError, match="inter_ctc_weight \\+ model.phone_ctc_weight < 1"):
        load_config(None, [*base, "model.phone_ctc_weight=0.5", "model.inter_ctc_weight=0.5",
                           f"data.lexicon={lexicon}"])
    cfg = load_config(None, [*base, "model.phone_ctc_weight=0.3", f"data.lexicon={lexicon}",
                             "model.phone_ctc_layer=3"])
    assert cfg.model.phone_ctc_layer == 3 and cfg.data.lexicon == str(lexicon)
    assert load_config(None, base).model.phone_ctc_weight == 0.0 and DataConfig().lexicon == ""


@pytest.mark.slow
@pytest.mark.data
def test_yesno_trains_with_phone_ctc_and_the_package_decodes(tmp_path, shared_data):
    """Two epochs on yesno with a hand-made lexicon: the phone loss is logged and falls; the
    package carries the phone head and the training words' pronunciations, and decodes with
    and without ``--phone-weight``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT))
    data = tmp_path / "yesno"
    subprocess.run([sys.executable, "-m", "asr", "prepare", "yesno", "--src", str(shared_data / "yesno"),
                    "--out", str(data)], check=True, capture_output=True, env=env, timeout=120)
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("YES\tY EH1 S\nNO\tN OW1\n")
    exp = tmp_path / "exp"
    proc = subprocess.run(
        [sys.executable, "-m", "asr", "train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={exp}",
         f"data.train_manifest={data / 'train.jsonl'}", f"data.dev_manifest={data / 'dev.jsonl'}",
         "model.phone_ctc_weight=0.3", f"data.lexicon={lexicon}", "trainer.max_epochs=2", "trainer.threads=1",
         "trainer.progress_bar=false", "trainer.log_every_n_steps=1"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "phone targets: 25 of 25 training utterances (no words missing from the lexicon)" in proc.stderr
    import csv

    rows = list(csv.DictReader((exp / "csv" / "version_0" / "metrics.csv").open()))
    train = [float(r["train/phone_ctc"]) for r in rows if r.get("train/phone_ctc")]
    dev = [float(r["val/phone_ctc"]) for r in rows if r.get("val/phone_ctc")]
    assert len(dev) == 2 and dev[1] < dev[0]
    assert len(train) >= 4 and sum(train[-2:]) < sum(train[:2])
    ckpt = torch.load(exp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(k.startswith("phone_head.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["phones"] == ["EH", "N", "OW", "S", "Y"]

    model = tmp_path / "m.asr"
    subprocess.run([sys.executable, "-m", "asr", "export", str(exp), "--out", str(model)], check=True,
                   capture_output=True, env=env, timeout=120)
    from safetensors import safe_open

    with safe_open(str(model), "pt") as f:
        assert sorted(k for k in f.keys() if "phone" in k) == ["phone_head.bias", "phone_head.weight"]
    for name, flags in (("eval", []), ("eval-phones", ["--decoder", "beam", "--phone-weight", "0.5"])):
        proc = subprocess.run([sys.executable, "-m", "asr", "evaluate", str(model), str(data / "dev.jsonl"), "--out",
                               str(tmp_path / name), *flags], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["num_utterances"] == 5
    from asr.package import load_package

    pkg = load_package(model)
    assert pkg.model.cfg.phone_ctc_weight == 0.3
    assert pkg.phone_head is not None and pkg.phone_head.phones == ("EH", "N", "OW", "S", "Y")
    assert pkg.phone_head.pronunciations == {"yes": ("Y", "EH", "S"), "no": ("N", "OW")}
    best = torch.load(summary_best(exp), map_location="cpu", weights_only=False)["state_dict"]
    for k, v in pkg.model.state_dict().items():  # the package is the checkpoint's AcousticModel, unchanged
        torch.testing.assert_close(v, best["model." + k])


def summary_best(exp: Path) -> str:
    return json.loads((exp / "train_summary.json").read_text())["best_checkpoint"]


def test_streamed_shard_batches_carry_the_phone_targets(tmp_path, monkeypatch):
    pytest.importorskip("webdataset")
    from test_shards import make_utts, run_slot, stream

    from asr.data.shard_writer import write_shards
    from asr.data.shards import Buckets, EpochPlan, open_shard_set

    utts = make_utts(tmp_path / "wav", 10)  # texts "a", "ab", "ab", "ab b", "ab ba", ...
    write_shards(utts, tmp_path / "sh", shard_size=10**9)
    shards = open_shard_set(str(tmp_path / "sh"))
    plan = EpochPlan(shards, Buckets.plan(shards.durations(), 1, 4.0, 4), world=1, workers=1, max_duration=30.0)
    phone_map = PhoneMap({"a": ("AH",), "ab": ("AE", "B"), "ba": ("B", "AA")})  # no "b"
    tok = CharTokenizer.from_texts([u.text for u in utts])
    batches = run_slot(stream(plan, 0, tok, phone_map=phone_map), 0, monkeypatch)
    text = {u.id: u.text for u in utts}
    seen = 0
    for b in batches[: plan.planned[0]]:
        for i, uid in enumerate(b.ids):
            want = phone_map.encode(text[uid]) or []
            assert b.phones[i, : b.phone_lens[i]].tolist() == want
            seen += 1
    assert seen == len(utts)
    assert run_slot(stream(plan, 0, tok), 0, monkeypatch)[0].phones is None


def test_features_on_device_batches_carry_the_phone_targets_past_a_dropped_item(tmp_path):
    from test_dataset import _wave_dataset

    from asr.data.dataset import WaveBatch, collate_waves, wave_batch_features
    from asr.features import LogMel

    utts, targets = _wave_dataset(tmp_path, rates=(16000, 16000, 16000), seconds=(1.0, 0.5, 0.8))
    ds = FeatureDataset(utts, targets, FeatureConfig(), cache=False, waveforms=True, phones=[[3, 4], [], [5, 6, 7]])
    batch = collate_waves([ds[0], ds[1], ds[2]])
    assert batch.phone_lens.tolist() == [2, 0, 3]
    waves = batch.waves.clone()
    waves[0] *= 1e30  # features not finite: w0 is dropped, the others keep their own phones
    out = wave_batch_features(WaveBatch(waves, *batch[1:]), LogMel(FeatureConfig()))
    assert out.ids == ["w1", "w2"]
    assert out.phone_lens.tolist() == [0, 3] and out.phones.tolist() == [[0, 0, 0], [5, 6, 7]]
