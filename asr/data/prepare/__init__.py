"""Turn a corpus into validated JSONL manifests (the library side of `asr prepare`).

:func:`prepare_corpus` lists the corpus' items (:mod:`asr.data.corpora`, the registry of
readers), carves a dev split from train (:mod:`.dev_split`), validates every item
(:mod:`.validate`) and writes the manifests, ``rejected.jsonl`` and ``summary.json``
(:mod:`.outputs`). Options and the error type live in :mod:`.options`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from asr.data.corpora import SPLITS, CorpusOptions, get_corpus
from asr.data.prepare.dev_split import carve_dev
from asr.data.prepare.options import PrepareError, PrepareOptions
from asr.data.prepare.outputs import write_outputs
from asr.data.prepare.validate import PrepareResult, Progress, validate_items

log = logging.getLogger(__name__)


def _no_progress(items, total):
    return items


def prepare_corpus(
    corpus: str,
    src: Path,
    out: Path,
    options: PrepareOptions = PrepareOptions(),
    corpus_options: CorpusOptions = CorpusOptions(),
    progress: Progress = _no_progress,
) -> PrepareResult:
    """List, split, validate and write the manifests of ``corpus`` found in ``src``.

    Raises CorpusError (layout) or PrepareError (options, empty train split); rejected
    items are not errors: they go to ``out/rejected.jsonl`` and ``result.rejected``.
    ``progress`` wraps the audio decoding (e.g. with a progress bar).
    """
    module = get_corpus(corpus)
    items = module.find_items(Path(src), corpus_options)
    log.info("%s: %d item(s) listed in %s", corpus, len(items), src)
    items, dev_note = carve_dev(items, module.DEV_DEFAULT, options.dev_speakers, options.dev_fraction, options.seed)
    result = validate_items(items, options, progress)
    result.dev_note = dev_note
    present = [s for s in SPLITS if any(it.split == s for it in items)]
    write_outputs(Path(out), result, present, corpus, Path(src), options)
    if "train" in present and not result.splits["train"]:
        raise PrepareError(f"no usable train utterances (all rejected; see {Path(out) / 'rejected.jsonl'})")
    return result


__all__ = ["PrepareError", "PrepareOptions", "PrepareResult", "carve_dev", "prepare_corpus"]
