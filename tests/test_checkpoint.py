"""Model package: export from Lightning checkpoints, safe loading, averaging, int8, TorchScript/ONNX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from asr import __version__
from asr.cli import main
from asr.config import ExperimentConfig, to_dict
from asr.decode.decoding import greedy_decode
from asr.model import AcousticModel, ModelConfig
from asr.package import (
    FORMAT,
    ModelPackage,
    PackageConfig,
    PackageError,
    load_package,
    read_metadata,
)
from asr.text import CharTokenizer, Tokenizer
from asr.train.checkpoint import (
    TAIL_DIR,
    CheckpointError,
    best_checkpoints,
    latest_checkpoints,
    read_lightning_checkpoint,
)
from asr.train.export import export

TOKENIZER = CharTokenizer("abcdefgh'")


def tiny_config(**model_kw) -> ExperimentConfig:
    kw = dict(hidden=16, num_layers=2, conv_channels=4, dropout=0.0)
    kw.update(model_kw)
    return ExperimentConfig(exp_dir="exp/tiny", model=ModelConfig(**kw))


def tiny_model(cfg: ExperimentConfig, seed: int = 0, tokenizer: Tokenizer = TOKENIZER) -> AcousticModel:
    torch.manual_seed(seed)
    model = AcousticModel(cfg.model, cfg.features.n_mels, tokenizer.vocab_size)
    # Non-trivial CMVN statistics, so a package that lost them would give other log-probs.
    model.cmvn.mean.normal_()
    model.cmvn.istd.uniform_(0.5, 2.0)
    return model.eval()


def write_lightning_ckpt(path: Path, model: AcousticModel, cfg: ExperimentConfig,
                         tokenizer: Tokenizer = TOKENIZER, epoch: int = 0) -> Path:
    """The structure CTCModule + Lightning write (model weights under "model.", the
    hyper-parameters as plain values, optimizer/callback states of tensors and numbers)."""
    ckpt = {
        "epoch": epoch,
        "global_step": 10 * (epoch + 1),
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {f"model.{k}": v.clone() for k, v in model.state_dict().items()},
        "hyper_parameters": {"config": to_dict(cfg), "tokenizer": tokenizer.to_dict()},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98), "params": [0]}]}],
        "lr_schedulers": [{"base_lrs": [1e-3], "last_epoch": 3}],
        "callbacks": {"ModelCheckpoint{'monitor': 'val_wer'}": {"best_model_score": torch.tensor(0.25),
                                                               "dirpath": str(path.parent)}},
        "loops": {"fit_loop": {"epoch_progress": {"total": {"completed": epoch}}}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def features(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 57, 80, generator=g) * 3, torch.tensor([57, 40, 13])


def test_export_load_round_trip_gives_identical_log_probs(tmp_path):
    cfg = tiny_config()
    model = tiny_model(cfg)
    ckpt = write_lightning_ckpt(tmp_path / "epoch003-wer0.2500.ckpt", model, cfg, epoch=3)
    out = export([ckpt], tmp_path / "pkg" / "model.asr")
    pkg = load_package(out)

    assert isinstance(pkg, ModelPackage)
    assert not pkg.model.training
    x, lens = features()
    with torch.no_grad():
        want, want_lens = model(x, lens)
        got, got_lens = pkg.model(x, lens)
    assert torch.equal(got, want) and torch.equal(got_lens, want_lens)
    assert torch.equal(pkg.model.cmvn.mean, model.cmvn.mean)
    assert pkg.tokenizer.tokens == TOKENIZER.tokens
    assert pkg.config == PackageConfig(features=cfg.features, model=cfg.model)
    assert pkg.featurizer.cfg == cfg.features
    assert pkg.frame_shift == pytest.approx(0.01 * cfg.model.subsampling)
    info = pkg.info
    assert info["path"] == str(out.resolve())
    assert len(info["sha256"]) == 64 and info["toolkit_version"] == __version__ and "version" not in info
    assert info["averaged"] == 1 and info["quantize"] == "none"
    assert info["source_checkpoints"] == [{"path": str(ckpt.resolve()), "epoch": 3, "global_step": 40}]
    meta = read_metadata(out)
    assert meta["format"] == FORMAT and meta["format_version"] == "2"
    # Only what inference needs: no training sections that a later rename could break.
    assert json.loads(meta["config"]) == {"features": to_dict(cfg.features), "model": to_dict(cfg.model)}


def test_averaging_two_checkpoints_averages_the_weights(tmp_path):
    cfg = tiny_config()
    a, b = tiny_model(cfg, seed=1), tiny_model(cfg, seed=2)
    paths = [write_lightning_ckpt(tmp_path / f"epoch00{i}-wer0.{i}000.ckpt", m, cfg, epoch=i)
             for i, m in enumerate((a, b))]
    pkg = load_package(export(paths, tmp_path / "avg.asr", average=True))
    sa, sb, got = a.state_dict(), b.state_dict(), pkg.model.state_dict()
    assert got.keys() == sa.keys()
    for k in sa:
        torch.testing.assert_close(got[k], (sa[k] + sb[k]) / 2, rtol=0, atol=1e-6)
    assert pkg.info["averaged"] == 2


def test_averaging_needs_the_same_model_config(tmp_path):
    p1 = write_lightning_ckpt(tmp_path / "a.ckpt", tiny_model(tiny_config()), tiny_config())
    other = tiny_config(hidden=8)
    p2 = write_lightning_ckpt(tmp_path / "b.ckpt", tiny_model(other), other)
    with pytest.raises(CheckpointError, match=r"model configs differ \(model.hidden: 16 vs 8\)"):
        export([p1, p2], tmp_path / "x.asr", average=True)
    assert not (tmp_path / "x.asr").exists()


def test_several_checkpoints_without_average_is_an_error(tmp_path):
    cfg = tiny_config()
    paths = [write_lightning_ckpt(tmp_path / f"{i}.ckpt", tiny_model(cfg, i), cfg) for i in range(2)]
    with pytest.raises(CheckpointError, match="pass --average"):
        export(paths, tmp_path / "x.asr")


def test_experiment_dir_uses_its_best_checkpoints(tmp_path):
    cfg = tiny_config()
    ckpts = tmp_path / "exp" / "checkpoints"
    for i, wer in enumerate(("0.5000", "0.2000", "0.3000")):
        write_lightning_ckpt(ckpts / f"epoch{i:03d}-wer{wer}.ckpt", tiny_model(cfg, i), cfg, epoch=i)
    write_lightning_ckpt(ckpts / "last.ckpt", tiny_model(cfg, 9), cfg, epoch=2)
    assert [p.name for p in best_checkpoints(tmp_path / "exp", 2)] == [
        "epoch001-wer0.2000.ckpt", "epoch002-wer0.3000.ckpt"]

    one = load_package(export([tmp_path / "exp"], tmp_path / "best.asr"))
    assert [Path(s["path"]).name for s in one.info["source_checkpoints"]] == ["epoch001-wer0.2000.ckpt"]

    assert main(["export", str(tmp_path / "exp"), "--out", str(tmp_path / "avg.asr"), "--average", "2"]) == 0
    two = load_package(tmp_path / "avg.asr")
    assert two.info["averaged"] == 2
    want = (tiny_model(cfg, 1).output.weight + tiny_model(cfg, 2).output.weight) / 2
    torch.testing.assert_close(two.model.output.weight, want, rtol=0, atol=1e-6)

    # --average without N: every ranked checkpoint of the directory, never last.ckpt.
    assert main(["export", str(tmp_path / "exp"), "--out", str(tmp_path / "all.asr"), "--average"]) == 0
    names = [Path(s["path"]).name for s in load_package(tmp_path / "all.asr").info["source_checkpoints"]]
    assert names == ["epoch001-wer0.2000.ckpt", "epoch002-wer0.3000.ckpt", "epoch000-wer0.5000.ckpt"]


def test_average_last_takes_the_latest_epochs_whatever_their_wer(tmp_path, capsys):
    cfg = tiny_config()
    ckpts = tmp_path / "exp" / "checkpoints"
    # Ranked: epochs 1 and 4 (the best WERs); tail/ (trainer.keep_last=3): epochs 2, 3, 4.
    for i, wer in ((1, "0.2000"), (4, "0.3000")):
        write_lightning_ckpt(ckpts / f"epoch{i:03d}-wer{wer}.ckpt", tiny_model(cfg, i), cfg, epoch=i)
    for i in (2, 3, 4):
        write_lightning_ckpt(ckpts / TAIL_DIR / f"epoch{i:03d}.ckpt", tiny_model(cfg, i), cfg, epoch=i)
    write_lightning_ckpt(ckpts / "last.ckpt", tiny_model(cfg, 9), cfg, epoch=4)

    got = latest_checkpoints(tmp_path / "exp", 3)
    assert [p.relative_to(ckpts).as_posix() for p in got] == [
        f"{TAIL_DIR}/epoch002.ckpt", f"{TAIL_DIR}/epoch003.ckpt", "epoch004-wer0.3000.ckpt"]

    assert main(["export", str(tmp_path / "exp"), "--out", str(tmp_path / "tail.asr"), "--average-last", "3"]) == 0
    pkg = load_package(tmp_path / "tail.asr")
    assert [s["epoch"] for s in pkg.info["source_checkpoints"]] == [2, 3, 4]
    want = sum(tiny_model(cfg, i).output.weight for i in (2, 3, 4)) / 3
    torch.testing.assert_close(pkg.model.output.weight, want, rtol=0, atol=1e-6)

    # Asking for more epochs than were kept says how many there are and how to keep more.
    assert main(["export", str(tmp_path / "exp"), "--out", str(tmp_path / "x.asr"), "--average-last", "5"]) == 2
    err = capsys.readouterr().err
    assert "has 4 (epoch 1, epoch 2, epoch 3, epoch 4)" in err and "trainer.keep_last=5" in err
    assert main(["export", str(tmp_path / "exp"), "--out", str(tmp_path / "x.asr"), "--average-last", "0"]) == 2
    assert "--average-last N needs N >= 1" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "exp"), "--out", str(tmp_path / "x.asr"), "--average", "2",
                 "--average-last", "2"]) == 2
    assert "give one" in capsys.readouterr().err
    assert not (tmp_path / "x.asr").exists()


def test_cli_export_errors_exit_nonzero(tmp_path, capsys):
    cfg = tiny_config()
    paths = [str(write_lightning_ckpt(tmp_path / f"{i}.ckpt", tiny_model(cfg, i), cfg)) for i in range(2)]
    assert main(["export", *paths, "--out", str(tmp_path / "m.asr")]) == 2  # unusable input
    assert "pass --average" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "m.asr")]) == 2
    assert "missing.ckpt: no such checkpoint file" in capsys.readouterr().err


def _random_bytes(p: Path) -> None:
    p.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))


def _json(p: Path) -> None:
    p.write_text(json.dumps({"format": FORMAT, "config": {}}))


def _lightning(p: Path) -> None:
    write_lightning_ckpt(p, tiny_model(tiny_config()), tiny_config())


def _plain_safetensors(p: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})


def _empty(p: Path) -> None:
    p.write_bytes(b"")


@pytest.mark.parametrize("make, why", [
    (_random_bytes, "not a safetensors file"),
    (_json, "not a safetensors file"),
    (_lightning, "Lightning/PyTorch checkpoint"),
    (_plain_safetensors, "without format='asr-model-package'"),
    (_empty, "only 0 bytes long"),
])
def test_non_packages_are_rejected_naming_the_file(tmp_path, make, why):
    path = tmp_path / "model.asr"
    make(path)
    with pytest.raises(PackageError, match=why) as e:
        load_package(path)
    assert str(path) in str(e.value)


def test_missing_package_and_directory_are_rejected(tmp_path):
    with pytest.raises(PackageError, match="no such model package"):
        load_package(tmp_path / "nope.asr")
    with pytest.raises(PackageError, match="is a directory"):
        load_package(tmp_path)


def test_package_from_a_newer_format_is_refused(tmp_path):
    cfg = tiny_config()
    out = export([write_lightning_ckpt(tmp_path / "a.ckpt", tiny_model(cfg), cfg)], tmp_path / "m.asr")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out), "pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "99"
    save_file(load_file(str(out)), str(out), metadata=meta)
    with pytest.raises(PackageError, match="format version 99 is newer"):
        load_package(out)


def test_packages_and_checkpoints_with_retired_config_keys_still_load(tmp_path):
    # Regression: dropping data.test_manifest from the config made every package and
    # checkpoint written before unloadable ("unknown config key").
    cfg = tiny_config()
    old_cfg = to_dict(cfg)
    old_cfg["data"]["test_manifest"] = "data/old/test.jsonl"
    model = tiny_model(cfg)
    ckpt = write_lightning_ckpt(tmp_path / "a.ckpt", model, cfg)
    blob = torch.load(ckpt, weights_only=False)
    blob["hyper_parameters"]["config"] = old_cfg
    torch.save(blob, ckpt)
    out = export([ckpt], tmp_path / "m.asr")  # reads the checkpoint's config
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out), "pt") as f:
        meta = dict(f.metadata())
    meta["config"], meta["format_version"] = json.dumps(old_cfg), "1"
    save_file(load_file(str(out)), str(out), metadata=meta)
    assert load_package(out).config == PackageConfig.of(cfg)


def _as_v1_package(out: Path, full_config: dict) -> None:
    """Rewrite a package as format version 1 wrote it: the whole ExperimentConfig stored."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out), "pt") as f:
        meta = dict(f.metadata())
    meta["config"], meta["format_version"] = json.dumps(full_config), "1"
    save_file(load_file(str(out)), str(out), metadata=meta)


