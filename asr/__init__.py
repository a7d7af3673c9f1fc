"""asr: log-mel -> stacked bidirectional RNN -> CTC speech recognition toolkit."""

__version__ = "0.1.0"


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
