"""recipes/an4: the closed-vocabulary LM, the seeds table, and the recipe end to end on AN4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asr.decode.lm_files import lm_vocabulary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes" / "an4"))

import closed_lm  # noqa: E402
import seeds_table  # noqa: E402

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
           PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def test_closed_lm_is_a_uniform_unigram_over_the_dictionary_words(tmp_path):
    dic = tmp_path / "an4.dic"
    dic.write_text("A AH\nA(2) EY\nNOVEMBER N OW V EH M B ER\nTHIRTEEN TH ER T IY N\nYES Y EH S\n")
    out = tmp_path / "closed.arpa"
    assert closed_lm.main([str(dic), "--out", str(out)]) == 0
    assert sorted(lm_vocabulary(out)) == ["a", "november", "thirteen", "yes"]
    lines = out.read_text().splitlines()
    assert lines[:3] == ["\\data\\", "ngram 1=7", "ngram 2=1"] and lines[-1] == "\\end\\"
    probs = {ln.split("\t")[1]: float(ln.split("\t")[0]) for ln in lines if "\t" in ln}
    assert probs["yes"] == probs["november"] == probs["</s>"] == pytest.approx(-0.699, abs=1e-3)
    assert probs["<s> </s>"] == probs["</s>"]  # the one bigram KenLM needs changes no score
    kenlm = pytest.importorskip("kenlm")
    model = kenlm.Model(str(out))  # loads (KenLM refuses unigram-only models)
    assert model.score("yes november", bos=True, eos=True) == pytest.approx(3 * -0.699, abs=1e-3)


def test_closed_lm_unreadable_dictionary_is_one_line(tmp_path, capsys):
    assert closed_lm.main([str(tmp_path / "nope.dic"), "--out", str(tmp_path / "x.arpa")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'nope.dic'}")


def _summary(wer: float) -> dict:
    return {"wer": wer, "wer_ci": [wer - 0.01, wer + 0.01], "cer": wer / 2,
            "cer_no_space": wer / 3, "words": {"reference": 773}}


def test_seeds_table_lists_each_seed_then_mean_and_sd(tmp_path):
    exps = []
    for seed, wer in ((1, 0.05), (2, 0.06), (3, 0.07)):
        exp = tmp_path / f"seed{seed}"
        (exp / "eval" / "greedy" / "test").mkdir(parents=True)
        (exp / "eval" / "greedy" / "test" / "summary.json").write_text(json.dumps(_summary(wer)))
        (exp / "train_summary.json").write_text(json.dumps(
            {"epochs": 40, "wall_seconds": 1500.0, "cpu_seconds": 1490.0, "best_dev_wer": 0.1}))
        exps.append(exp)
    text = seeds_table.render(exps, "test")
    assert "| greedy, no LM | seed2 | 6.00 (5.0–7.0) | 3.00 | 2.00 |" in text
    assert "| **greedy, no LM** | **mean ± sd of 3** | **6.00 ± 1.00** | 3.00 ± 0.50 |" in text
    assert "Reference words in test: 773." in text
    assert "| seed3 | 40 | 1500.0 | 1490.0 | 10.00 |" in text
    (exps[2] / "eval" / "greedy" / "test" / "summary.json").unlink()
    with pytest.raises(SystemExit, match="seed3.*missing"):
        seeds_table.render(exps, "test")


@pytest.mark.slow
@pytest.mark.data
def test_an4_recipe_end_to_end_learns(tmp_path, shared_data):
    """One command: prepare -> train (a few epochs) -> export -> LMs -> evaluate -> table; then
    stages 8 and 9 (the character LM row, the word LM with the number and date words)."""
    src = shared_data / "an4"
    if not src.is_dir():
        pytest.skip(f"AN4 not available: {src} does not exist")
    data, exp = tmp_path / "data", tmp_path / "exp"
    cmd = ["bash", str(ROOT / "recipes" / "an4" / "run.sh"), "--data", str(src),
           "--manifests", str(data), "--exp", str(exp), "--stop-stage", "4",
           "trainer.max_epochs=6", "trainer.threads=2", "trainer.progress_bar=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    test = json.loads((exp / "eval" / "greedy" / "test" / "summary.json").read_text())
    assert test["num_utterances"] == 130 and test["words"]["reference"] == 773
    # Six epochs of 0.64 h: far from the recipe's result, but only a model that learned
    # gets under 60% (an untrained one emits nothing: 100%).
    assert test["wer"] < 0.6, f"test WER {test['wer']:.3f}"
    assert test["cer_no_space"] < test["wer"]
    # Stage 8: the character 6-gram, built over the model's tokens and searched lexicon-free.
    proc = subprocess.run([*cmd[:cmd.index("--stop-stage")], "--stage", "8", "--stop-stage", "9"],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tuned = json.loads((exp / "lm" / "char6.bin.tune.json").read_text())
    assert tuned["mode"] == "lexicon-free"
    chars = json.loads((exp / "eval" / "beam-char-lm" / "test" / "summary.json").read_text())
    assert chars["num_utterances"] == 130 and chars["wer"] < 0.6
    # Stage 9: the word 3-gram knows the number and date words the transcripts lack.
    vocab = set((exp / "lm" / "3gram-numbers.bin.vocab").read_text().split())
    assert {"eighteen", "thirteen", "november", "sixth"} <= vocab
    numbers = json.loads((exp / "eval" / "beam-lm-numbers" / "test" / "summary.json").read_text())
    assert numbers["num_utterances"] == 130 and numbers["wer"] < 0.6