def test_v1_package_with_renamed_training_keys_still_loads(tmp_path):
    cfg = tiny_config()
    model = tiny_model(cfg)
    out = export([write_lightning_ckpt(tmp_path / "a.ckpt", model, cfg)], tmp_path / "m.asr")
    old = to_dict(cfg)
    old["trainer"]["a_key_renamed_since"] = 3  # training sections are not read from v1 packages
    old["optim"]["gone"] = "x"
    _as_v1_package(out, old)
    pkg = load_package(out)
    assert pkg.info["format_version"] == 1 and pkg.config == PackageConfig.of(cfg)
    x, lens = features()
    with torch.no_grad():
        assert torch.equal(pkg.model(x, lens)[0], model(x, lens)[0])


def test_v2_package_refuses_training_sections(tmp_path):
    """A v2 package is written with features/model only; one that has more was not written
    by `asr export` and is refused like any other bad metadata."""
    cfg = tiny_config()
    out = export([write_lightning_ckpt(tmp_path / "a.ckpt", tiny_model(cfg), cfg)], tmp_path / "m.asr")
    meta = read_metadata(out)
    assert set(json.loads(meta["config"])) == {"features", "model"}
    from safetensors.torch import load_file

    meta["config"] = json.dumps(to_dict(cfg))
    save_file(load_file(str(out)), str(out), metadata=meta)
    with pytest.raises(PackageError, match=r"unknown config key\(s\): data, exp_dir, optim, seed, trainer"):
        load_package(out)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="refusing to load: it pickles argparse.Namespace"):
        read_lightning_checkpoint(path)


