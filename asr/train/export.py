"""``asr export``'s library side: Lightning checkpoints -> a model package (optionally
averaged, marked for int8), plus TorchScript / ONNX graphs of the network.

The package format lives in :mod:`asr.package`; reading checkpoints in :mod:`asr.train.checkpoint`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.files import TMP_SUFFIX, atomic_write
from asr.model import AcousticModel
from asr.package import PhoneHead, check_model_config, weights_mismatch, write_package
from asr.text import Tokenizer, TokenizerError
from asr.train.checkpoint import (
    CheckpointError,
    LightningCheckpoint,
    average_state_dicts,
    best_checkpoints,
    check_compatible,
    latest_checkpoints,
    read_lightning_checkpoint,
)


def export(
    ckpts: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    average: bool | int = False,
    average_last: int = 0,
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
        average_last: N >= 1: average the checkpoints of the N latest epochs of each
            directory (``trainer.keep_last``), whatever their dev WER: the weight averaging of
            SWA, after training. Not with ``average``.
        int8: mark the package for dynamic int8 quantisation (applied at load time, CPU).
        torchscript: also write ``out.with_suffix(".ts")`` (traced, dynamic batch/time).
        onnx: also write ``out.with_suffix(".onnx")`` (inputs feats (N, T, n_mels) float32,
            feat_lens (N,) int64; outputs log_probs (N, T', V), out_lens (N,)).
        note: called with one-line remarks the caller should show (e.g. fewer checkpoints
            than ``average=N`` asked for).

    Returns:
        The package path.
    """
    if average_last:
        if average is not False:
            raise CheckpointError("--average and --average-last choose the checkpoints in two ways: give one")
        if average_last < 1:
            raise CheckpointError(f"--average-last must be >= 1 (is {average_last})")
        n_best = 1
    elif average is False:
        n_best = 1
    elif average is True:
        n_best = sys.maxsize  # every ranked checkpoint of a directory (save_top_k of them)
    else:
        n_best = int(average)
        if n_best < 1:
            raise CheckpointError(f"--average must be >= 1 (is {average})")
    paths: list[Path] = []
    for p in map(Path, ckpts):
        if p.is_dir():
            found = latest_checkpoints(p, average_last) if average_last else best_checkpoints(p, n_best)
        else:
            found = [p]
        if p.is_dir() and average is not True and average is not False and len(found) < n_best and note:
            note(f"--average {n_best}: {p} has only {len(found)} ranked checkpoint(s); averaging those "
                 f"{len(found)}")
        paths.extend(found)
    if not paths:
        raise CheckpointError("no checkpoints given")
    if len(paths) > 1 and average is False and not average_last:
        raise CheckpointError(
            f"{len(paths)} checkpoints given ({', '.join(map(str, paths))}); pass --average to "
            "average them, or give one"
        )
    loaded = [read_lightning_checkpoint(p) for p in paths]
    check_compatible(loaded)
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
    why = weights_mismatch(first.config, tokenizer.vocab_size, {k: tuple(v.shape) for k, v in state.items()})
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

    sources = [{"path": str(c.path.resolve()), "epoch": c.epoch, "global_step": c.global_step} for c in loaded]
    head = phone_head(loaded, model, note or (lambda msg: None))
    out = write_package(out, model, first.config, first.tokenizer, sources, int8=int8, phone_head=head)
    if (torchscript or onnx) and model.cfg.chunk_frames:
        # The chunks run in a Python loop whose length tracing would fix to the example's.
        raise CheckpointError("--torchscript/--onnx: a streaming model (model.chunk_frames) cannot be traced; "
                              "its .asr package streams with asr.StreamingRecognizer")
    if torchscript:
        export_torchscript(model, out.with_suffix(".ts"), first.config.features.n_mels)
    if onnx:
        export_onnx(model, out.with_suffix(".onnx"), first.config.features.n_mels)
    return out


