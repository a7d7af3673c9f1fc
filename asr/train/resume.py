"""A run's experiment directory: refusing to mix runs, the run id, and finding and safely
loading the checkpoint to resume from."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from asr.config import ConfigError, ExperimentConfig, drop_retired_keys, to_dict
from asr.data.dataset import Skipped
from asr.files import atomic_write_text, remove_stale_temp_files
from asr.train.checkpoint import TAIL_DIR

log = logging.getLogger(__name__)

DAMAGED_DIR = "damaged"  # checkpoints/damaged/: what --resume could not read, set aside for inspection
# Files of a run in its exp dir that --overwrite deletes (nothing else there is touched).
RUN_FILES = ("checkpoints", "tb", "csv", "train_summary.json", "skipped.jsonl", "run.json",
             "tokenizer.json", "config.yaml")


class CheckpointLoadError(Exception):
    """A checkpoint to resume from cannot be read, or is refused; ``str(e)`` names the file."""


@contextlib.contextmanager
def _env_without(name: str) -> Iterator[None]:
    saved = os.environ.pop(name, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[name] = saved


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``: tensors and plain values only.

    torch 2.14 lets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turn full unpickling back on only
    when ``weights_only`` is not passed; we pass it, and also hide the variable while loading,
    so that no environment makes resuming run code pickled into a planted checkpoint.
    Raises :class:`CheckpointLoadError` with a one-line reason naming the file.
    """
    path = Path(path)
    try:
        with _env_without("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it pickles {m.group(1)}, which" if m else "it holds objects that"
        raise CheckpointLoadError(f"{path}: refusing to load: {what} weights-only loading does not allow "
                                  "(checkpoints written by `asr train` hold only tensors and plain values)") from None
    except Exception as e:  # noqa: BLE001 - any failure to read a file is a bad file here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointLoadError(f"{path}: unreadable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointLoadError(f"{path}: not a checkpoint written by `asr train` (no state_dict)")
    return ckpt


def find_resume_checkpoint(ckpt_dir: Path, set_aside: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """last.ckpt, or when it cannot be read the newest readable checkpoint in ``ckpt_dir``.

    ``None`` when there is no checkpoint at all. A fallback is announced in one warning; with
    ``set_aside`` (the process that owns the exp dir: rank zero) the unreadable checkpoints
    skipped are moved to ``ckpt_dir/damaged/``, where `asr export` and averaging never pick
    them up and a later --resume does not try them again. When no checkpoint is readable,
    :class:`CheckpointLoadError` names the first (last.ckpt) and nothing is moved.
    """
    last = ckpt_dir / "last.ckpt"
    # Newest first, tail/ included: with trainer.keep_last its newest file is as recent as last.ckpt.
    others = sorted((p for p in ckpt_dir.glob("**/*.ckpt")
                     if p != last and p.relative_to(ckpt_dir).parts[0] != DAMAGED_DIR),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    candidates = ([last] if last.is_file() else []) + others
    problems: list[tuple[Path, CheckpointLoadError]] = []
    for path in candidates:
        try:
            ckpt = load_checkpoint_file(path)
        except CheckpointLoadError as e:
            problems.append((path, e))
            continue
        if problems:
            more = f" ({len(problems) - 1} other unreadable checkpoint(s) skipped)" if len(problems) > 1 else ""
            moved = f"; {_set_aside([p for p, _ in problems], ckpt_dir / DAMAGED_DIR)}" if set_aside else ""
            log.warning("%s; resuming from %s instead%s%s", problems[0][1], path, more, moved)
        return path, ckpt
    if problems:
        more = f" (and {len(problems) - 1} other checkpoint(s) in {ckpt_dir} unreadable)" if len(problems) > 1 else ""
        raise CheckpointLoadError(f"{problems[0][1]}{more}")
    return None


def _set_aside(paths: list[Path], damaged: Path) -> str:
    """Move ``paths`` into ``damaged`` (never over an earlier file there); says what was done."""
    moved: list[Path] = []
    try:
        damaged.mkdir(exist_ok=True)
        for p in paths:
            dest, n = damaged / p.name, 1
            while dest.exists():
                n += 1
                dest = damaged / f"{p.stem}-{n}{p.suffix}"
            p.rename(dest)
            moved.append(dest)
    except OSError as e:
        return f"could not move the unreadable checkpoint(s) to {damaged} ({e.strerror or e})"
    return f"moved the unreadable checkpoint(s) to {damaged}: {', '.join(d.name for d in moved)}"


# Keys a resumed run may change: how long it runs, how often it validates and logs, how loud
# it is, where and on how many threads/processes it runs, which checkpoints it keeps. Every
# other key shapes the network, the optimiser or scheduler state, or the data the restored
# state was trained on: a change there either fails to load (a model shape) or would be
# silently overridden by the restored state (optim.lr lives in the optimiser's state).
RESUMABLE_CHANGES = frozenset({
    "exp_dir",
    "trainer.max_epochs", "trainer.max_steps", "trainer.check_val_every_n_epoch", "trainer.log_every_n_steps",
    "trainer.save_top_k", "trainer.keep_last", "trainer.early_stopping_patience", "trainer.progress_bar", "trainer.threads",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
    "data.num_workers",
})


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    return {k: v for key, value in data.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}


def check_resume_config(saved: Any, cfg: ExperimentConfig, ckpt: Path) -> None:
    """Refuse to resume with a config that differs from the checkpoint's in a key outside
    :data:`RESUMABLE_CHANGES`, in one :class:`ConfigError` line naming each such key with its
    old and new value. Keys the stored config lacks (added to the toolkit since) are not
    compared; checkpoints without a stored config (not written by `asr train`) pass."""
    if not isinstance(saved, dict):
        return
    old, new = _flatten(drop_retired_keys(saved)), _flatten(to_dict(cfg))
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k] and k not in RESUMABLE_CHANGES)
    if changed:
        diffs = ", ".join(f"{k} ({old[k]!r} -> {new[k]!r})" for k in changed)
        raise ConfigError(f"--resume: the config differs from the run's checkpoint {ckpt} in {diffs}; these cannot "
                          "change in a resumed run (undo them, or start a new run in another exp_dir=...); "
                          f"these may: {', '.join(sorted(RESUMABLE_CHANGES))}")


def prepare_exp_dir(exp: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix a new run with an earlier run's checkpoints (export would pick the old
    ones), unless resuming it or told to delete it; remove temp files of killed writers."""
    ckpt_dir = exp / "checkpoints"
    old = sorted(ckpt_dir.glob("**/*.ckpt")) if ckpt_dir.is_dir() else []  # with tail/ (trainer.keep_last)
    if overwrite:
        for name in RUN_FILES:
            p = exp / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        if old:
            log.info("--overwrite: deleted the earlier run in %s (%d checkpoint(s), logs, summaries)", exp, len(old))
    elif old and not resume:
        raise ConfigError(f"{exp}: already holds checkpoints of an earlier run ({len(old)} in {ckpt_dir}); "
                          f"continue it with --resume, train into another exp_dir=..., or pass --overwrite "
                          f"to delete them")
    exp.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temp_files(exp, ckpt_dir, ckpt_dir / TAIL_DIR)
    if removed:
        log.info("removed %d temp file(s) left by an interrupted write: %s",
                 len(removed), ", ".join(p.name for p in removed))


def run_id(exp: Path, resumed: dict[str, Any] | None, lead: bool = True) -> str:
    """The run's id: kept across --resume (from the checkpoint, else run.json), new otherwise.
    Ranks > 0 (``lead=False``) take the one rank 0 wrote to run.json before starting them."""
    run_file = exp / "run.json"
    rid = None
    if resumed is not None or not lead:
        rid = ((resumed or {}).get("hyper_parameters") or {}).get("run_id")
        if rid is None and run_file.is_file():
            with contextlib.suppress(ValueError, OSError, AttributeError):
                rid = json.loads(run_file.read_text()).get("run_id")
    rid = str(rid) if rid else uuid.uuid4().hex
    if lead:
        atomic_write_text(run_file, json.dumps({"run_id": rid}) + "\n")
    return rid


def write_skipped(path: Path, skipped: dict[str, Skipped]) -> None:
    """skipped.jsonl: one line per utterance left out of training, with its split and reason."""
    atomic_write_text(path, "".join(json.dumps({"id": utt_id, "split": split, "reason": reason}) + "\n"
                                    for split, sk in skipped.items() for utt_id, reason in sk.items))
