"""Evaluation reports: an evaluation directory written by ``asr evaluate``, read by ``asr compare``.

The directory holds:

- ``summary.json``: corpus WER/CER with bootstrap CIs, S/D/I/hits, counts, SER, decoding
  settings, model identity, real-time factor, the text normalisation applied;
- ``utterances.jsonl``: one scored utterance per line (id, speaker, duration, reference,
  hypothesis, word alignment ops, error counts, wer);
- ``report.md`` and ``report.html``: the same for people. The HTML is self-contained (inline
  CSS, plots as base64 PNG), so it can be mailed or archived and opened offline.

Modules: :mod:`.data` (records, summary, reading/writing the two data files),
:mod:`.analysis` (per-speaker / per-duration statistics), :mod:`.formatting`,
:mod:`.markdown`, :mod:`.plots`, :mod:`.html_page` (rendering), :mod:`.directory` (writes the
whole directory); one writer per output directory is :mod:`asr.lock`.
"""
