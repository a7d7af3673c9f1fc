"""Recipes: the GPU LibriSpeech config end to end on a tiny generated tree (CPU, seconds), the
recipe stage machinery, the results/ablation table writers, the FSDD list, and one short
real-speech run on yesno (slow) that must reach test WER <= 5%."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # plot_training
sys.path.insert(0, str(ROOT / "recipes"))  # results_table, ablate
sys.path.insert(0, str(ROOT / "recipes" / "fsdd"))

import ablate  # noqa: E402
import make_list  # noqa: E402
import plot_training  # noqa: E402
import results_table  # noqa: E402

ASR = [sys.executable, "-m", "asr"]
# The recipes call `asr` from PATH: the one installed beside this interpreter.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
           PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
SR = 16000
WORDS = {"low": 300.0, "high": 1200.0, "noise": None}

# The GPU config shrunk to run on CPU for one epoch in seconds; everything else (BPE,
# speed perturbation without the feature cache, layer norm, bucketing, early stopping)
# stays as conf/librispeech100.yaml sets it.
CPU_TINY = [
    "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=1",
    "trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.threads=1",
    "model.hidden=16", "model.num_layers=1", "model.conv_channels=4",
    "data.num_workers=0", "data.bpe_vocab_size=12",
]


def _word_audio(word: str, rng: np.random.Generator) -> np.ndarray:
    n = int(0.35 * SR)
    if WORDS[word] is None:
        return 0.3 * rng.standard_normal(n)
    return 0.5 * np.sin(2 * np.pi * WORDS[word] * np.arange(n) / SR)


def make_librispeech(root: Path) -> Path:
    """LibriSpeech layout: <subset>/<speaker>/<chapter>/<spk>-<ch>-<utt>.flac + .trans.txt.

    train-clean-100 and dev-clean, 2 speakers x 1 chapter x 3 utterances each; each
    utterance "says" three words as tones or noise separated by silence.
    """
    rng = np.random.default_rng(0)
    names = list(WORDS)
    for subset, speakers in (("train-clean-100", (19, 26)), ("dev-clean", (84, 174))):
        for spk in speakers:
            chapter = spk * 10 + 1
            folder = root / "LibriSpeech" / subset / str(spk) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for u in range(3):
                words = [names[(spk + u + k) % 3] for k in range(3)]
                gap = np.zeros(int(0.15 * SR))
                wave = np.concatenate([gap] + [np.concatenate([_word_audio(w, rng), gap]) for w in words])
                uid = f"{spk}-{chapter}-{u:04d}"
                sf.write(folder / f"{uid}.flac", wave.astype("float32"), SR, format="FLAC")
                lines.append(f"{uid} {' '.join(words).upper()}\n")
            (folder / f"{spk}-{chapter}.trans.txt").write_text("".join(lines))
    return root / "LibriSpeech"


def run(cmd: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# ------------------------------------------------------------------------------ LibriSpeech


@pytest.mark.slow
def test_librispeech_gpu_config_runs_end_to_end_on_cpu(tmp_path):
    src = make_librispeech(tmp_path / "corpus")
    data, exp = tmp_path / "data", tmp_path / "exp"
    ok(run([*ASR, "prepare", "librispeech", "--src", str(src), "--out", str(data), "--workers", "1"]))
    summary = json.loads((data / "summary.json").read_text())
    assert summary["splits"]["train"]["utterances"] == 6 and summary["splits"]["dev"]["utterances"] == 6
    assert summary["rejected"]["total"] == 0

    ok(run([*ASR, "train", str(ROOT / "conf" / "librispeech100.yaml"), f"exp_dir={exp}",
            f"data.train_manifest={data / 'train.jsonl'}", f"data.dev_manifest={data / 'dev.jsonl'}",
            *CPU_TINY], cwd=tmp_path))
    train = json.loads((exp / "train_summary.json").read_text())
    assert train["epochs"] == 1 and train["steps"] >= 1
    assert train["skipped_utterances"] == {"train": 0, "dev": 0}
    assert json.loads((exp / "tokenizer.json").read_text())["type"] == "bpe"
    cfg = (exp / "config.yaml").read_text()
    assert "speed_perturb:\n  - 0.9\n  - 1.0\n  - 1.1" in cfg and "layer_norm: true" in cfg

    # The BPE model package decodes and scores like any other.
    ok(run([*ASR, "export", str(exp), "--out", str(exp / "model.asr")]))
    ok(run([*ASR, "evaluate", str(exp / "model.asr"), str(data / "dev.jsonl"), "--out", str(exp / "eval")]))
    ev = json.loads((exp / "eval" / "summary.json").read_text())
    assert ev["num_utterances"] == 6
    # The headline WER is the corpus's (all errors over all reference words), and it matches
    # the per-utterance records it was computed from.
    rows = [json.loads(line) for line in (exp / "eval" / "utterances.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["ref_words"] > 0 for r in rows)
    assert ev["wer"] == pytest.approx(sum(r["errors"] for r in rows) / sum(r["ref_words"] for r in rows))


@pytest.mark.slow
def test_librispeech_recipe_stages_skip_done_work_and_force_redoes_it(tmp_path):
    src = make_librispeech(tmp_path / "corpus")
    data, exp = tmp_path / "data", tmp_path / "exp"
    script = str(ROOT / "recipes" / "librispeech" / "run.sh")
    # Relative --data/--exp/--manifests are taken from the caller's directory.
    args = ["--data", "corpus", "--manifests", "data", "--exp", "exp", "--nj", "1", "--stop-stage", "2",
            "--subsets", "train-clean-100,dev-clean",
            "--average", "2", *CPU_TINY, "trainer.save_top_k=2"]
    first = ok(run(["bash", script, *args], cwd=tmp_path))
    assert "== stage 0" in first.stdout and "== stage 2" in first.stdout and "== stage 3" not in first.stdout
    assert (data / "train.jsonl").exists() and (exp / "train_summary.json").exists()
    assert (exp / "model.asr").exists()
    stamp = (exp / "model.asr").stat().st_mtime_ns

    again = ok(run(["bash", script, *args], cwd=tmp_path))
    assert again.stdout.count("skip:") == 3, again.stdout  # prepare, train, export
    assert (exp / "model.asr").stat().st_mtime_ns == stamp

    redo = ok(run(["bash", script, *args[:-1], "--stage", "2", "--force"], cwd=tmp_path))
    assert "skip:" not in redo.stdout and "== stage 1" not in redo.stdout
    assert (exp / "model.asr").stat().st_mtime_ns != stamp
    assert src.exists()


@pytest.mark.parametrize("bad, message", [
    (["--stage", "x"], "non-negative integer"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_recipe_rejects_bad_arguments(bad, message):
    proc = run(["bash", str(ROOT / "recipes" / "yesno" / "run.sh"), *bad])
    assert proc.returncode == 2 and message in proc.stderr


def test_phone_head_check_reports_an_unreadable_package_in_one_line(tmp_path):
    (tmp_path / "model.asr").write_bytes(b"garbage")
    proc = run(["bash", "-c", f'source "{ROOT}/recipes/common.sh"; EXP="{tmp_path}"; _has_phone_head'])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith(f"error: {tmp_path / 'model.asr'}: not an asr model package")


def test_summary_field_reads_a_summary_and_names_a_missing_key(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"wer": 0.25, "cer": 0.125}))
    proc = run(["bash", "-c", f'source "{ROOT}/recipes/common.sh"; summary_field "{tmp_path}" wer cer; '
                f'summary_field "{tmp_path}/summary.json" cer'])
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["0.25 0.125", "0.125"]
    proc = run(["bash", "-c", f'source "{ROOT}/recipes/common.sh"; summary_field "{tmp_path}" wer nope'])
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path / 'summary.json'}: no 'nope'"


def test_recipe_scripts_parse_and_lint():
    # The recipes and the experiment benches beside them (levers.sh, score_peer.sh, sweep.sh).
    scripts = [ROOT / "recipes" / "common.sh", *sorted(ROOT.glob("recipes/*/*.sh"))]
    assert len(scripts) >= 7
    for s in scripts:
        ok(run(["bash", "-n", str(s)]))
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (bash -n passed)")
    ok(run(["shellcheck", "-x", *map(str, scripts)], cwd=ROOT))


# --------------------------------------------------------------------------- table writers


def _summary(wer: float, cer: float, n: int = 10, **decoding) -> dict:
    return {"wer": wer, "cer": cer, "cer_no_space": 0.8 * cer, "wer_ci": [wer / 2, wer * 2],
            "num_utterances": n, "rtf": 0.01,
            "decoding": {"device": "cpu", "threads": 1, **decoding}}


def test_results_table_rows_columns_and_commands(tmp_path):
    for system, split, s in [("greedy", "dev", _summary(0.1, 0.05)), ("greedy", "test", _summary(0.2, 0.1)),
                             ("beam-lm", "test", _summary(0.015, 0.01, beam_size=50, lm_weight=0.5))]:
        d = tmp_path / "eval" / system / split
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(s))
        (d / "command.txt").write_text(f"asr evaluate m.asr {split}.jsonl --decoder {system}\n")
    (tmp_path / "train_summary.json").write_text(json.dumps(
        {"parameters": 1_190_000, "epochs": 3, "steps": 30, "wall_seconds": 12.5, "best_dev_wer": 0.1}))
    assert results_table.main([str(tmp_path), "--title", "demo", "--out", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| decoder | dev WER % (95% CI) | dev CER % | dev CER % no spaces | "
                              "test WER % (95% CI) | test CER % | test CER % no spaces | RTF")
    assert rows[1] == "| greedy | 10.00 (5.0–20.0) | 5.00 | 4.00 | 20.00 (10.0–40.0) | 10.00 | 8.00 | 0.0100 |"
    assert rows[2] == "| beam + 3-gram LM | – | – | – | 1.50 (0.8–3.0) | 1.00 | 0.80 | 0.0100 |"
    assert "asr evaluate m.asr test.jsonl --decoder beam-lm" in text and "lm_weight=0.5" in text
    assert "1.19 M parameters, 3 epochs / 30 steps in 12.5 s" in text


def test_results_table_reports_unreadable_summaries(tmp_path, capsys):
    assert results_table.main([str(tmp_path)]) == 1
    d = tmp_path / "eval" / "greedy" / "dev"
    d.mkdir(parents=True)
    (d / "summary.json").write_text("{not json")
    assert results_table.main([str(tmp_path)]) == 1
    assert f"{d / 'summary.json'}: cannot read evaluation summary" in capsys.readouterr().err


FAKE_ASR = """
import json, sys
from pathlib import Path
args = sys.argv[2:]
exp = Path(next(a.split("=", 1)[1] for a in args if a.startswith("exp_dir=")))
if "model.cell=rnn" in args:
    sys.exit(3)
