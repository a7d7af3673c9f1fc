"""The model package: one safetensors file that holds everything ``transcribe`` needs.

```
MODEL (safetensors)
  tensors   the AcousticModel state dict (fp32), CMVN statistics included as buffers
  metadata  {"format": "asr-model-package", "format_version": "1",
             "config": JSON of the resolved ExperimentConfig, "tokenizer": JSON of Tokenizer.to_dict(),
             "toolkit_version": "0.1.0", "source_checkpoints": JSON list, "averaged": "3",
             "quantize": "none" | "int8"}
```

Loading never unpickles anything: safetensors is a JSON header plus raw tensor bytes.
Lightning checkpoints (pickles) are read only by ``asr export``, with
``torch.load(weights_only=True)``, which refuses arbitrary classes. Lightning 2.x writes
``hyper_parameters`` as a plain dict (we save a dict of JSON-like values) and its callback
and optimiser states as tensors, numbers and strings, all of which the weights-only
unpickler accepts; a checkpoint that carries anything else (e.g. an OmegaConf container)
is refused with the name of the offending class rather than loaded unsafely.

``asr export CKPT... --out MODEL [--average [N]] [--int8] [--torchscript] [--onnx]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from asr import __version__
from asr.config import ConfigError, ExperimentConfig, drop_retired_keys, from_dict, to_dict
from asr.features import LogMel
from asr.files import atomic_write
from asr.model import AcousticModel
from asr.text import Tokenizer, TokenizerError

FORMAT = "asr-model-package"  # value of the "format" metadata key
FORMAT_VERSION = 1  # bump when the layout changes; readers refuse newer versions
QUANTIZE_MODES = ("none", "int8")
# Modules replaced by dynamically quantised (int8 weights, fp32 activations) versions.
# RecurrentLayer holds plain nn.LSTM/GRU modules per direction, so they are all covered.
_INT8_MODULES = {nn.LSTM, nn.GRU, nn.Linear}
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


class PackageError(ValueError):
    """A file that is not a usable model package (the message names the file)."""


class CheckpointError(ValueError):
    """A Lightning checkpoint (or experiment directory) that cannot be exported."""


# Bounds on what a package's or checkpoint's config may ask to build, checked before anything
# is allocated: a 1 MB file whose config says hidden=100000 must be refused, not turned into a
# 160 GB model. Far beyond any model this toolkit trains; tighten nothing the recipes use.
_LIMITS: dict[str, tuple[int, int]] = {
    "model.num_layers": (1, 64),
    "model.hidden": (1, 16384),
    "model.proj": (0, 16384),
    "model.conv_channels": (1, 4096),
    "model.attention_heads": (1, 256),
    "features.n_mels": (1, 1024),
    "features.sample_rate": (1000, 384000),
    "features.n_fft": (16, 65536),
    "vocabulary size": (2, 1_000_000),
}


def _unsafe_global(message: str) -> str | None:
    """The class/function a weights-only ``torch.load`` refused, from its error message."""
    for pattern in _UNSAFE_GLOBAL:
        m = pattern.search(message)
        if m:
            return m.group(1)
    return None


def check_model_config(cfg: ExperimentConfig, vocab_size: int) -> None:
    """Refuse (ValueError, one line) a config that is invalid or asks for an absurd model.

    Cheap: nothing is allocated. Run it before :func:`expected_shapes` or building a model.
    """
    m, f = cfg.model, cfg.features
    values = {
        "model.num_layers": m.num_layers, "model.hidden": m.hidden, "model.proj": m.proj,
        "model.conv_channels": m.conv_channels, "model.attention_heads": m.attention_heads,
        "features.n_mels": f.n_mels, "features.sample_rate": f.sample_rate, "features.n_fft": f.n_fft,
        "vocabulary size": vocab_size,
    }
    for key, value in values.items():
        lo, hi = _LIMITS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"{key} = {value!r} is outside [{lo}, {hi}]")
    m.validate()
    if not (isinstance(f.win_ms, int | float) and isinstance(f.hop_ms, int | float)
            and f.hop_length >= 1 and 1 <= f.win_length <= f.n_fft):
        raise ValueError(f"features: window {f.win_ms} ms / hop {f.hop_ms} ms do not fit n_fft={f.n_fft} "
                         f"at {f.sample_rate} Hz")
    f_max = f.sample_rate / 2 if f.f_max is None else f.f_max
    if not 0 <= f.f_min < f_max <= f.sample_rate / 2:
        raise ValueError(f"features: need 0 <= f_min < f_max <= sample_rate / 2 (f_min={f.f_min}, "
                         f"f_max={f.f_max}, sample_rate={f.sample_rate})")


def expected_shapes(cfg: ExperimentConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes an AcousticModel of this config has, built on the meta device
    (no memory for weights). Call :func:`check_model_config` first."""
    with torch.device("meta"):
        model = AcousticModel(cfg.model, cfg.features.n_mels, vocab_size)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _weights_mismatch(cfg: ExperimentConfig, vocab_size: int, stored: dict[str, tuple[int, ...]]) -> str | None:
    """Why the stored tensor shapes do not fit the config (None when they do, exactly)."""
    want = expected_shapes(cfg, vocab_size)
    missing, extra = sorted(want.keys() - stored.keys()), sorted(stored.keys() - want.keys())
    if missing or extra:
        return (f"the config implies {len(want)} tensors; missing {missing[:3]}"
                f"{' ...' if len(missing) > 3 else ''}, unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}")
    for k, shape in want.items():
        if tuple(stored[k]) != shape:
            n_want = sum(_numel(s) for s in want.values())
            n_have = sum(_numel(s) for s in stored.values())
            return (f"{k} is stored as {tuple(stored[k])} but the config implies {shape} "
                    f"({n_want:,} parameters implied, {n_have:,} stored)")
    return None


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@dataclass
class ModelPackage:
    """A loaded model package, ready for inference.

    ``featurizer`` maps waveforms (N, S) at ``config.features.sample_rate`` to log-mel
    features (N, T, n_mels); ``model`` maps those to log-probs (N, T', V) with
    T' = ceil(T / model.subsampling).
    """

    model: AcousticModel  # eval mode, on ``device`` (int8-quantised modules when info["quantize"] == "int8")
    tokenizer: Tokenizer  # owns the vocabulary and blank id
    config: ExperimentConfig  # the resolved training config
    featurizer: LogMel  # waveform -> log-mel, on ``device``
    info: dict[str, Any] = field(default_factory=dict)  # path, sha256, versions, provenance
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def sample_rate(self) -> int:
        """Hz the featurizer expects."""
        return self.config.features.sample_rate

    @property
    def frame_shift(self) -> float:
        """Seconds between consecutive output frames (log-prob rows)."""
        return self.config.features.frame_shift * self.model.subsampling


