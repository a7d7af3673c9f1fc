"""The model package: one safetensors file that holds everything ``transcribe`` needs.

```
MODEL (safetensors)
  tensors   the AcousticModel state dict (fp32), CMVN statistics included as buffers
  metadata  {"format": "asr-model-package", "format_version": "2",
             "config": JSON {"features": {...}, "model": {...}},
             "tokenizer": JSON of Tokenizer.to_dict(),
             "toolkit_version": "0.1.0", "source_checkpoints": JSON list, "averaged": "3",
             "quantize": "none" | "int8",
             "phones": JSON list, "pronunciations": JSON {word: "P P P"}}   (version 3 only)
```

A package exported from a run with a phone CTC head (``model.phone_ctc_weight > 0``) also
holds that head (tensors ``phone_head.weight`` / ``phone_head.bias``), its phones and the
pronunciations of the training words, for :mod:`asr.decode.phones`' decoders; it is written as
format version 3, which older toolkits refuse with a clear "newer" message. A package
without a phone head stays version 2.

Only what inference needs is stored (features, model, tokenizer): training settings
(data/optim/trainer) do not travel with a model, so renaming a training key can never make
a package unloadable. Version 1 packages stored the whole ExperimentConfig; they still load
(their training sections are ignored).

Loading never unpickles anything: safetensors is a JSON header plus raw tensor bytes. A
crafted file is refused in one :class:`PackageError` line, and the config's sizes and the
stored tensor shapes are checked before anything is allocated.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asr import __version__
from asr.config import ExperimentConfig, drop_retired_keys, from_dict, to_dict
from asr.features import FeatureConfig, LogMel
from asr.files import atomic_write, sha256_digest
from asr.model import AcousticModel, ModelConfig
from asr.text import Tokenizer

log = logging.getLogger(__name__)

FORMAT = "asr-model-package"  # value of the "format" metadata key
FORMAT_VERSION = 3  # bump when the layout changes; readers refuse newer versions
# 1: "config" held the whole ExperimentConfig. 2: only its "features" and "model" sections.
# 3: as 2, plus the phone head (written only for packages that carry one).
PHONE_HEAD_PREFIX = "phone_head."
_MAX_PHONES = 4096
QUANTIZE_MODES = ("none", "int8")
# Modules replaced by dynamically quantised (int8 weights, fp32 activations) versions.
# RecurrentLayer holds plain nn.LSTM/GRU modules per direction, so they are all covered.
_INT8_MODULES = {nn.LSTM, nn.GRU, nn.Linear}


class PackageError(ValueError):
    """A file that is not a usable model package (the message names the file)."""


@dataclass(frozen=True)
class PackageConfig:
    """The part of an ExperimentConfig inference needs: what a package stores."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    @classmethod
    def of(cls, cfg: ExperimentConfig | PackageConfig) -> PackageConfig:
        return cls(features=cfg.features, model=cfg.model)

    @classmethod
    def from_stored(cls, raw: Any, version: int = FORMAT_VERSION) -> PackageConfig:
        """Parse a stored config dict (ConfigError/TypeError/ValueError when it is bad).

        Version 1 configs (and Lightning checkpoints' hyper-parameters) hold every section
        of an ExperimentConfig; only features and model are read from them, so training
        keys that were renamed or removed since do not matter.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"config is a JSON {type(raw).__name__}, not an object")
        if version < 2:
            raw = {k: raw[k] for k in ("features", "model") if k in raw}
        return from_dict(cls, drop_retired_keys(raw))


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


def check_model_config(cfg: PackageConfig | ExperimentConfig, vocab_size: int) -> None:
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


def expected_shapes(cfg: PackageConfig | ExperimentConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes an AcousticModel of this config has, built on the meta device
    (no memory for weights). Call :func:`check_model_config` first."""
    with torch.device("meta"):
        model = AcousticModel(cfg.model, cfg.features.n_mels, vocab_size)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def weights_mismatch(cfg: PackageConfig | ExperimentConfig, vocab_size: int,
                     stored: dict[str, tuple[int, ...]]) -> str | None:
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
class PhoneHead:
    """The auxiliary phone CTC head of a package: ``linear`` maps the output of recurrent layer
    ``model.phone_layer`` to 1 + len(phones) logits (0 = blank, i + 1 = phones[i]);
    ``pronunciations`` are the training words' (the decoding lexicon of :mod:`asr.decode.phones`)."""

    linear: nn.Linear
    phones: tuple[str, ...]
    pronunciations: dict[str, tuple[str, ...]]

    def metadata(self) -> dict[str, str]:
        return {"phones": json.dumps(list(self.phones)),
                "pronunciations": json.dumps({w: " ".join(p) for w, p in sorted(self.pronunciations.items())})}


