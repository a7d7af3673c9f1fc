"""Inference: audio files and manifests in, transcripts out.

- :mod:`asr.infer.engine`: one batch of waveforms through features and model, batch defaults;
- :mod:`asr.infer.progress`: the progress display;
- :mod:`asr.infer.windows`: fixed and pause-cut windows for long files;
- :mod:`asr.infer.segments`: files (or segments) of any length, window by window, batched;
- :mod:`asr.infer.parallel`: the same on several devices (worker processes);
- :mod:`asr.infer.transcription`: :func:`~asr.infer.transcription.transcribe`, audio files to results;
- :mod:`asr.infer.inference`: in-memory waveforms and manifests (what `asr evaluate` and `asr lm tune` read);
- :mod:`asr.infer.transcripts`: writing results as txt/json/srt/vtt.

Import order inside: engine, progress → windows → segments → parallel → transcription, inference.
"""