# --------------------------------------------------------------------------------------------
# Lightning checkpoints


@dataclass(frozen=True)
class _Checkpoint:
    path: Path
    config: ExperimentConfig
    config_dict: dict[str, Any]
    tokenizer: dict[str, Any]
    state_dict: dict[str, Tensor]  # AcousticModel keys (the "model." prefix removed)
    epoch: int | None
    global_step: int | None
    run_id: str | None = None  # hyper_parameters["run_id"]: one id per `asr train` run (None before it existed)


def read_lightning_checkpoint(path: str | os.PathLike) -> _Checkpoint:
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
        config = from_dict(ExperimentConfig, drop_retired_keys(hp["config"]))
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
    return _Checkpoint(
        path=path,
        config=config,
        config_dict=to_dict(config),
        tokenizer=dict(hp["tokenizer"]),
        state_dict=state,
        epoch=ckpt.get("epoch"),
        global_step=ckpt.get("global_step"),
        run_id=str(run_id) if run_id is not None else None,
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


def _check_compatible(ckpts: Sequence[_Checkpoint]) -> None:
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


# --------------------------------------------------------------------------------------------
# writing and reading packages


def export(
    ckpts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    average: bool | int = False,
    int8: bool = False,
    torchscript: bool = False,
    onnx: bool = False,
    note: Callable[[str], None] | None = None,
) -> Path:
    """Write a model package from Lightning checkpoints (or experiment directories).

    Args:
        ckpts: checkpoint files and/or experiment directories. A directory contributes its
            best checkpoint by dev WER; with ``average=True`` all its ranked checkpoints
            (not last.ckpt); with ``average=N`` its N best.
        out: the package file to write (parent directories are created).
        average: False: exactly one checkpoint is expected. True: average all of them.
            N (int >= 1): average the N best of each directory (and all given files).
        int8: mark the package for dynamic int8 quantisation (applied at load time, CPU).
        torchscript: also write ``out.with_suffix(".ts")`` (traced, dynamic batch/time).
        onnx: also write ``out.with_suffix(".onnx")`` (inputs feats (N, T, n_mels) float32,
            feat_lens (N,) int64; outputs log_probs (N, T', V), out_lens (N,)).
        note: called with one-line remarks the caller should show (e.g. fewer checkpoints
            than ``average=N`` asked for).

    Returns:
        The package path.
    """
    if average is False:
        n_best = 1
    elif average is True:
        n_best = sys.maxsize  # every ranked checkpoint of a directory (save_top_k of them)
    else:
        n_best = int(average)
        if n_best < 1:
            raise CheckpointError(f"--average must be >= 1 (is {average})")
    paths: list[Path] = []
    for p in map(Path, ckpts):
        found = best_checkpoints(p, n_best) if p.is_dir() else [p]
        if p.is_dir() and average is not True and average is not False and len(found) < n_best and note:
            note(f"--average {n_best}: {p} has only {len(found)} ranked checkpoint(s); averaging those "
                 f"{len(found)}")
        paths.extend(found)
    if not paths:
        raise CheckpointError("no checkpoints given")
    if len(paths) > 1 and average is False:
        raise CheckpointError(
            f"{len(paths)} checkpoints given ({', '.join(map(str, paths))}); pass --average to "
            "average them, or give one"
        )
    loaded = [read_lightning_checkpoint(p) for p in paths]
    _check_compatible(loaded)
    first = loaded[0]
    if len(loaded) > 1:
        state = average_state_dicts([c.state_dict for c in loaded], [str(c.path) for c in loaded])
    else:
        state = first.state_dict
    try:
        tokenizer = Tokenizer.from_dict(first.tokenizer)
    except (TokenizerError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{first.path}: bad tokenizer in hyper_parameters: {e}") from e
    # Config bounds and stored shapes first: nothing is allocated for a config the weights
    # do not fit (hidden=100000 in a 1 MB checkpoint must not become a 160 GB model).
    try:
        check_model_config(first.config, tokenizer.vocab_size)
    except ValueError as e:
        raise CheckpointError(f"{first.path}: bad config in hyper_parameters: {e}") from e
    why = _weights_mismatch(first.config, tokenizer.vocab_size, {k: tuple(v.shape) for k, v in state.items()})
    if why:
        raise CheckpointError(f"{first.path}: weights do not match its config: {why}")

    # Build the network once so a state dict that does not fit the config fails here, at
    # export time, not when someone tries to use the package.
    model = AcousticModel(first.config.model, first.config.features.n_mels, tokenizer.vocab_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{first.path}: weights do not match its config: {e}") from e
    model.eval()

    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(first.config_dict),
        "tokenizer": json.dumps(first.tokenizer),
        "toolkit_version": __version__,
        "source_checkpoints": json.dumps(
            [{"path": str(c.path.resolve()), "epoch": c.epoch, "global_step": c.global_step} for c in loaded]
        ),
        "averaged": str(len(loaded)),
        "quantize": "int8" if int8 else "none",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save as save_safetensors

    # safetensors refuses views and shared storage: give it one contiguous copy per tensor.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    blob = save_safetensors(tensors, metadata=metadata)
    atomic_write(out, lambda f: f.write(blob))  # never a half-written package under the final name
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # safetensors creates files 0600; packages are meant to be shared

    if torchscript:
        export_torchscript(model, out.with_suffix(".ts"), first.config.features.n_mels)
    if onnx:
        export_onnx(model, out.with_suffix(".onnx"), first.config.features.n_mels)
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _not_a_package(path: Path, why: str) -> PackageError:
    return PackageError(f"{path}: not an asr model package ({why}); create one with `asr export CKPT --out MODEL`")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The package's metadata (string dict), validated; tensors are not read."""
    path = Path(path)
    if not path.exists():
        raise PackageError(f"{path}: no such model package")
    if path.is_dir():
        raise PackageError(f"{path}: is a directory; a model package is a single file")
    with open(path, "rb") as f:
        head = f.read(8)
    size = path.stat().st_size
    if head[:2] == b"PK":
        raise _not_a_package(path, "it is a zip archive: a Lightning/PyTorch checkpoint or TorchScript "
                                   "module, not a package")
    if len(head) < 8:
        raise _not_a_package(path, f"only {size} bytes long")
    # safetensors starts with the little-endian u64 length of its JSON header.
    if int.from_bytes(head, "little") > size - 8:
        raise _not_a_package(path, "not a safetensors file: no valid header length at the start")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise _not_a_package(path, f"not a safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise _not_a_package(path, f"safetensors file without format={FORMAT!r} metadata")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError as e:
        raise PackageError(f"{path}: bad format_version {meta.get('format_version')!r}") from e
    if version > FORMAT_VERSION:
        raise PackageError(
            f"{path}: package format version {version} is newer than this toolkit reads "
            f"({FORMAT_VERSION}); upgrade asr (package written by asr {meta.get('toolkit_version', '?')})"
        )
    missing = [k for k in ("config", "tokenizer") if k not in meta]
    if missing:
        raise PackageError(f"{path}: package metadata lacks {', '.join(missing)}")
    if meta.get("quantize", "none") not in QUANTIZE_MODES:
        raise PackageError(f"{path}: unknown quantize mode {meta.get('quantize')!r} (known: {QUANTIZE_MODES})")
    return meta


def _parse_metadata(path: Path, meta: dict[str, str]) -> tuple[ExperimentConfig, Tokenizer, dict[str, Any]]:
    """Config, tokenizer and provenance from package metadata, checked for sane sizes.

    Every way crafted metadata can be wrong (bad JSON, a list where a mapping belongs, an
    unknown cell, n_mels=0, a negative sample rate, a huge hidden size) ends here as one
    PackageError line; nothing has been allocated yet.
    """
    try:
        raw_cfg, raw_tok = json.loads(meta["config"]), json.loads(meta["tokenizer"])
        if not isinstance(raw_cfg, dict):
            raise ValueError(f"config is a JSON {type(raw_cfg).__name__}, not an object")
        cfg = from_dict(ExperimentConfig, drop_retired_keys(raw_cfg))
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # JSONDecodeError, ConfigError
        raise PackageError(f"{path}: bad package metadata: config: {e}") from e
    try:
        tokenizer = Tokenizer.from_dict(raw_tok)
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # TokenizerError
        raise PackageError(f"{path}: bad package metadata: tokenizer: {e}") from e
    try:
        check_model_config(cfg, tokenizer.vocab_size)
    except ValueError as e:
        raise PackageError(f"{path}: bad package metadata: {e}") from e
    try:
        extra = {"source_checkpoints": json.loads(meta.get("source_checkpoints", "[]")),
                 "averaged": int(meta.get("averaged", "1"))}
    except ValueError as e:
        raise PackageError(f"{path}: bad package metadata: source_checkpoints/averaged: {e}") from e
    return cfg, tokenizer, extra


def quantize_int8(model: AcousticModel) -> AcousticModel:
    """Dynamic int8 quantisation of the LSTM/GRU/Linear layers (CPU inference only)."""
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; it is still the shipped,
        # tested eager-mode dynamic quantiser in this torch, and torchao is not a dependency.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return torch.ao.quantization.quantize_dynamic(model, _INT8_MODULES, dtype=torch.qint8)


def load_package(
    path: str | os.PathLike, device: str | torch.device = "cpu", quantize: bool | None = None
) -> ModelPackage:
    """Load a model package written by :func:`export`.

    Args:
        path: the package file.
        device: where the model and featurizer run.
        quantize: None follows the package's "quantize" flag; True/False force int8 or fp32.
            int8 runs on CPU only: on another device the fp32 weights are used (with a warning).

    Raises:
        PackageError: the file is missing or is not a (compatible) model package.
    """
    path = Path(path)
    meta = read_metadata(path)
    cfg, tokenizer, extra = _parse_metadata(path, meta)

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    # The stored shapes (from the header; no tensor data read) must be exactly what the config
    # implies before anything is allocated: the weights then take no more memory than the file.
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise PackageError(f"{path}: unreadable tensors: {e}") from e
    why = _weights_mismatch(cfg, tokenizer.vocab_size, stored)
    if why:
        raise PackageError(f"{path}: weights do not match the package config: {why}")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise PackageError(f"{path}: unreadable tensors: {e}") from e
    model = AcousticModel(cfg.model, cfg.features.n_mels, tokenizer.vocab_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PackageError(f"{path}: weights do not match the package config: {e}") from e
    model.eval()

    device = torch.device(device)
    int8 = meta.get("quantize", "none") == "int8" if quantize is None else quantize
    if int8 and device.type != "cpu":
        warnings.warn(f"{path}: int8 quantisation runs on CPU only; using fp32 weights on {device}", stacklevel=2)
        int8 = False
    if int8:
        model = quantize_int8(model)
    model = model.to(device)
    try:
        featurizer = LogMel(cfg.features).to(device).eval()
    except (ValueError, RuntimeError) as e:  # torchaudio's own checks of the mel settings
        raise PackageError(f"{path}: bad package metadata: features: {e}") from e

    info = {
        "path": str(path.resolve()),
        "sha256": _file_sha256(path),
        "version": meta.get("toolkit_version"),
        "toolkit_version": meta.get("toolkit_version"),
        "format_version": int(meta["format_version"]),
        **extra,
        "quantize": "int8" if int8 else "none",
        "parameters": sum(v.numel() for v in state.values()),
        "vocab_size": tokenizer.vocab_size,
    }
    return ModelPackage(model=model, tokenizer=tokenizer, config=cfg, featurizer=featurizer,
                        info=info, device=device)


# --------------------------------------------------------------------------------------------
# TorchScript / ONNX


def _example_inputs(n_mels: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    # Two different batch sizes and lengths, with padding: the second checks that the
    # exported graph did not bake in the shapes of the first.
    a = (torch.randn(2, 61, n_mels, generator=g), torch.tensor([61, 40]))
    b = (torch.randn(3, 97, n_mels, generator=g), torch.tensor([97, 23, 80]))
    return a, b


def _check_same(name: str, got: Sequence[Any], want: tuple[Tensor, Tensor], out: Path) -> None:
    lp, lens = torch.as_tensor(got[0]), torch.as_tensor(got[1])
    if lp.shape != want[0].shape or not torch.equal(lens.long(), want[1].long()):
        raise CheckpointError(
            f"{out}: {name} export does not generalise to other shapes (got log-probs "
            f"{tuple(lp.shape)}, lengths {lens.tolist()}; expected {tuple(want[0].shape)}, "
            f"{want[1].tolist()}); the model has shape-dependent Python control flow"
        )
    err = (lp - want[0]).abs().max().item()
    if err > 1e-3:
        raise CheckpointError(f"{out}: {name} export differs from the eager model (max |diff| {err:.3g})")


def export_torchscript(model: AcousticModel, out: Path, n_mels: int) -> Path:
    """Write a TorchScript module ``(feats (N, T, F), feat_lens (N,)) -> (log_probs, out_lens)``.

    ``torch.jit.script`` cannot compile AcousticModel (its frozen config dataclasses are
    not TorchScript types), so the module is traced; the trace is then checked on inputs
    of another batch size and length, so a graph with baked-in shapes is never written.
    """
    model = model.eval()
    a, b = _example_inputs(n_mels)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings from nn.LSTM's own shape checks
        try:
            traced = torch.jit.trace(model, a, check_trace=False)
        except Exception as e:
            raise CheckpointError(f"{out}: torch.jit.trace failed: {e}") from e
        _check_same("TorchScript", traced(*b), model(*b), out)
    traced.save(str(out))
    return out


def export_onnx(model: AcousticModel, out: Path, n_mels: int, opset: int = 17) -> Path:
    """Write an ONNX graph with dynamic batch and time axes.

    The TorchScript-based exporter (``dynamo=False``) is used: it handles the
    length-masked bidirectional LSTM in well under a second, while the dynamo exporter
    of this torch version takes minutes on it and its graph failed on a second batch size.
    The result is checked with onnx.checker, and numerically against the eager model on
    another batch size/length when onnxruntime is installed.
    """
    try:
        import onnx
    except ImportError as e:
        raise CheckpointError("--onnx needs the onnx package: pip install 'asr[export]'") from e
    model = model.eval()
    a, b = _example_inputs(n_mels)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, a, str(out), dynamo=False, opset_version=opset,
                input_names=["feats", "feat_lens"], output_names=["log_probs", "out_lens"],
                dynamic_axes={"feats": {0: "batch", 1: "time"}, "feat_lens": {0: "batch"},
                              "log_probs": {0: "batch", 1: "frames"}, "out_lens": {0: "batch"}},
            )
        except Exception as e:
            raise CheckpointError(f"{out}: torch.onnx.export failed: {e}") from e
        try:
            onnx.checker.check_model(str(out))
        except Exception as e:
            raise CheckpointError(f"{out}: the exported ONNX graph is invalid: {e}") from e
        try:
            import onnxruntime as ort
        except ImportError:
            return out  # checked structurally only; nothing in the toolkit needs onnxruntime
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"feats": b[0].numpy(), "feat_lens": b[1].numpy()})
        _check_same("ONNX", got, model(*b), out)
    return out


# --------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = "asr export CKPT_OR_EXP_DIR... --out MODEL [--average [N]] [--int8] [--torchscript] [--onnx]"
    parser.add_argument("checkpoints", nargs="+", type=Path,
                        help="Lightning checkpoints, or experiment directories (their best checkpoint by dev WER)")
    parser.add_argument("--out", required=True, type=Path, help="model package file to write, e.g. model.asr")
    parser.add_argument("--average", nargs="?", type=int, const=0, default=None, metavar="N",
                        help="average the weights of the checkpoints (of an experiment directory: all its "
                             "ranked checkpoints, or with N its N best by dev WER)")
    parser.add_argument("--int8", action="store_true",
                        help="mark the package to quantise LSTM/GRU/Linear to int8 when it is loaded (CPU "
                             "inference); the file still holds fp32 weights, so it is as large as without")
    parser.add_argument("--torchscript", action="store_true", help="also write MODEL.ts (TorchScript)")
    parser.add_argument("--onnx", action="store_true", help="also write MODEL.onnx")


def run(args: argparse.Namespace) -> int:
    if args.average is not None and args.average < 0:
        print("error: --average N needs N >= 1", file=sys.stderr)
        return 2
    average: bool | int = False if args.average is None else (True if args.average == 0 else args.average)
    try:
        out = export(args.checkpoints, args.out, average=average, int8=args.int8,
                     torchscript=args.torchscript, onnx=args.onnx,
                     note=lambda m: print(f"note: {m}", file=sys.stderr))
        pkg = load_package(out)
    except (CheckpointError, PackageError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2  # unusable input (or an unwritable --out)
    info = pkg.info
    srcs = info["source_checkpoints"]
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {info['parameters'] / 1e6:.2f} M parameters, "
          f"vocabulary {info['vocab_size']}, quantize={info['quantize']}, sha256 {info['sha256'][:12]})")
    print(f"from {len(srcs)} checkpoint(s){' (averaged)' if len(srcs) > 1 else ''}: "
          + ", ".join(Path(s["path"]).name for s in srcs))
    for flag, suffix in ((args.torchscript, ".ts"), (args.onnx, ".onnx")):
        if flag:
            print(f"wrote {out.with_suffix(suffix)} (fp32; inputs: log-mel feats (N, T, "
                  f"{pkg.config.features.n_mels}) and lengths)")
    return 0