def parse_phone_metadata(meta: dict[str, str]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(phones, pronunciations) from package metadata; ValueError (one line) when malformed."""
    phones = json.loads(meta["phones"])
    if (not isinstance(phones, list) or not 1 <= len(phones) <= _MAX_PHONES
            or not all(isinstance(p, str) and p and not p.isspace() and p.split() == [p] for p in phones)
            or len(set(phones)) != len(phones)):
        raise ValueError("phones must be a list of distinct phone names without spaces")
    raw = json.loads(meta["pronunciations"])
    if not isinstance(raw, dict) or not raw:
        raise ValueError("pronunciations must be a non-empty object {word: phones}")
    known = set(phones)
    prons: dict[str, tuple[str, ...]] = {}
    for word, spelled in raw.items():
        ps = tuple(spelled.split()) if isinstance(spelled, str) else ()
        if not word or word.split() != [word] or not ps or not set(ps) <= known:
            raise ValueError(f"pronunciation of {word!r} is not a non-empty list of the package's phones")
        prons[word] = ps
    return tuple(phones), prons


@dataclass
class ModelPackage:
    """A loaded model package, ready for inference.

    ``featurizer`` maps waveforms (N, S) at ``config.features.sample_rate`` to log-mel
    features (N, T, n_mels); ``model`` maps those to log-probs (N, T', V) with
    T' = ceil(T / model.subsampling).
    """

    model: AcousticModel  # eval mode, on ``device`` (int8-quantised modules when info["quantize"] == "int8")
    tokenizer: Tokenizer  # owns the vocabulary and blank id
    config: PackageConfig  # the features and model the network was trained with
    featurizer: LogMel  # waveform -> log-mel, on ``device``
    info: dict[str, Any] = field(default_factory=dict)  # path, sha256, versions, provenance
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    phone_head: PhoneHead | None = None  # the phone CTC head, on ``device`` (format version 3)

    @property
    def sample_rate(self) -> int:
        """Hz the featurizer expects."""
        return self.config.features.sample_rate

    @property
    def frame_shift(self) -> float:
        """Seconds between consecutive output frames (log-prob rows)."""
        return self.config.features.frame_shift * self.model.subsampling


# --------------------------------------------------------------------------------------------
# writing


def write_package(
    out: str | os.PathLike,
    model: AcousticModel,
    cfg: PackageConfig | ExperimentConfig,
    tokenizer: dict[str, Any],
    source_checkpoints: list[dict[str, Any]],
    int8: bool = False,
    phone_head: PhoneHead | None = None,
) -> Path:
    """Write ``model`` (already checked against ``cfg``) as a package, atomically.

    ``tokenizer`` is :meth:`Tokenizer.to_dict`; ``source_checkpoints`` the provenance list
    (``path``, ``epoch``, ``global_step`` of each averaged checkpoint); ``phone_head`` the
    run's phone CTC head, if it is to travel with the model (format version 3).
    """
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION if phone_head is not None else 2),
        "config": json.dumps(to_dict(PackageConfig.of(cfg))),
        "tokenizer": json.dumps(tokenizer),
        "toolkit_version": __version__,
        "source_checkpoints": json.dumps(source_checkpoints),
        "averaged": str(len(source_checkpoints)),
        "quantize": "int8" if int8 else "none",
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save as save_safetensors

    # safetensors refuses views and shared storage: give it one contiguous copy per tensor.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    if phone_head is not None:
        metadata.update(phone_head.metadata())
        tensors.update({PHONE_HEAD_PREFIX + k: v.detach().to("cpu").contiguous().clone()
                        for k, v in phone_head.linear.state_dict().items()})
    blob = _sorted_metadata(save_safetensors(tensors, metadata=metadata))
    atomic_write(out, lambda f: f.write(blob))  # never a half-written package under the final name
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # safetensors creates files 0600; packages are meant to be shared
    return out


def _sorted_metadata(blob: bytes) -> bytes:
    """``blob`` with its header's metadata in key order, so that one model always gives the
    same bytes (and sha256): safetensors writes the metadata map in hash order, which
    changes from process to process. The header is rewritten in place, padded with spaces
    to its old length (the format allows trailing spaces; offsets are relative to its end)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        return blob
    header["__metadata__"] = dict(sorted(meta.items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen for the same keys and values; keep what safetensors wrote
        return blob
    return blob[:8] + text + b" " * (n - len(text)) + blob[8 + n :]


# --------------------------------------------------------------------------------------------
# reading


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
    except ValueError:
        version = 0
    if version < 1:
        raise PackageError(f"{path}: bad format_version {meta.get('format_version')!r}")
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


def _parse_metadata(path: Path, meta: dict[str, str]) -> tuple[PackageConfig, Tokenizer, dict[str, Any]]:
    """Config, tokenizer and provenance from package metadata, checked for sane sizes.

    Every way crafted metadata can be wrong (bad JSON, a list where a mapping belongs, an
    unknown key, n_mels=0, a negative sample rate, a huge hidden size) ends here as one
    PackageError line; nothing has been allocated yet.
    """
    try:
        cfg = PackageConfig.from_stored(json.loads(meta["config"]), int(meta["format_version"]))
    except (ValueError, TypeError, AttributeError, KeyError) as e:  # JSONDecodeError, ConfigError
        raise PackageError(f"{path}: bad package metadata: config: {e}") from e
    try:
        tokenizer = Tokenizer.from_dict(json.loads(meta["tokenizer"]))
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


def model_kind(cfg: PackageConfig) -> str:
    """What kind of acoustic model a package holds, in words: whether and how it streams."""
    m = cfg.model
    if m.chunk_frames:
        frame_ms = cfg.features.frame_shift * m.subsampling * 1000
        return (f"streaming LC-BLSTM: chunks of {m.chunk_frames} frames + {m.right_context_frames} of right context "
                f"({(m.chunk_frames + m.right_context_frames) * frame_ms:.0f} ms)")
    if not m.bidirectional:
        return "streaming: left to right"
    return "full context (whole utterance)"


def load_package(
    path: str | os.PathLike, device: str | torch.device = "cpu", quantize: bool | None = None
) -> ModelPackage:
    """Load a model package written by :func:`write_package` (``asr export``).

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
    head_shapes = {k: v for k, v in stored.items() if k.startswith(PHONE_HEAD_PREFIX)}
    stored = {k: v for k, v in stored.items() if not k.startswith(PHONE_HEAD_PREFIX)}
    why = weights_mismatch(cfg, tokenizer.vocab_size, stored)
    if why:
        raise PackageError(f"{path}: weights do not match the package config: {why}")
    phones: tuple[str, ...] = ()
    prons: dict[str, tuple[str, ...]] = {}
    if head_shapes or "phones" in meta or "pronunciations" in meta:
        try:
            phones, prons = parse_phone_metadata(meta)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise PackageError(f"{path}: bad package metadata: phone head: {e}") from e
        width = cfg.model.layer_width
        want = {PHONE_HEAD_PREFIX + "weight": (len(phones) + 1, width), PHONE_HEAD_PREFIX + "bias": (len(phones) + 1,)}
        if head_shapes != want:
            raise PackageError(f"{path}: phone head tensors {head_shapes} do not fit {len(phones)} phones on "
                               f"{width}-wide layers (want {want})")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise PackageError(f"{path}: unreadable tensors: {e}") from e
    # NaN/inf weights or CMVN statistics make every output NaN: each file would then fail
    # with a message that blames the audio. Refuse the package itself, naming the tensor.
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = "NaN" if bool(torch.isnan(tensor).any()) else "infinite"
            raise PackageError(f"{path}: tensor {name} holds {bad} values (a diverged or corrupted model)")
    head_state = {k[len(PHONE_HEAD_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(PHONE_HEAD_PREFIX)}
    model = AcousticModel(cfg.model, cfg.features.n_mels, tokenizer.vocab_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PackageError(f"{path}: weights do not match the package config: {e}") from e
    model.eval()

    device = torch.device(device)
    int8 = meta.get("quantize", "none") == "int8" if quantize is None else quantize
    if int8 and device.type != "cpu":
        log.warning("%s: int8 quantisation runs on CPU only; using fp32 weights on %s", path, device)
        int8 = False
    if int8:
        model = quantize_int8(model)
    model = model.to(device)
    try:
        featurizer = LogMel(cfg.features).to(device).eval()
    except (ValueError, RuntimeError) as e:  # torchaudio's own checks of the mel settings
        raise PackageError(f"{path}: bad package metadata: features: {e}") from e

    phone_head = None
    if phones:
        linear = nn.Linear(model.layer_dim, len(phones) + 1)
        linear.load_state_dict(head_state, strict=True)  # shapes checked above
        phone_head = PhoneHead(linear.eval().to(device), phones, prons)

    info = {
        "path": str(path.resolve()),
        "sha256": sha256_digest(path),
        "toolkit_version": meta.get("toolkit_version"),
        "format_version": int(meta["format_version"]),
        **extra,
        "quantize": "int8" if int8 else "none",
        "parameters": sum(v.numel() for v in state.values()),
        "vocab_size": tokenizer.vocab_size,
    }
    info["kind"] = model_kind(cfg)
    if phone_head is not None:
        info["phone_head"] = {"phones": len(phones), "words": len(prons), "layer": model.phone_layer + 1}
    return ModelPackage(model=model, tokenizer=tokenizer, config=cfg, featurizer=featurizer,
                        info=info, device=device, phone_head=phone_head)
