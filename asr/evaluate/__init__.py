"""Evaluation: hypotheses scored against references, reports written and compared.

- :mod:`asr.evaluate.evaluation`: :func:`~asr.evaluate.evaluation.evaluate` (scores, writes the
  evaluation directory) and reading other systems' hypothesis files;
- :mod:`asr.evaluate.reports`: the evaluation directory (summary, per-utterance records,
  Markdown and HTML reports, plots);
- :mod:`asr.evaluate.compare`: two evaluation directories compared (paired bootstrap).

WER/CER scoring itself is :mod:`asr.metrics`, lower in the import order (LM tuning uses it).
"""