def phone_head(loaded: Sequence[LightningCheckpoint], model: AcousticModel,
               note: Callable[[str], None]) -> PhoneHead | None:
    """The checkpoints' phone CTC head, averaged as the network is, with its phones and the
    training words' pronunciations; None (and a ``note`` saying why, when there was a head)
    when it cannot travel with the package.

    Checkpoints written before the pronunciations were stored in them get them rebuilt from
    the run's ``data.lexicon`` and training manifest, exactly as training built its phone
    targets (:meth:`asr.data.lexicon.PhoneMap.build`), provided both files are still there
    and give the same phones.
    """
    first = loaded[0]
    if not any(c.phone_head for c in loaded):
        return None
    if not all(c.phone_head and c.phones == first.phones for c in loaded):
        note("phone head left out of the package: the checkpoints do not all have the same phone head")
        return None
    prons = first.pronunciations or _rebuilt_pronunciations(first, note)
    if not prons:
        return None
    if not {p for ps in prons.values() for p in ps} <= set(first.phones):
        note(f"phone head left out of the package: {first.path}'s pronunciations use phones the head lacks")
        return None
    names = [str(c.path) for c in loaded]
    state = average_state_dicts([c.phone_head for c in loaded], names) if len(loaded) > 1 else first.phone_head
    linear = torch.nn.Linear(model.layer_dim, len(first.phones) + 1)
    try:
        linear.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{first.path}: phone head does not fit the model: {e}") from e
    return PhoneHead(linear.eval(), first.phones, prons)


def _rebuilt_pronunciations(ckpt: LightningCheckpoint, note: Callable[[str], None]) -> dict[str, tuple[str, ...]]:
    from asr.data.lexicon import LexiconError, PhoneMap, read_lexicon
    from asr.data.manifest import ManifestError, read_manifest

    raw = ckpt.train_config.get("data")
    data: dict[str, Any] = raw if isinstance(raw, dict) else {}
    lexicon, train = data.get("lexicon"), data.get("train_manifest")
    why = "its training config names no data.lexicon or data.train_manifest"
    if lexicon and train:
        try:
            phone_map, _ = PhoneMap.build(read_lexicon(lexicon), [u.text for u in read_manifest(train)])
        except (LexiconError, ManifestError, OSError) as e:
            why = f"cannot rebuild them from data.lexicon / data.train_manifest: {e}"
        else:
            if phone_map.phones == ckpt.phones:
                return phone_map.prons
            why = f"{lexicon} now gives other phones for the training words than the head was trained on"
    note(f"phone head left out of the package: {ckpt.path} holds no pronunciations (trained before they were "
         f"stored) and {why}")
    return {}


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
    atomic_write(out, lambda f: torch.jit.save(traced, f))
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
        # Exported to a scratch file beside ``out``, checked from memory, and written to ``out``
        # atomically only once it passed: a failed export or check never replaces an earlier graph.
        scratch = out.with_name(f"{out.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            torch.onnx.export(
                model, a, str(scratch), dynamo=False, opset_version=opset,
                input_names=["feats", "feat_lens"], output_names=["log_probs", "out_lens"],
                dynamic_axes={"feats": {0: "batch", 1: "time"}, "feat_lens": {0: "batch"},
                              "log_probs": {0: "batch", 1: "frames"}, "out_lens": {0: "batch"}},
            )
            blob = scratch.read_bytes()
        except Exception as e:
            raise CheckpointError(f"{out}: torch.onnx.export failed: {e}") from e
        finally:
            scratch.unlink(missing_ok=True)
        try:
            onnx.checker.check_model(onnx.load_from_string(blob))
        except Exception as e:
            raise CheckpointError(f"{out}: the exported ONNX graph is invalid: {e}") from e
        try:
            import onnxruntime as ort
        except ImportError:
            pass  # checked structurally only; nothing in the toolkit needs onnxruntime
        else:
            sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
            got = sess.run(None, {"feats": b[0].numpy(), "feat_lens": b[1].numpy()})
            _check_same("ONNX", got, model(*b), out)
    atomic_write(out, lambda f: f.write(blob))
    return out
