#!/usr/bin/env python3
"""Decode the SpeechBrain peer's dev log-probs with OUR beam search + KenLM.

Runs with our venv and the repository root on PYTHONPATH (it imports ``asr``):

    PYTHONPATH=. .venv/bin/python benchmarks/peers/speechbrain/decode_lm.py \\
        --peer exp/peer-speechbrain --lm LM.bin [--lm-weight W] [--word-score S] \\
        [--beam-size 50] [--out exp/peer-speechbrain/hyps_lm.jsonl]
    asr evaluate --hyps exp/peer-speechbrain/hyps_lm.jsonl data/speechocean762/dev.jsonl --out DIR

The peer's columns are reordered into our character tokenizer's ids (:func:`to_tokenizer_ids`):
its blank to our blank, its space to our word delimiter "|", every character to our id for
it. The decoder is the one ``asr evaluate --decoder beam --lm LM`` builds: lexicon from the
LM's vocabulary, beam 50, weights from the command line, else from ``LM.tune.json``, else
:class:`asr.DecodingOptions` defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from asr import (  # the public API only (asr/__init__.py)
    BLANK,
    BeamSearchDecoder,
    CharTokenizer,
    DecodingOptions,
    Tokenizer,
    decode_emissions,
    load_tuned_weights,
)


class VocabError(ValueError):
    """The peer's vocabulary cannot be mapped onto the tokenizer."""


def tokenizer_for(vocab: Sequence[str], blank_id: int) -> CharTokenizer:
    """Our character tokenizer over the peer's characters (its blank and space excluded)."""
    return CharTokenizer(c for i, c in enumerate(vocab) if i != blank_id and c != " ")


def column_order(vocab: Sequence[str], blank_id: int, tokenizer: Tokenizer) -> list[int]:
    """For each of our token ids, the peer's column holding it.

    Raises:
        VocabError: a token of either side has no counterpart (its probability mass would be
            lost, or one of our tokens would have none), or the peer lists a token twice.
    """
    if len(set(vocab)) != len(vocab):
        raise VocabError(f"peer vocabulary lists a token twice: {list(vocab)}")
    if not 0 <= blank_id < len(vocab):
        raise VocabError(f"peer blank id {blank_id} outside its vocabulary of {len(vocab)}")
    where = {("\0blank" if i == blank_id else c): i for i, c in enumerate(vocab)}
    order = []
    for tok in tokenizer.tokens:
        key = "\0blank" if tok == BLANK else (" " if tok == tokenizer.word_delimiter else tok)
        if key not in where:
            raise VocabError(f"our token {tok!r} is not in the peer's vocabulary {list(vocab)}")
        order.append(where.pop(key))
    if where:
        raise VocabError(f"peer tokens with no counterpart in our tokenizer: {sorted(where)}")
    return order


def to_tokenizer_ids(log_probs: Tensor, vocab: Sequence[str], blank_id: int, tokenizer: Tokenizer) -> Tensor:
    """(T, V) peer log-probs -> (T, V) log-probs whose column j is our token id j."""
    if log_probs.ndim != 2 or log_probs.shape[1] != len(vocab):
        raise VocabError(f"log-probs of shape {tuple(log_probs.shape)} do not match a vocabulary of {len(vocab)}")
    return log_probs[:, column_order(vocab, blank_id, tokenizer)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", type=Path, required=True, help="the peer's --out folder (logprobs.pt)")
    p.add_argument("--lm", type=Path, required=True, help="KenLM model from `asr lm build`")
    p.add_argument("--lm-weight", type=float)
    p.add_argument("--word-score", type=float)
    p.add_argument("--beam-size", type=int, default=DecodingOptions.beam_size)
    p.add_argument("--out", type=Path, help="hypotheses JSONL (default: PEER/hyps_lm.jsonl)")
    args = p.parse_args(argv)
    src = args.peer / "logprobs.pt"
    try:
        d = torch.load(src, weights_only=True)
    except FileNotFoundError:
        print(f"error: {src}: not found (run the peer's train.py first)", file=sys.stderr)
        return 2
    except Exception as e:  # torch.load on a corrupt file: UnpicklingError, KeyError, EOFError, ...
        print(f"error: {src}: not a log-prob file written by train.py ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    try:
        vocab, blank, ids, lps = d["vocab"], int(d["blank_id"]), d["ids"], d["logprobs"]
        tok = tokenizer_for(vocab, blank)
        ems = [to_tokenizer_ids(lp.float(), vocab, blank, tok) for lp in lps]
        options = DecodingOptions(
            "beam", lm=str(args.lm), beam_size=args.beam_size, lm_weight=args.lm_weight, word_score=args.word_score
        )
        beam = BeamSearchDecoder(tok, options.with_weights(load_tuned_weights(args.lm)))
    except (OSError, KeyError, ValueError, RuntimeError) as e:  # VocabError, DecoderError are ValueErrors
        print(f"error: {src}: {e}", file=sys.stderr)
        return 2
    hyps = decode_emissions(lambda lp, lens: [h[0] for h in beam(lp, lens)], ems)
    out = args.out or args.peer / "hyps_lm.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for uid, h in zip(ids, hyps):
            f.write(json.dumps({"id": uid, "text": h.text}) + "\n")
    print(json.dumps({"hyps": str(out), "utterances": len(ids), "decoder": beam.settings()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
