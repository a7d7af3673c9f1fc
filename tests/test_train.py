"""Training: the model learns (overfit one batch), the CLI trains/resumes, DDP runs on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tone_corpus import make_corpus

from asr.model import AcousticModel, ModelConfig
from asr.text import CharTokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_overfit_single_batch():
    torch.manual_seed(0)
    tok = CharTokenizer.from_texts(["abc cab"])
    texts = ["abc", "cab ab", "b", "ca"]
    targets = [torch.tensor(tok.encode(t)) for t in texts]
    feats = torch.randn(4, 40, 20)
    lens = torch.tensor([40, 33, 20, 25])
    cfg = ModelConfig(num_layers=2, hidden=32, subsampling=2, conv_channels=4, dropout=0.0, spec_augment_enabled=False)
    model = AcousticModel(cfg, n_mels=20, vocab_size=tok.vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    padded = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
    tlens = torch.tensor([len(t) for t in targets])
    for _ in range(150):
        lp, out = model(feats, lens)
        loss = F.ctc_loss(lp.transpose(0, 1), padded, out, tlens, blank=tok.blank_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    from asr.decode.decoding import greedy_decode

    model.eval()
    with torch.no_grad():
        lp, out = model(feats, lens)
    assert [h.text for h in greedy_decode(lp, out, tok)] == texts


def run_train(tmp_path, *overrides, resume=False):
    train, dev = make_corpus(tmp_path) if not (tmp_path / "train.jsonl").exists() else (tmp_path / "train.jsonl", tmp_path / "dev.jsonl")
    cmd = [sys.executable, "-m", "asr", "train", str(ROOT / "conf" / "yesno.yaml"),
           f"exp_dir={tmp_path / 'exp'}", f"data.train_manifest={train}", f"data.dev_manifest={dev}",
           "model.hidden=16", "model.num_layers=1", "trainer.progress_bar=false", "data.max_batch_seconds=8", *overrides]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "exp" / "train_summary.json").read_text()), proc


@pytest.mark.slow
def test_cli_trains_saves_config_and_resumes(tmp_path):
    summary, _ = run_train(tmp_path, "trainer.max_epochs=1")
    exp = tmp_path / "exp"
    assert summary["epochs"] == 1 and summary["steps"] > 0
    assert 0 < summary["cpu_seconds"] and 0 < summary["wall_seconds"]
    assert (exp / "config.yaml").exists() and (exp / "tokenizer.json").exists()
    assert (exp / "checkpoints" / "last.ckpt").exists()
    assert "model:\n  cell: lstm\n  num_layers: 1\n  hidden: 16" in (exp / "config.yaml").read_text()
    steps = summary["steps"]
    summary2, _ = run_train(tmp_path, "trainer.max_epochs=2", resume=True)
    assert summary2["epochs"] == 2 and summary2["steps"] == 2 * steps


@pytest.mark.slow
def test_resume_refuses_changed_model_and_optimiser_keys_and_takes_run_settings(tmp_path):
    run_train(tmp_path, "trainer.max_epochs=1")
    exp = tmp_path / "exp"
    before = (exp / "config.yaml").read_text()
    # (Before this check: model.hidden ended in a size-mismatch traceback from load_state_dict,
    # and optim.lr was silently replaced by the learning rate restored with the optimiser.)
    cmd = [sys.executable, "-m", "asr", "train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={exp}",
           f"data.train_manifest={tmp_path / 'train.jsonl'}", f"data.dev_manifest={tmp_path / 'dev.jsonl'}",
           "model.hidden=24", "model.num_layers=1", "trainer.progress_bar=false", "data.max_batch_seconds=8",
           "optim.lr=0.01", "trainer.max_epochs=2", "--resume"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "model.hidden (16 -> 24)" in errors[0] and "optim.lr (0.003 -> 0.01)" in errors[0]
    assert "max_epochs (" not in errors[0]  # allowed to change: not named
    assert (exp / "config.yaml").read_text() == before  # nothing rewritten
    summary, _ = run_train(tmp_path, "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.threads=1",
                           resume=True)
    assert summary["epochs"] == 2
    assert "log_every_n_steps: 1" in (exp / "config.yaml").read_text()


def test_resume_config_check_names_each_changed_key_and_allows_run_settings():
    from dataclasses import replace

    from asr.config import ConfigError, ExperimentConfig, to_dict
    from asr.train.resume import check_resume_config

    cfg = ExperimentConfig()
    saved = to_dict(cfg)
    runtime = replace(cfg, exp_dir="elsewhere", trainer=replace(cfg.trainer, max_epochs=99, threads=1,
                                                                 log_every_n_steps=1, progress_bar=False))
    check_resume_config(saved, runtime, Path("last.ckpt"))  # no error
    check_resume_config(None, cfg, Path("last.ckpt"))  # a checkpoint without our config
    older = to_dict(cfg)
    del older["data"]["features_on_device"]  # a key added to the toolkit since: not compared
    check_resume_config(older, cfg, Path("last.ckpt"))
    changed = replace(cfg, model=replace(cfg.model, hidden=8), optim=replace(cfg.optim, betas=(0.8, 0.9)))
    with pytest.raises(ConfigError) as e:
        check_resume_config(saved, changed, Path("x/last.ckpt"))
    message = str(e.value)
    assert "\n" not in message and "x/last.ckpt" in message
    assert f"model.hidden ({cfg.model.hidden} -> 8), optim.betas ([0.9, 0.98] -> [0.8, 0.9])" in message


def test_cli_rejects_unknown_keys(capsys):
    from asr.cli import main

    assert main(["train", str(ROOT / "conf" / "yesno.yaml"), "model.hiden=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key(s): model.hiden;") and err.count("\n") == 1


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    summary, proc = run_train(tmp_path, "trainer.max_epochs=1", "trainer.strategy=ddp", "trainer.devices=2",
                              "trainer.accelerator=cpu")
    assert summary["epochs"] == 1
    # each rank runs half the batches (16 utts of 1.1 s, <= 8 s per batch -> 3 batches -> 2 steps per rank)
    assert summary["steps"] == 2
    # ranks > 0 take rank 0's run id (run.json) instead of naming the run again
    run_id = json.loads((tmp_path / "exp" / "run.json").read_text())["run_id"]
    ckpt = torch.load(tmp_path / "exp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert summary["run_id"] == run_id == ckpt["hyper_parameters"]["run_id"]


@pytest.mark.slow
def test_sampler_reshuffles_each_epoch_under_lightning(tmp_path):
    """Lightning does not call set_epoch on a custom batch_sampler: our callback must."""
    import pytorch_lightning as pl

    from asr.data.sampler import BucketBatchSampler
    from asr.train.callbacks import SamplerEpoch

    seen = []

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, i):
            seen.append((self.current_epoch, batch.tolist()))
            return (self.w * 0).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    sampler = BucketBatchSampler([1.0] * 12, max_batch_seconds=3, num_buckets=1, seed=0)
    loader = torch.utils.data.DataLoader(list(range(12)), batch_sampler=sampler)
    trainer = pl.Trainer(max_epochs=2, callbacks=[SamplerEpoch()], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         default_root_dir=tmp_path)
    trainer.fit(Module(), loader)
    epoch0 = [b for e, b in seen if e == 0]
    epoch1 = [b for e, b in seen if e == 1]
    assert sorted(sum(epoch0, [])) == sorted(sum(epoch1, [])) == list(range(12))
    assert epoch0 != epoch1


@pytest.mark.slow
def test_nonfinite_loss_step_is_skipped_and_counted(tmp_path, monkeypatch):
    from asr.config import load_config
    from asr.train.module import CTCModule
    from asr.train.training import train

    train_m, dev_m = make_corpus(tmp_path)
    real = CTCModule.losses
    calls = {"n": 0}

    def poisoned(self, batch):
        out = real(self, batch)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:
                return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(CTCModule, "losses", poisoned)
    cfg = load_config(ROOT / "conf" / "yesno.yaml", [
        f"exp_dir={tmp_path / 'exp'}", f"data.train_manifest={train_m}", f"data.dev_manifest={dev_m}",
        "model.hidden=8", "model.num_layers=1", "trainer.max_epochs=1", "trainer.progress_bar=false",
        "data.max_batch_seconds=8", "trainer.threads=1"])
    summary = train(cfg)
    assert summary["skipped_steps_nonfinite"] == 1
    assert calls["n"] >= 3  # training went on past the poisoned batch
    ckpt = torch.load(summary["last_checkpoint"], weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_last_checkpoint_is_the_final_epoch_even_without_improvement_and_keep_last_keeps_the_tail(tmp_path):
    # Regression: with ModelCheckpoint(save_last=True) Lightning rewrote last.ckpt only when a
    # top-k checkpoint was saved, so it could hold an early epoch and --resume went back there.
    # trainer.keep_last keeps the last epochs (here 2 of 3) whatever their WER, for
    # `asr export --average-last`, in checkpoints/tail/ beside the one ranked checkpoint.
    summary, _ = run_train(tmp_path, "trainer.max_epochs=3", "optim.lr=1e-9", "trainer.save_top_k=1",
                           "trainer.keep_last=2")
    ckpt_dir = tmp_path / "exp" / "checkpoints"
    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert summary["epochs"] == 3 and ckpt["epoch"] == 2
    assert ckpt["global_step"] == summary["steps"]
    assert sorted(p.name for p in (ckpt_dir / "tail").iterdir()) == ["epoch001.ckpt", "epoch002.ckpt"]
    assert len(list(ckpt_dir.glob("epoch*.ckpt"))) == 1


@pytest.mark.slow
def test_unreadable_training_audio_is_skipped_and_listed(tmp_path):
    train, _ = make_corpus(tmp_path)
    (tmp_path / "utt5.wav").write_bytes(b"not audio at all")  # corrupted after `asr prepare`
    summary, proc = run_train(tmp_path, "trainer.max_epochs=1")
    assert summary["skipped_utterances"]["train"] == 1
    assert "utt5" in proc.stderr and "unreadable" in proc.stderr  # warnings go to stderr
    rows = [json.loads(line) for line in (tmp_path / "exp" / "skipped.jsonl").read_text().splitlines()]
    assert [(r["id"], r["split"]) for r in rows] == [("utt5", "train")]
    assert str(tmp_path / "utt5.wav") in rows[0]["reason"]



def test_intermediate_ctc_loss_mixes_final_and_middle_layers_in_training_only():
    from dataclasses import replace

    from asr.config import ExperimentConfig
    from asr.data.dataset import Batch
    from asr.train.module import CTCModule

    tok = CharTokenizer.from_texts(["ab ba"])
    mcfg = ModelConfig(num_layers=3, hidden=8, subsampling=2, conv_channels=4, dropout=0.0,
                       spec_augment_enabled=False, inter_ctc_weight=0.25)
    torch.manual_seed(0)
    module = CTCModule(AcousticModel(mcfg, n_mels=10, vocab_size=tok.vocab_size), tok,
                       replace(ExperimentConfig(), model=mcfg))
    targets = [torch.tensor(tok.encode(t)) for t in ["ab", "b a"]]
    batch = Batch(torch.randn(2, 30, 10), torch.tensor([30, 22]),
                  torch.nn.utils.rnn.pad_sequence(targets, batch_first=True), torch.tensor([2, 3]), ["u1", "u2"])
    module.train()
    loss, lp, lens, *_ = module.losses(batch)
    inter = module.model.forward_outputs(batch.feats, batch.feat_lens).inter
    final, middle = module._ctc(lp, lens, batch), module._ctc(inter, lens, batch)
    torch.testing.assert_close(loss, 0.75 * final + 0.25 * middle)
    assert not torch.isclose(final, middle)
    module.eval()
    with torch.no_grad():
        eval_loss, lp, lens, *_ = module.losses(batch)
    torch.testing.assert_close(eval_loss, module._ctc(lp, lens, batch))  # dev loss: final layer only


@pytest.mark.parametrize("schedule, want", [
    # warm-up 10 of 110 steps: step 0, end of warm-up (step 9), midpoint of the decay (step 60), end (110)
    ("constant", [0.1, 1.0, 1.0, 1.0]),
    ("noam", [0.1, 1.0, (10 / 61) ** 0.5, (10 / 111) ** 0.5]),
    ("cosine", [0.1, 1.0, 0.05 + 0.95 * 0.5, 0.05]),
])
def test_lr_factor_shapes(schedule, want):
    from asr.train.module import lr_factor

    got = [lr_factor(s, warmup=10, total=110, schedule=schedule, min_lr_ratio=0.05) for s in (0, 9, 60, 110)]
    assert got == pytest.approx(want)
    assert lr_factor(5, 10, 110, schedule) == pytest.approx(0.6)  # linear warm-up
    assert lr_factor(10, 10, 110, schedule) <= 1.0  # no jump after warm-up


def test_swa_epochs_hold_the_rate_reached_at_their_start():
    from asr.config import ConfigError, OptimConfig
    from asr.train.module import lr_factor

    args = dict(warmup=10, total=110, schedule="cosine", min_lr_ratio=0.05)
    held = [lr_factor(s, hold_from=80, **args) for s in range(111)]
    assert held[:81] == [lr_factor(s, **args) for s in range(81)]  # the schedule until then
    assert set(held[80:]) == {lr_factor(80, **args)} and held[80] > lr_factor(110, **args)
    with pytest.raises(ConfigError, match="swa_epochs must be >= 0"):
        OptimConfig(swa_epochs=-1).validate()
    from asr.config import DataConfig, ExperimentConfig, TrainerConfig

    with pytest.raises(ConfigError, match="swa_epochs counts the last epochs"):
        ExperimentConfig(data=DataConfig(train_manifest="t.jsonl", dev_manifest="d.jsonl"), optim=OptimConfig(swa_epochs=2),
                         trainer=TrainerConfig(max_epochs=-1, max_steps=100)).validate()


def test_lr_factor_edge_cases():
    from asr.train.module import lr_factor

    assert lr_factor(0, warmup=0, total=50, schedule="cosine") == 1.0  # no warm-up: peak at once
    assert lr_factor(4, warmup=100, total=5, schedule="cosine") == 1.0  # warm-up longer than the run
    assert lr_factor(10_000, 10, 110, "cosine", 0.05) == pytest.approx(0.05)  # past the end: floor
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lr_factor(50, 10, 110, "linear")


def test_gpu_accelerator_without_cuda_is_one_config_error(monkeypatch, tmp_path, capsys):
    from asr.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train_m, dev_m = make_corpus(tmp_path, n=4)
    rc = main(["train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={tmp_path / 'exp'}",
               f"data.train_manifest={train_m}", f"data.dev_manifest={dev_m}", "trainer.accelerator=gpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("error: trainer.accelerator=gpu but no CUDA device is visible; "
                               "use trainer.accelerator=cpu or auto\n")
    assert not (tmp_path / "exp").exists()  # refused before anything was written


def test_train_help_imports_neither_torch_nor_lightning():
    code = ("import sys; from asr.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'pytorch_lightning', 'lightning_fabric') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "--resume" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout + proc.stderr


def test_lightning_noise_is_dropped_and_real_messages_kept(caplog):
    import logging
    import warnings

    from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

    from asr.train.training import quiet_lightning

    quiet_lightning()
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        rank_zero_info("GPU available: False, used: False")
        rank_zero_info("TPU available: False, using: 0 TPU cores")
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        rank_zero_info("Restoring states from the checkpoint path at x.ckpt")
    assert [r.getMessage() for r in caplog.records] == ["Restoring states from the checkpoint path at x.ckpt"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet_lightning()  # filters go in front of "default"
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        rank_zero_warn("You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a "
                       "`LightningDataModule`. It will use the implementation from `LightningModule` instance.")
        rank_zero_warn("Checkpoint directory /x/exp/checkpoints exists and is not empty.")
        rank_zero_warn("The dataloader does not have many workers")
    assert [str(w.message) for w in seen] == ["The dataloader does not have many workers"]


def test_top_level_help_is_for_users(capsys):
    from asr.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Speech recognition" in out and "COMMAND --help" in out
    assert "parse, validate" not in out  # the module's note for developers stays in the source
