"""Inference on several devices (`--devices N`): worker processes each take a share of the
items balanced by duration, and the results are those of one device, in input order."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.cli import main
from asr.config import ExperimentConfig, to_dict
from asr.data.manifest import Utterance, write_manifest
from asr.decode.decoding import DecodingOptions
from asr.infer.parallel import (
    _starting_workers,
    split_by_duration,
    transcribe_segments_parallel,
    worker_devices,
)
from asr.infer.segments import Segment
from asr.model import AcousticModel, ModelConfig
from asr.text import CharTokenizer
from asr.train.export import export

SR = 16000
TOKENIZER = CharTokenizer("abcdefgh")


# --- planning: who does what ----------------------------------------------------------------


@pytest.mark.parametrize("parts", [1, 2, 3, 8])
def test_shares_cover_every_item_once_and_balance_the_audio(parts):
    rng = np.random.default_rng(parts)
    durations = rng.uniform(0.5, 20.0, size=101).tolist()
    shares = split_by_duration(durations, parts)
    assert len(shares) == parts
    assert sorted(i for s in shares for i in s) == list(range(101))
    assert all(s == sorted(s) for s in shares)
    loads = [sum(durations[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(durations)
    assert split_by_duration(durations, parts) == shares  # deterministic


def test_more_workers_than_items_leaves_some_idle():
    assert split_by_duration([3.0, 1.0], 4) == [[0], [1], [], []]
    assert split_by_duration([], 2) == [[], []]


def test_a_sigterm_while_workers_start_is_held_until_all_have_started():
    """A spawn cut short by the SIGTERM handler leaves its child reading start-up data from a
    closed pipe (an EOFError traceback on stderr): the signal waits for the start loop."""
    seen: list[object] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with _starting_workers():
            os.kill(os.getpid(), signal.SIGTERM)
            seen.append("started")
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # children inherit it
        seen.append("after")
    finally:
        handler = signal.signal(signal.SIGTERM, previous)
    assert seen == ["started", signal.SIGTERM, "after"]
    assert handler is not signal.SIG_IGN and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def test_worker_devices():
    assert worker_devices("cpu", 1) == ["cpu"]
    assert worker_devices("cpu", 3) == ["cpu"] * 3
    assert worker_devices("cuda:1", 1) == ["cuda:1"]
    with pytest.raises(ValueError, match="--devices must be >= 1"):
        worker_devices("cpu", 0)
    with pytest.raises(ValueError, match="give --device cuda, not cuda:1"):
        worker_devices("cuda:1", 2)
    if torch.cuda.device_count() < 64:
        with pytest.raises(ValueError, match="CUDA device"):
            worker_devices("cuda", 64)


# --- same results on one device and on two ----------------------------------------------------


@pytest.fixture(scope="module")
def package_path(tmp_path_factory) -> Path:
    """A tiny real package with random weights (sharpened so that it emits some text)."""
    tmp = tmp_path_factory.mktemp("pkg")
    cfg = ExperimentConfig(model=ModelConfig(hidden=16, num_layers=1, conv_channels=4, dropout=0.0))
    torch.manual_seed(0)
    model = AcousticModel(cfg.model, cfg.features.n_mels, TOKENIZER.vocab_size)
    model.cmvn.mean.fill_(-8.0)
    model.cmvn.istd.fill_(0.3)
    with torch.no_grad():
        model.output.weight.mul_(5)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": to_dict(cfg), "tokenizer": TOKENIZER.to_dict()}}
    torch.save(ckpt, tmp / "a.ckpt")
    return export([tmp / "a.ckpt"], tmp / "model.asr")


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * (200 + 37 * seed) * t)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Files of mixed lengths, one long enough to be read in windows, one unreadable."""
    root = tmp_path_factory.mktemp("corpus")
    audio = root / "audio"
    audio.mkdir()
    utts = []
    for i, seconds in enumerate([0.6, 2.5, 1.1, 34.0, 0.9, 1.7, 3.2, 0.7, 1.3]):
        path = audio / f"f{i}.wav"
        sf.write(path, _noise(seconds, i), SR)
        utts.append(Utterance(f"u{i}", str(path), seconds, "abc de", "s1", SR))
    bad = audio / "zz_bad.wav"
    bad.write_text("not audio")
    utts.insert(4, Utterance("u_bad", str(bad), 1.0, "abc", "s1", SR))
    utts.append(Utterance("u_seg", str(audio / "f3.wav"), 2.0, "abc", "s1", SR, offset=5.0))  # a segment
    write_manifest(root / "test.jsonl", utts)
    return root


