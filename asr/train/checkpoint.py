"""Lightning checkpoints written by ``asr train``: safe reading, ranking, averaging.

Lightning checkpoints are pickles; they are read only with ``torch.load(weights_only=True)``,
which refuses arbitrary classes. Lightning 2.x writes ``hyper_parameters`` as a plain dict
(we save a dict of JSON-like values) and its callback and optimiser states as tensors,
numbers and strings, all of which the weights-only unpickler accepts; a checkpoint that
carries anything else (e.g. an OmegaConf container) is refused with the name of the
offending class rather than loaded unsafely. :mod:`asr.train.export` turns them into packages.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.config import ConfigError, to_dict
from asr.package import PackageConfig

# What torch's weights-only unpickler names when it refuses a pickle (torch 2.6 - 2.14 wording):
# "Unsupported global: GLOBAL argparse.Namespace was not an allowed global by default",
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked",
# "Trying to call reduce for unrecognized function <f>", "... but got <class 'x.Y'>".
_UNSAFE_GLOBAL = (
    re.compile(r"\bGLOBAL (\S+?)\.? (?:was not an allowed global|whose module)"),
    re.compile(r"unrecognized function (.+?)(?: which belongs to|$)", re.MULTILINE),
    re.compile(r"(?:create new object|Can only build).* but got <class '([^']+)'>"),
)
_CKPT_NAME = re.compile(r"wer(\d+(?:\.\d+)?)")  # epoch012-wer0.1234.ckpt -> 0.1234
_CKPT_EPOCH = re.compile(r"^epoch(\d+)")  # epoch012-wer0.1234.ckpt, tail/epoch012.ckpt -> 12
TAIL_DIR = "tail"  # checkpoints/tail/: the last trainer.keep_last epochs, unranked


class CheckpointError(ValueError):
    """A Lightning checkpoint (or experiment directory) that cannot be exported."""


def _unsafe_global(message: str) -> str | None:
    """The class/function a weights-only ``torch.load`` refused, from its error message."""
    for pattern in _UNSAFE_GLOBAL:
        m = pattern.search(message)
        if m:
            return m.group(1)
    return None


@dataclass(frozen=True)
class LightningCheckpoint:
    path: Path
    config: PackageConfig  # the features and model sections (all a package needs)
    config_dict: dict[str, Any]
    tokenizer: dict[str, Any]
    state_dict: dict[str, Tensor]  # AcousticModel keys (the "model." prefix removed)
    epoch: int | None
    global_step: int | None
    run_id: str | None = None  # hyper_parameters["run_id"]: one id per `asr train` run (None before it existed)
    # The auxiliary phone CTC head (model.phone_ctc_weight > 0), which packages never hold:
    # hyper_parameters["phones"] (its output i + 1 is phones[i]; 0 is the blank) and the
    # "phone_head." weights (prefix removed). Empty when the run trained none.
    phones: tuple[str, ...] = ()
    phone_head: dict[str, Tensor] = field(default_factory=dict)
    # hyper_parameters["pronunciations"] (training word -> phones, what the phone targets
    # were built from; runs before it was stored have none: see asr.train.export).
    pronunciations: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # The raw training config (hyper_parameters["config"]): where data.lexicon and the
    # training manifest were, for checkpoints without stored pronunciations.
    train_config: dict[str, Any] = field(default_factory=dict)


def read_lightning_checkpoint(path: str | os.PathLike) -> LightningCheckpoint:
    """Read the network weights, config and tokenizer from a ``CTCModule`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_global(str(e))
        if unsafe:
            # We do not fall back to full unpickling: it can run arbitrary code.
            raise CheckpointError(
                f"{path}: refusing to load: it pickles {unsafe}, which "
                "torch.load(weights_only=True) does not allow (checkpoints written by `asr train` "
                "hold only tensors and plain values)"
            ) from e
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable pickle data)") from e
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        # A truncated or crafted file can make the (weights-only) unpickler fail in many ways.
        why = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({why})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or "config" not in hp or "tokenizer" not in hp:
        raise CheckpointError(
            f"{path}: checkpoint has no hyper_parameters with 'config' and 'tokenizer' "
            "(was it written by `asr train`?)"
        )
    try:
        # Only the inference sections: a training key renamed since does not matter.
        config = PackageConfig.from_stored(hp["config"], version=1)
    except (ConfigError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: bad config in hyper_parameters: {e}") from e
    if not isinstance(hp["tokenizer"], dict):
        raise CheckpointError(f"{path}: bad tokenizer in hyper_parameters (not a mapping)")
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()
             if isinstance(k, str) and k.startswith("model.")}
    if not state:
        raise CheckpointError(f"{path}: state_dict has no 'model.*' weights")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:3]}")
    run_id = hp.get("run_id")
    phones = hp.get("phones") or ()
    if not isinstance(phones, (list, tuple)) or not all(isinstance(p, str) for p in phones):
        raise CheckpointError(f"{path}: bad phones in hyper_parameters (not a list of strings)")
    head = {k[len("phone_head."):]: v for k, v in ckpt["state_dict"].items()
            if isinstance(k, str) and k.startswith("phone_head.") and isinstance(v, Tensor)}
    raw_prons = hp.get("pronunciations") or {}
    if not isinstance(raw_prons, dict) or not all(
            isinstance(w, str) and isinstance(ps, (list, tuple)) and all(isinstance(p, str) for p in ps)
            for w, ps in raw_prons.items()):
        raise CheckpointError(f"{path}: bad pronunciations in hyper_parameters (not {{word: [phones]}})")
    return LightningCheckpoint(
        path=path,
        config=config,
        config_dict=to_dict(config),
        tokenizer=dict(hp["tokenizer"]),
        state_dict=state,
        epoch=ckpt.get("epoch"),
        global_step=ckpt.get("global_step"),
        run_id=str(run_id) if run_id is not None else None,
        phones=tuple(phones),
        phone_head=head,
        pronunciations={w: tuple(ps) for w, ps in raw_prons.items()},
        train_config=dict(hp["config"]) if isinstance(hp["config"], dict) else {},
    )


def best_checkpoints(exp_dir: str | os.PathLike, n: int = 1) -> list[Path]:
    """The ``n`` checkpoints of ``exp_dir/checkpoints`` with the lowest dev WER.

    The WER is read from the file name ``epochNNN-wer0.1234.ckpt`` (``asr train``'s
    ModelCheckpoint pattern); ``last.ckpt`` is used only when no such file exists.
    """
    exp_dir = Path(exp_dir)
    ckpt_dir = exp_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{exp_dir}: no checkpoints/ directory (is it an experiment directory?)")
    scored = []
    for p in ckpt_dir.glob("*.ckpt"):
        m = _CKPT_NAME.search(p.stem)
        if p.name != "last.ckpt" and m:
            scored.append((float(m.group(1).rstrip(".")), p.name, p))
    if not scored:
        last = ckpt_dir / "last.ckpt"
        if last.is_file():
            return [last]
        raise CheckpointError(f"{ckpt_dir}: no *.ckpt files")
    scored.sort()
    return [p for _, _, p in scored[: max(1, n)]]


def latest_checkpoints(exp_dir: str | os.PathLike, n: int) -> list[Path]:
    """The checkpoints of the ``n`` latest epochs of ``exp_dir``, oldest first.

    Epoch checkpoints are the ranked ``checkpoints/epochNNN-wer*.ckpt`` files and the
    ``checkpoints/tail/epochNNN.ckpt`` files that ``trainer.keep_last`` keeps (one file per
    epoch; the ranked one when both exist). Averaging them is the averaging half of
    stochastic weight averaging, done after training. Fewer than ``n`` epochs on disk is an
    error that says how many there are and how to keep more, not a quiet shorter average.
    """
    exp_dir = Path(exp_dir)
    ckpt_dir = exp_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{exp_dir}: no checkpoints/ directory (is it an experiment directory?)")
    by_epoch: dict[int, Path] = {}
    for p in sorted((ckpt_dir / TAIL_DIR).glob("*.ckpt")) + sorted(ckpt_dir.glob("*.ckpt")):
        m = _CKPT_EPOCH.match(p.stem)
        if m:
            by_epoch[int(m.group(1))] = p  # ranked files come second and win
    if len(by_epoch) < n:
        raise CheckpointError(
            f"{exp_dir}: --average-last {n} needs the checkpoints of {n} epochs, {ckpt_dir} has "
            f"{len(by_epoch)} ({', '.join(f'epoch {e}' for e in sorted(by_epoch)) or 'none'}); train with "
            f"trainer.keep_last={n} to keep the last {n}")
    return [by_epoch[e] for e in sorted(by_epoch)[-n:]]


def resolve_checkpoints(paths: Sequence[str | os.PathLike], n_best: int = 1) -> list[Path]:
    """Expand experiment directories into their ``n_best`` best checkpoints; files pass through."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(best_checkpoints(p, n_best) if p.is_dir() else [p])
    return out


def average_state_dicts(states: Sequence[dict[str, Tensor]], names: Sequence[str] = ()) -> dict[str, Tensor]:
    """Element-wise mean of state dicts with identical keys and shapes.

    Floating-point tensors are averaged in float64 and cast back; integer buffers (counters)
    are taken from the first state dict.
    """
    if not states:
        raise CheckpointError("nothing to average")
    names = list(names) or [f"#{i}" for i in range(len(states))]
    ref = states[0]
    for s, name in zip(states[1:], names[1:]):
        if s.keys() != ref.keys():
            diff = sorted(set(s) ^ set(ref))[:5]
            raise CheckpointError(f"{name}: parameters differ from {names[0]} ({diff})")
        for k, v in s.items():
            if v.shape != ref[k].shape:
                raise CheckpointError(
                    f"{name}: {k} has shape {tuple(v.shape)}, {names[0]} has {tuple(ref[k].shape)}"
                )
    out = {}
    for k, v in ref.items():
        if v.is_floating_point():
            acc = torch.zeros(v.shape, dtype=torch.float64)
            for s in states:
                acc += s[k].to(torch.float64)
            out[k] = (acc / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def check_compatible(ckpts: Sequence[LightningCheckpoint]) -> None:
    """Refuse to average checkpoints of different training runs or model configurations.

    Checkpoints written by `asr train` carry a run id; two that differ come from different
    runs (a leftover ``epoch000-wer1.0000-v1.ckpt`` of an earlier run in the same directory,
    say) and are never averaged, even when their configs agree. Older checkpoints without a
    run id fall back to comparing the model/feature configs and tokenizers.
    """
    first = ckpts[0]
    for c in ckpts[1:]:
        if c.run_id is not None and first.run_id is not None and c.run_id != first.run_id:
            raise CheckpointError(
                f"cannot average {c.path} with {first.path}: they come from different training runs "
                f"(run_id {c.run_id} vs {first.run_id}); average checkpoints of one run (retrain into a "
                "fresh exp_dir, or name the checkpoints to use)"
            )
        for section in ("model", "features"):
            if c.config_dict[section] != first.config_dict[section]:
                diff = {k: (first.config_dict[section][k], v) for k, v in c.config_dict[section].items()
                        if first.config_dict[section].get(k) != v}
                raise CheckpointError(
                    f"cannot average {c.path} with {first.path}: their {section} configs differ "
                    f"({', '.join(f'{section}.{k}: {a!r} vs {b!r}' for k, (a, b) in diff.items())})"
                )
        if c.tokenizer != first.tokenizer:
            raise CheckpointError(f"cannot average {c.path} with {first.path}: their tokenizers differ")
