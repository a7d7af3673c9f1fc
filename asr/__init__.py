"""asr: log-mel -> stacked bidirectional RNN -> CTC speech recognition toolkit."""

__version__ = "0.1.0"


def transcribe(model, paths, **kw):
    """Transcribe audio files with a model package; see :func:`asr.transcription.transcribe`.

    Imported lazily so that ``import asr`` (and ``asr --help``) stays free of torch.
    """
    from asr.transcription import transcribe as _transcribe

    return _transcribe(model, paths, **kw)
