"""Multi-node training: rank detection before the Trainer exists, fair DDP sharding by the
bucketing sampler, and a real 2-node launch with torchrun on localhost (gloo, CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from asr.data.sampler import BucketBatchSampler
from asr.log import RANK_VARIABLES
from asr.log import is_rank_zero as _is_rank_zero

ROOT = Path(__file__).resolve().parents[1]


# --- which process is rank zero -------------------------------------------------------------


@pytest.mark.parametrize(("env", "lead"), [
    ({}, True),  # a plain single-process run
    ({"LOCAL_RANK": "0", "NODE_RANK": "0"}, True),  # Lightning's launcher, the first process
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # Lightning's launcher, a second device
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # Lightning's launcher on node 1
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),  # torchrun, node 0
    # torchrun, node 1 with one process per node: LOCAL_RANK is 0 and NODE_RANK unset; the
    # old LOCAL_RANK/NODE_RANK check took this process for rank zero too.
    ({"RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),
    ({"RANK": "9", "LOCAL_RANK": "1", "GROUP_RANK": "1"}, False),
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}, True),  # srun, task 0
    ({"SLURM_PROCID": "8", "SLURM_LOCALID": "0", "SLURM_NODEID": "1"}, False),  # srun, node 1
    # sbatch with one task, Lightning spawning the other devices: SLURM_PROCID stays 0
    ({"SLURM_PROCID": "0", "LOCAL_RANK": "3", "NODE_RANK": "0"}, False),
])
def test_rank_zero_under_each_launcher(monkeypatch, env, lead):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert _is_rank_zero() is lead


# --- the sampler shares every epoch fairly between ranks ------------------------------------


def _check_shards(durations, world, epoch, pad, **kw):
    samplers = [BucketBatchSampler(durations, 20.0, max_batch_size=8, num_replicas=world, rank=r,
                                   pad_to_replicas=pad, **kw) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    shards = [list(s) for s in samplers]
    everything = samplers[0].all_batches()
    n_all = len(everything)
    counts = [len(s) for s in shards]
    assert counts == [len(s) for s in samplers]  # len() agrees with iteration
    seen = [i for shard in shards for b in shard for i in b]
    assert set(seen) == set(range(len(durations)))  # nothing left out
    if not pad and n_all < world:
        # Dev with fewer batches than ranks: the batches are split so that every rank scores
        # one of its own; only a set with fewer utterances than ranks repeats any.
        assert counts == [1] * world
        if len(durations) >= world:
            assert sorted(seen) == list(range(len(durations)))
    elif pad:
        # Every rank runs the same number of steps; the padding repeats the epoch's first
        # batches (cyclically when there are fewer batches than ranks), fewer than `world`
        # of them, and nothing else is repeated.
        assert len(set(counts)) == 1, counts
        padding = counts[0] * world - n_all
        assert 0 <= padding < world
        repeated = [i for b in (everything * world)[n_all : n_all + padding] for i in b]
        assert sorted(seen) == sorted(list(range(len(durations))) + repeated)
    else:
        # Without padding (dev): each utterance exactly once, ranks differ by one batch at most.
        assert sorted(seen) == list(range(len(durations)))
        assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("world", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("bucketing", [True, False])
def test_sampler_shards_are_disjoint_equal_and_complete(world, pad, bucketing):
    rng = torch.Generator().manual_seed(world)
    for n in (1, 5, 37):
        durations = (0.5 + 9.5 * torch.rand(n, generator=rng)).tolist()
        for epoch in range(3):
            for shuffle in (True, False):
                _check_shards(durations, world, epoch, pad, shuffle=shuffle, bucketing=bucketing,
                              num_buckets=5, seed=epoch + 17)


def test_ranks_agree_on_the_epoch_and_reshuffle_together():
    durations = [1.0 + (i % 13) for i in range(60)]
    a, b = (BucketBatchSampler(durations, 20.0, num_replicas=2, rank=r, seed=3) for r in range(2))
    first = [list(a), list(b)]
    a.set_epoch(1)
    b.set_epoch(1)
    second = [list(a), list(b)]
    assert first != second
    for shards in (first, second):
        ids = [i for s in shards for batch in s for i in batch]
        assert sorted(ids) == list(range(60))  # 60 utterances split into an even batch count


# --- a real two-node launch -------------------------------------------------------------------

# Runs `asr train` exactly as `torchrun -m asr train` would, after wrapping the sampler so that
# every rank writes the batches it drew (rank, world, epoch, indices) for the test to check.
_RECORDING_LAUNCHER = textwrap.dedent("""
    import json, os, sys
    from asr.data import sampler

    original = sampler.BucketBatchSampler.__iter__

    def recording_iter(self):
        batches = list(original(self))
        with open(os.path.join(os.environ["BATCH_LOG_DIR"], f"rank{os.environ['RANK']}.jsonl"), "a") as f:
            f.write(json.dumps({"rank": self.rank, "world": self.num_replicas, "epoch": self.epoch,
                                "train": self.pad_to_replicas, "n": len(self.durations),
                                "batches": batches}) + "\\n")
        return iter(batches)

    sampler.BucketBatchSampler.__iter__ = recording_iter
    if "CMVN_SAMPLE" in os.environ:  # read fewer files for CMVN, as a corpus > 3000 utterances does
        from asr.train import datamodule
        datamodule.CMVN_MAX_UTTERANCES = int(os.environ["CMVN_SAMPLE"])
    from asr.cli import main
    sys.exit(main())
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_train(tmp_path: Path, shared_data: Path, *overrides: str, edit_train: Callable[[Path], None] | None = None,
                    cmvn_sample: int | None = None) -> tuple[Path, dict[int, str]]:
    """`asr train` of conf/yesno.yaml (tiny model) on 2 nodes x 1 process with torchrun on
    localhost; every rank logs its batches to tmp_path/rank{R}.jsonl. ``edit_train(path)``
    may change the prepared train manifest first; ``cmvn_sample`` caps the files read for CMVN
    statistics (datamodule.CMVN_MAX_UTTERANCES). Returns (exp dir, {node: output})."""
    src = shared_data / "yesno"
    if not src.is_dir():
        pytest.skip(f"yesno corpus not available: {src} does not exist")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", GLOO_SOCKET_IFNAME="lo",
               BATCH_LOG_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    for name in RANK_VARIABLES + ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    if cmvn_sample is not None:
        env["CMVN_SAMPLE"] = str(cmvn_sample)
    data = tmp_path / "yesno"
    subprocess.run([sys.executable, "-m", "asr", "prepare", "yesno", "--src", str(src), "--out", str(data)],
                   check=True, capture_output=True, env=env, timeout=120)
    if edit_train is not None:
        edit_train(data / "train.jsonl")
    launcher = tmp_path / "launch.py"
    launcher.write_text(_RECORDING_LAUNCHER)
    exp = tmp_path / "exp"
    port = _free_port()
    procs = []
    for node in (1, 0):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={node}", "--master-addr=127.0.0.1", f"--master-port={port}",
               str(launcher), "train", str(ROOT / "conf" / "yesno.yaml"), f"exp_dir={exp}",
               f"data.train_manifest={data / 'train.jsonl'}", f"data.dev_manifest={data / 'dev.jsonl'}",
               "model.hidden=16", "model.num_layers=1", "trainer.num_nodes=2", "trainer.devices=1",
               "trainer.strategy=ddp", "trainer.accelerator=cpu", "trainer.threads=1", "trainer.max_epochs=2",
               "trainer.progress_bar=false", *overrides]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env, cwd=tmp_path))
    outputs = {}
    for node, proc in zip((1, 0), procs):
        try:
            outputs[node] = proc.communicate(timeout=300)[0]
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for node, proc in zip((1, 0), procs):
        assert proc.returncode == 0, f"node {node}:\n{outputs[node][-4000:]}"
    return exp, outputs