@pytest.mark.slow
def test_evaluate_on_two_cpu_workers_matches_one(package_path, corpus, tmp_path, capsys):
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"eval{n}"
        code = main(["evaluate", str(package_path), str(corpus / "test.jsonl"), "--out", str(out),
                     "--devices", str(n), "--resamples", "10"])
        err = capsys.readouterr().err
        # the unreadable file is scored as empty and reported; the run says it failed
        assert code == 1, err
        assert "u_bad" in err and "zz_bad.wav" in err and "Traceback" not in err
        outs[n] = out
    s1, s2 = (json.loads((outs[n] / "summary.json").read_text()) for n in (1, 2))
    assert s1["wer"] == s2["wer"] and s1["cer"] == s2["cer"] and s1["words"] == s2["words"]
    assert s2["decoding"]["devices"] == 2 and s2["decoding"]["failed"] == 1
    assert set(s2["decoding"]["failed_items"]) == {"u_bad"}
    r1, r2 = ((outs[n] / "utterances.jsonl").read_text().splitlines() for n in (1, 2))
    assert r1 == r2  # same hypotheses, in manifest order
    hyps = [json.loads(line)["hypothesis"] for line in r1]
    assert sum(1 for h in hyps if h) >= 5  # the random model does emit text
    assert not (outs[2] / ".lock").exists()


@pytest.mark.slow
def test_transcribe_on_two_cpu_workers_matches_one(package_path, corpus, tmp_path, capsys):
    outputs = {}
    for n in (1, 2):
        out = tmp_path / f"tr{n}"
        code = main(["transcribe", str(package_path), str(corpus / "audio"), "--out", str(out), "--format", "json",
                     "--chunk-seconds", "10", "--overlap-seconds", "1", "--devices", str(n), "--threads", "2"])
        captured = capsys.readouterr()
        assert code == 1, captured.err
        assert "zz_bad.wav" in captured.err and "Traceback" not in captured.err
        outputs[n] = (captured.out, {p.name: p.read_text() for p in sorted(out.glob("*.json"))})
    assert outputs[1] == outputs[2]  # same transcripts on stdout (in file order) and the same files
    assert len(outputs[2][1]) == 9  # every readable file, the 34 s one in windows
    words = json.loads(outputs[2][1]["f3.json"])
    assert words  # the long file was transcribed


@pytest.mark.slow
def test_a_failing_worker_stops_the_run_with_its_traceback(tmp_path):
    with pytest.raises(RuntimeError, match="inference worker [01] \\(cpu\\) failed:(.|\\n)*Traceback"):
        transcribe_segments_parallel(tmp_path / "missing.asr", [Segment(tmp_path / "a.wav")] * 2, ["cpu", "cpu"],
                                     DecodingOptions("greedy"), durations=[1.0, 1.0])


# --- refused settings: one error line, exit 2 -------------------------------------------------


def test_transcribe_refuses_bad_devices(package_path, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, _noise(0.5, 1), SR)
    assert main(["transcribe", str(package_path), str(wav), "--devices", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: --devices must be >= 1" in err and "Traceback" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["MODEL", "--devices", "0"], "--devices must be >= 1"),
    (["--hyps", "HYPS", "--devices", "2"], "(--devices) do not apply with --hyps"),
])
def test_evaluate_refuses_bad_devices(package_path, corpus, tmp_path, capsys, args, message):
    hyps = tmp_path / "hyps.txt"
    hyps.write_text("u0 abc\n")
    args = [str(package_path) if a == "MODEL" else str(hyps) if a == "HYPS" else a for a in args]
    with pytest.raises(SystemExit) as e:
        main(["evaluate", *args, str(corpus / "test.jsonl"), "--out", str(tmp_path / "ev")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