exp.mkdir(parents=True, exist_ok=True)
layers = next((int(a.split("=")[1]) for a in args if a.startswith("model.num_layers=")), 2)
(exp / "config.yaml").write_text(f"model:\\n  cell: lstm\\n  num_layers: {layers}\\n  bidirectional: true\\n"
                                 "  spec_augment_enabled: true\\n")
(exp / "train_summary.json").write_text(json.dumps({"parameters": 1000 * layers, "epochs": 2,
    "wall_seconds": 1.0, "best_dev_wer": 0.1 / layers, "best_checkpoint": str(exp / "epoch001-wer0.1.ckpt")}))
csv = exp / "csv" / "version_0"
csv.mkdir(parents=True)
(csv / "metrics.csv").write_text("epoch,step,val_cer,val_wer\\n0,5,0.5,0.9\\n1,10,0.04,0.1\\n")
"""


def test_ablate_same_budget_table_and_failures(tmp_path, capsys):
    fake = tmp_path / "fake_asr.py"
    fake.write_text(FAKE_ASR)
    out = tmp_path / "abl"
    argv = [str(ROOT / "conf" / "fsdd.yaml"), "trainer.max_epochs=2", "--out-dir", str(out),
            "--variants", "num_layers=1,num_layers=3,cell=rnn", "--asr", f"{sys.executable} {fake}"]
    assert ablate.main(argv) == 1  # rnn "fails"
    table = (out / "ablation.md").read_text()
    assert "| num_layers=1 | lstm | 1 | yes | on | 0.00 | 2 | 10.00 | 4.00 | 1 |" in table
    assert "| num_layers=3 | lstm | 3 | yes | on | 0.00 | 2 | 3.33 | 4.00 | 1 |" in table
    assert "| cell=rnn | failed: asr train exited 3" in table
    assert "`trainer.max_epochs=2` for every variant" in table
    # Done variants are not retrained.
    assert ablate.main(argv) == 1
    assert "num_layers=1/train_summary.json exists; not retrained" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # num_layers=2 is the base, not a variant of it
        ablate.main([str(ROOT / "conf" / "fsdd.yaml"), "--out-dir", str(out), "--variants", "num_layers=2"])
    with pytest.raises(SystemExit):
        ablate.main([str(ROOT / "conf" / "fsdd.yaml"), "--out-dir", str(out), "model.hiden=3"])


def test_ablate_variants_change_one_factor_of_the_base():
    names = [v.name for v in ablate.one_factor_variants(
        {"cell": "lstm", "num_layers": 2, "bidirectional": True, "spec_augment_enabled": False})]
    assert names == ["base", "cell=rnn", "cell=gru", "num_layers=1", "num_layers=3",
                     "bidirectional=false", "spec_augment_enabled=true"]


# ------------------------------------------------------------------------------ FSDD list


def test_fsdd_list_keeps_publisher_test_and_moves_indices_5_to_9_to_dev(tmp_path):
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for name in ["3_theo_0", "3_theo_4", "3_theo_5", "3_theo_9", "3_theo_10", "7_nicolas_49", "bad"]:
        sf.write(rec / f"{name}.wav", np.zeros(800, dtype="float32"), 8000)
    out = tmp_path / "list.csv"
    assert make_list.main([str(tmp_path / "fsdd"), str(out)]) == 0
    rows = {r["id"]: r for r in csv.DictReader(out.open())}
    assert {k: r["split"] for k, r in rows.items()} == {
        "3_theo_0": "test", "3_theo_4": "test", "3_theo_5": "dev", "3_theo_9": "dev",
        "3_theo_10": "train", "7_nicolas_49": "train", "bad": "train"}
    assert rows["3_theo_5"]["text"] == "three" and rows["3_theo_5"]["speaker"] == "theo"
    assert rows["bad"]["text"] == ""  # left for the preparer to reject and report
    assert make_list.main([str(tmp_path / "nowhere"), str(out)]) == 1


# ------------------------------------------------------------------------------ real speech


@pytest.mark.slow
@pytest.mark.data
def test_yesno_prepare_train_export_evaluate_reaches_wer_5_percent(tmp_path, shared_data):
    src = shared_data / "yesno"
    if not src.is_dir():
        pytest.skip(f"yesno corpus not available: {src} does not exist")
    data, exp = tmp_path / "data", tmp_path / "exp"
    ok(run([*ASR, "prepare", "yesno", "--src", str(src), "--out", str(data)]))
    # One thread: CPU training is then bit-for-bit repeatable, so the threshold cannot flake.
    ok(run([*ASR, "train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={exp}",
            f"data.train_manifest={data / 'train.jsonl'}", f"data.dev_manifest={data / 'dev.jsonl'}",
            "trainer.threads=1", "trainer.progress_bar=false"], cwd=tmp_path))
    ok(run([*ASR, "export", str(exp), "--average", "3", "--out", str(exp / "model.asr")]))
    ok(run([*ASR, "evaluate", str(exp / "model.asr"), str(data / "test.jsonl"), "--out", str(exp / "eval")]))
    summary = json.loads((exp / "eval" / "summary.json").read_text())
    assert summary["num_utterances"] == 30
    assert summary["wer"] <= 0.05, f"test WER {summary['wer']:.3f}"


def test_plot_training_reads_lightning_csv_logs(tmp_path):
    exp = tmp_path / "exp"
    old, new = exp / "csv" / "version_0", exp / "csv" / "version_10"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    (old / "metrics.csv").write_text("epoch,step,train/loss\n0,1,99\n")
    # As CSVLogger writes it: step rows with train/loss, an epoch-end row with the dev metrics.
    (new / "metrics.csv").write_text(
        "epoch,lr-AdamW,step,train/loss,val/loss,val_cer,val_wer\n"
        ",0.001,0,,,,\n"
        "0,,9,10.0,,,\n0,,19,6.0,,,\n0,,19,,7.5,0.5,0.9\n"
        "1,,29,4.0,,,\n1,,39,,5.0,0.25,0.5\n"
    )
    assert plot_training.metrics_file(exp) == new / "metrics.csv"  # newest version, numerically
    curves = plot_training.epoch_curves(new / "metrics.csv")
    assert curves["train/loss"] == {0: 8.0, 1: 4.0}
    assert curves["val_wer"] == {0: 0.9, 1: 0.5} and curves["val/loss"] == {0: 7.5, 1: 5.0}
    out = tmp_path / "curves.png"
    assert plot_training.main([str(exp), "--out", str(out), "--labels", "run"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_training.main([str(tmp_path / "nothing"), "--out", str(out)]) == 1