@pytest.mark.slow
@pytest.mark.data
def test_two_nodes_with_torchrun(tmp_path, shared_data):
    exp, outputs = _torchrun_train(tmp_path, shared_data)
    assert "Traceback" not in outputs[0] + outputs[1]

    # Rank 0 alone wrote the run's files, once: one summary, one run id everywhere.
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["epochs"] == 2
    assert "best dev WER" in outputs[0] and "best dev WER" not in outputs[1]
    # two epochs' top-k checkpoints and last.ckpt, no temp file of a second writer
    ckpts = sorted(p.name for p in (exp / "checkpoints").iterdir())
    assert len(ckpts) == 3 and "last.ckpt" in ckpts and all(c.endswith(".ckpt") for c in ckpts), ckpts
    run_id = json.loads((exp / "run.json").read_text())["run_id"]
    last = torch.load(exp / "checkpoints" / "last.ckpt", weights_only=True)
    assert summary["run_id"] == run_id == last["hyper_parameters"]["run_id"]
    assert last["epoch"] == 1

    # Each rank drew a disjoint, equal share of every training epoch (25 utterances, at most
    # 4 a batch -> 7 batches, padded to 8 -> 4 steps per rank).
    logs = {r: [json.loads(line) for line in (tmp_path / f"rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}
    for r, entries in logs.items():
        assert {(e["rank"], e["world"]) for e in entries} == {(r, 2)}
    for epoch in (0, 1):
        shards = [[e for e in logs[r] if e["train"] and e["epoch"] == epoch] for r in (0, 1)]
        assert [len(s) for s in shards] == [1, 1]
        batches = [s[0]["batches"] for s in shards]
        assert len(batches[0]) == len(batches[1]) == summary["steps"] // 2 == 4
        # batch k of the epoch went to rank k % 2; the 8th repeats the 1st (padding)
        assert batches[1][-1] == batches[0][0]
        ids = sorted(i for batch in batches[0] + batches[1][:-1] for i in batch)
        assert ids == list(range(shards[0][0]["n"]))
    assert summary["steps"] == 8


@pytest.mark.slow
@pytest.mark.data
def test_two_nodes_count_every_ranks_skipped_utterances(tmp_path, shared_data):
    # Without the feature cache, an unreadable file outside the CMVN sample (one file here; 3000
    # of a large corpus) is found by the rank that draws it; rank zero writes the reports, so
    # the ranks must pool what they skipped.
    bad_ids = [f"bad{k}" for k in range(6)]

    def add_unreadable(manifest: Path) -> None:
        first = json.loads(manifest.read_text().splitlines()[0])
        lines = manifest.read_text().splitlines()
        for k, utt_id in enumerate(bad_ids):
            audio = manifest.parent / f"{utt_id}.wav"
            audio.write_bytes(b"not a wav file")
            lines.append(json.dumps({**first, "id": utt_id, "audio": str(audio), "duration": first["duration"] + k / 100}))
        manifest.write_text("\n".join(lines) + "\n")

    exp, outputs = _torchrun_train(tmp_path, shared_data, "data.cache_features=false", "trainer.max_epochs=1",
                                   edit_train=add_unreadable, cmvn_sample=1)
    assert "Traceback" not in outputs[0] + outputs[1]
    # the test means something only if rank 1 drew some of them (the seeded sampler decides)
    entries = [json.loads(line) for line in (tmp_path / "rank1.jsonl").read_text().splitlines()]
    n_good = entries[0]["n"] - len(bad_ids)
    drawn_by_1 = {i for e in entries if e["train"] for batch in e["batches"] for i in batch if i >= n_good}
    assert drawn_by_1, "rank 1 drew none of the unreadable files: change the seed or the count"
    skipped = [json.loads(line) for line in (exp / "skipped.jsonl").read_text().splitlines()]
    assert sorted(s["id"] for s in skipped if s["split"] == "train") == bad_ids
    assert json.loads((exp / "train_summary.json").read_text())["skipped_utterances"]["train"] == len(bad_ids)
