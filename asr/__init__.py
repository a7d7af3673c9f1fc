"""asr: log-mel -> stacked bidirectional RNN -> CTC speech recognition toolkit.

The public API, importable from ``asr`` itself (everything else is internal and may move)::

    import asr
    pkg = asr.load_package("model.asr")
    for r in asr.transcribe(pkg, ["a.wav"], decoder="beam", lm="lm.bin"):
        print(r.path, r.text)

Transcribing
    :func:`transcribe` (audio files -> :class:`TranscriptionResult`), :func:`load_package`
    (a model package -> :class:`ModelPackage`), :func:`emissions` (in-memory waveforms ->
    CTC log-probs), :class:`PackageError`; live: :class:`StreamingRecognizer` (audio pieces ->
    partial and final :class:`StreamResult`), :class:`StreamingError`.
Decoding
    :class:`DecodingOptions`, :func:`make_decoder` (options -> decoder), :func:`greedy_decode`,
    :class:`BeamSearchDecoder`, :class:`Hypothesis`, :func:`decode_emissions` (a decoder over
    a list of emissions, batched), :func:`load_tuned_weights` (``<lm>.tune.json``),
    :class:`DecoderError`.
Text, data and scoring
    :class:`Tokenizer`, :class:`CharTokenizer`, :class:`BpeTokenizer`, :data:`BLANK`,
    :func:`normalize_text`; :class:`Utterance`, :func:`read_manifest`, :func:`write_manifest`;
    :func:`load_audio`; :func:`score_corpus` (WER/CER).

Names are imported on first use, so ``import asr`` (and ``asr --help``) stays free of torch.
The command line (``asr transcribe``, ``asr evaluate``, ``asr train``, ...) is :mod:`asr.cli`.

Modules, in import order (each imports only those before it): the ground floor
(:mod:`asr.files`, :mod:`asr.lock`, :mod:`asr.log`, :mod:`asr.threads`, :mod:`asr.signals`);
signal and tokens (:mod:`asr.audio`, :mod:`asr.text`, :mod:`asr.metrics`, :mod:`asr.features`);
:mod:`asr.model`; :mod:`asr.config`, :mod:`asr.package`; :mod:`asr.data`; :mod:`asr.decode`;
:mod:`asr.train` and :mod:`asr.infer`; :mod:`asr.evaluate`; :mod:`asr.commands` and
:mod:`asr.cli` on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "load_package": "asr.package",
    "ModelPackage": "asr.package",
    "PackageError": "asr.package",
    "TranscriptionResult": "asr.infer.transcription",
    "StreamingRecognizer": "asr.infer.streaming",
    "StreamResult": "asr.infer.streaming",
    "StreamingError": "asr.infer.streaming",
    "emissions": "asr.infer.inference",
    "DecodingOptions": "asr.decode.decoding",
    "BeamSearchDecoder": "asr.decode.beam",
    "Hypothesis": "asr.decode.decoding",
    "greedy_decode": "asr.decode.decoding",
    "DecoderError": "asr.decode.decoding",
    "make_decoder": "asr.decode.factory",
    "decode_emissions": "asr.decode.factory",
    "load_tuned_weights": "asr.decode.lm_files",
    "Tokenizer": "asr.text",
    "CharTokenizer": "asr.text",
    "BpeTokenizer": "asr.text",
    "BLANK": "asr.text",
    "normalize_text": "asr.text",
    "Utterance": "asr.data.manifest",
    "read_manifest": "asr.data.manifest",
    "write_manifest": "asr.data.manifest",
    "load_audio": "asr.audio",
    "score_corpus": "asr.metrics",
}

__all__ = [
    "__version__",
    "transcribe",
    "load_package",
    "ModelPackage",
    "PackageError",
    "TranscriptionResult",
    "StreamingRecognizer",
    "StreamResult",
    "StreamingError",
    "emissions",
    "DecodingOptions",
    "BeamSearchDecoder",
    "Hypothesis",
    "greedy_decode",
    "DecoderError",
    "make_decoder",
    "decode_emissions",
    "load_tuned_weights",
    "Tokenizer",
    "CharTokenizer",
    "BpeTokenizer",
    "BLANK",
    "normalize_text",
    "Utterance",
    "read_manifest",
    "write_manifest",
    "load_audio",
    "score_corpus",
]

if TYPE_CHECKING:
    from asr.audio import load_audio
    from asr.data.manifest import Utterance, read_manifest, write_manifest
    from asr.decode.beam import BeamSearchDecoder
    from asr.decode.decoding import (
        DecoderError,
        DecodingOptions,
        Hypothesis,
        greedy_decode,
    )
    from asr.decode.factory import decode_emissions, make_decoder
    from asr.decode.lm_files import load_tuned_weights
    from asr.infer.inference import emissions
    from asr.infer.streaming import StreamingError, StreamingRecognizer, StreamResult
    from asr.infer.transcription import TranscriptionResult
    from asr.metrics import score_corpus
    from asr.package import ModelPackage, PackageError, load_package
    from asr.text import BLANK, BpeTokenizer, CharTokenizer, Tokenizer, normalize_text


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'asr' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


def transcribe(model, paths, options=None, **kw):
    """Transcribe audio files with a model package; see :func:`asr.infer.transcription.transcribe`.

    For convenience, keywords naming :class:`asr.decode.decoding.DecodingOptions` fields
    (``decoder="beam", lm="lm.bin"``) are gathered into ``options``; the rest go to
    :func:`asr.infer.transcription.transcribe`. Imported lazily so that ``import asr`` (and
    ``asr --help``) stays free of torch.
    """
    from dataclasses import fields, replace

    from asr.decode.decoding import DecodingOptions
    from asr.infer.transcription import transcribe as _transcribe

    names = {f.name for f in fields(DecodingOptions)}
    decoding = {k: kw.pop(k) for k in list(kw) if k in names}
    if decoding:
        options = replace(options or DecodingOptions(), **decoding)
    return _transcribe(model, paths, options, **kw)
