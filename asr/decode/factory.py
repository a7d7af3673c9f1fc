"""The decoder factory: a decoder built from its options, and decoding emissions in padded groups.

:func:`make_decoder` turns :class:`~asr.decode.decoding.DecodingOptions` (and the weights
``asr lm tune`` saved beside an LM) into a :class:`Decoder`: greedy, the beam search, or
the two-head beam search of a package with a phone head. :func:`decode_emissions` runs any
decoder over a list of emissions in padded batches. Every way of transcribing (:mod:`asr.infer`)
and LM tuning (:mod:`asr.decode.lm`) use these two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from asr.decode.beam import BeamSearchDecoder, BeamStream
from asr.decode.decoding import (
    DecoderError,
    DecodingOptions,
    GreedyStream,
    Hypothesis,
    greedy_decode,
)
from asr.decode.lm_files import LM_TUNE_SUFFIX, load_tuned_weights
from asr.decode.phones import TwoHeadDecoder
from asr.package import ModelPackage

log = logging.getLogger(__name__)

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class Decoder:
    """What :func:`make_decoder` builds: called like a decoder, (log_probs (N, T, V), lengths
    (N,)) -> [Hypothesis] (the best one per utterance), and saying which emissions it reads."""

    decode: Callable[[Tensor, Tensor], list[Hypothesis]]
    # True: it reads joint emissions, the character log-probs followed by the phone head's
    # (asr.decode.phones.TwoHeadDecoder): run forward_batch with phones=True.
    joint_emissions: bool = False

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[Hypothesis]:
        return self.decode(log_probs, lengths)


def make_decoder(package: ModelPackage, options: DecodingOptions | None = None) -> tuple[Decoder, dict[str, Any]]:
    """A :class:`Decoder` (best hypothesis only) and its settings.

    ``options`` default to greedy decoding. Beam weights left as None take, in order: the
    weights ``asr lm tune`` saved beside the LM (``<lm>.tune.json``), then the
    :class:`asr.decode.decoding.DecodingOptions` defaults.

    Raises:
        DecoderError: a missing/unusable LM or lexicon.
    """
    options = options or DecodingOptions()
    tokenizer = package.tokenizer
    if options.decoder == "greedy":
        return Decoder(lambda lp, lens: greedy_decode(lp, lens, tokenizer)), {"decoder": "greedy"}
    tuned = load_tuned_weights(options.lm) if options.lm is not None else None
    opts = options.with_weights(tuned)
    head = package.phone_head
    if opts.phone_weight and head is None:
        if options.phone_weight is not None:  # asked for on the command line
            raise DecoderError(f"{package.info.get('path', 'this package')}: --phone-weight needs a package with a "
                               "phone head (export a run trained with model.phone_ctc_weight > 0 and data.lexicon)")
        # Tuned with another (phone-head) package on the same LM: this one decodes without.
        log.info("%s%s: phone_weight %g was tuned for a package with a phone head; this one has none",
                 options.lm, LM_TUNE_SUFFIX, opts.phone_weight)
        opts = replace(opts, phone_weight=0.0)
    beam: BeamSearchDecoder | TwoHeadDecoder
    if opts.phone_weight:
        assert head is not None
        beam = TwoHeadDecoder(tokenizer, head.phones, head.pronunciations, opts)
    else:
        beam = BeamSearchDecoder(tokenizer, opts)
    settings = beam.settings()
    if tuned is not None:
        settings["tuned_weights"] = f"{options.lm}{LM_TUNE_SUFFIX}"
    return Decoder(lambda lp, lens: [h[0] for h in beam(lp, lens)],
                   joint_emissions=isinstance(beam, TwoHeadDecoder)), settings


def make_stream_decoder(package: ModelPackage, options: DecodingOptions | None = None,
                        commit_frames: int | None = None
                        ) -> tuple[Callable[[], GreedyStream | BeamStream], dict[str, Any]]:
    """For streaming: a function that starts the decoding of one stream segment (greedy, or
    flashlight's incremental beam search with the LM, fixing words ``commit_frames`` after
    their end: :class:`asr.decode.beam.BeamStream`), and the decoder's settings. Weights
    as :func:`make_decoder` resolves them; two-head decoding (``phone_weight``) does not
    stream: asked for, it is a DecoderError, tuned beside the LM, it is left out."""
    options = options or DecodingOptions()
    tokenizer = package.tokenizer
    if options.decoder == "greedy":
        return (lambda: GreedyStream(tokenizer)), {"decoder": "greedy"}
    tuned = load_tuned_weights(options.lm) if options.lm is not None else None
    opts = options.with_weights(tuned)
    if opts.phone_weight:
        if options.phone_weight:
            raise DecoderError("--phone-weight: two-head decoding does not stream; leave it out with --stream")
        log.info("%s%s: phone_weight %g left out: two-head decoding does not stream", options.lm, LM_TUNE_SUFFIX,
                 opts.phone_weight)
        opts = replace(opts, phone_weight=0.0)
    beam = BeamSearchDecoder(tokenizer, opts)
    settings = beam.settings()
    if tuned is not None:
        settings["tuned_weights"] = f"{options.lm}{LM_TUNE_SUFFIX}"
    return (lambda: beam.stream(commit_frames)), settings


def decode_emissions(
    decode: Callable[[Tensor, Tensor], Sequence[_Result]], emissions_list: Sequence[Tensor], batch: int = 64
) -> Iterator[_Result]:
    """Run ``decode`` on [(T_i, V)] emissions in padded groups of ``batch``; yields its
    per-utterance results (a :class:`Decoder`'s Hypothesis, a beam's n-best list, ...) in order."""
    for s in range(0, len(emissions_list), batch):
        group = list(emissions_list[s : s + batch])
        lens = torch.tensor([e.shape[0] for e in group], dtype=torch.long)
        yield from decode(pad_sequence(group, batch_first=True), lens)  # (n, T, V)