def test_checkpoint_without_our_hyper_parameters(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.w": torch.zeros(1)}, "hyper_parameters": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="written by `asr train`"):
        read_lightning_checkpoint(path)


def _decisive_model(cfg: ExperimentConfig) -> AcousticModel:
    """A tiny model trained for 60 frame-classification steps on synthetic "tones" (a class
    pattern in the features), so its outputs have real margins like a trained model's;
    with random weights many frames are near-ties that any rounding flips."""
    g = torch.Generator().manual_seed(0)
    model = tiny_model(cfg)
    v = TOKENIZER.vocab_size
    proj = torch.zeros(v, 80)
    for c in range(1, v):
        proj[c, c * 8 : c * 8 + 6] = 4.0

    def batch(n: int, t: int):
        lab = torch.zeros(n, t, dtype=torch.long)
        for i in range(n):
            s = 0
            while s < t:
                d = int(torch.randint(4, 12, (1,), generator=g))
                lab[i, s : s + d] = int(torch.randint(0, v, (1,), generator=g))
                s += d
        return torch.randn(n, t, 80, generator=g) + F.one_hot(lab, v).float() @ proj, lab

    model.cmvn.mean.zero_()
    model.cmvn.istd.fill_(1.0)
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        x, lab = batch(8, 120)
        lp, _ = model(x, torch.full((8,), 120))
        loss = F.nll_loss(lp.reshape(-1, v), lab[:, :: cfg.model.subsampling].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model._test_batch = batch  # reuse the generator for evaluation inputs
    return model.eval()


@pytest.mark.slow
def test_int8_package_quantises_rnns_and_matches_fp32_text(tmp_path):
    cfg = tiny_config(spec_augment_enabled=False)
    model = _decisive_model(cfg)
    ckpt = write_lightning_ckpt(tmp_path / "a.ckpt", model, cfg)
    out = export([ckpt], tmp_path / "int8.asr", int8=True)
    q = load_package(out)
    fp = load_package(out, quantize=False)
    assert q.info["quantize"] == "int8" and fp.info["quantize"] == "none"
    qdyn = torch.ao.nn.quantized.dynamic
    kinds = {type(m) for m in q.model.modules()}
    assert {qdyn.LSTM, qdyn.Linear} <= kinds
    # Every direction of every RecurrentLayer and the output layer were converted.
    assert torch.nn.LSTM not in kinds and torch.nn.Linear not in kinds
    assert sum(isinstance(m, qdyn.LSTM) for m in q.model.modules()) == 2 * cfg.model.num_layers

    x, _ = model._test_batch(4, 300)
    lens = torch.tensor([300, 250, 200, 100])
    with torch.no_grad():
        a, a_lens = fp.model(x, lens)
        b, b_lens = q.model(x, lens)
    assert torch.equal(a_lens, b_lens)
    assert (a - b).abs().max() < 0.5  # int8 is close, not equal
    text_fp = [h.text for h in greedy_decode(a, a_lens, TOKENIZER)]
    text_q = [h.text for h in greedy_decode(b, b_lens, TOKENIZER)]
    assert all(len(t) >= 5 for t in text_fp), text_fp
    assert text_q == text_fp


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_and_onnx_exports(tmp_path):
    onnx = pytest.importorskip("onnx")
    cfg = tiny_config()
    model = tiny_model(cfg)
    out = export([write_lightning_ckpt(tmp_path / "a.ckpt", model, cfg)], tmp_path / "m.asr",
                 torchscript=True, onnx=True)
    ts = torch.jit.load(str(tmp_path / "m.ts"))
    x, lens = features(seed=5)  # another batch size and length than the trace's example
    with torch.no_grad():
        want, want_lens = model(x, lens)
        got, got_lens = ts(x, lens)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert torch.equal(got_lens, want_lens)
    graph = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(graph)
    dims = [d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims[:2] == ["batch", "time"]
    assert out.exists()
