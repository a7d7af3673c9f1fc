"""The decoding flags shared by ``asr transcribe``, ``asr evaluate`` and ``asr lm tune``.

Every beam flag defaults to None ("not given"), so a command can tell what the user asked
for (beam flags with the greedy decoder are refused; unset LM weights come from the LM's
tuned weights); the defaults themselves are written only in
:class:`asr.decode.decoding.DecodingOptions`, which :func:`decoding_options` builds from the flags
given, and which the help texts quote.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from asr.decode.decoding import DECODERS, DecodingOptionError, DecodingOptions

# Beam-only flags, as DecodingOptions field names ("--beam-size" is "beam_size").
BEAM_FLAGS = ("lm", "lexicon", "beam_size", "beam_threshold", "lm_weight", "word_score", "phone_weight")


def flag(name: str) -> str:
    """The command-line spelling of a DecodingOptions field: ``beam_size`` -> ``--beam-size``."""
    return "--" + name.replace("_", "-")


def add_decoding_arguments(group: Any, flags: tuple[str, ...] = BEAM_FLAGS, decoder: bool = True) -> None:
    """Add ``--decoder`` (unless ``decoder`` is False) and the beam flags named in ``flags``
    (DecodingOptions field names) to a parser or argument group."""
    d = DecodingOptions
    help_text = {
        "lm": "KenLM model (ARPA or binary) for --decoder beam",
        "lexicon": "lexicon for --decoder beam, 'word tok tok ...' lines (default: from the LM vocabulary)",
        "beam_size": f"beam width (default {d.beam_size})",
        "beam_threshold": f"prune hypotheses this far (log score) below the best (default {d.beam_threshold:g})",
        "lm_weight": f"LM weight (default: the tuned value beside the LM, else {d.DEFAULT_LM_WEIGHT:g})",
        "word_score": f"word insertion bonus (default: the tuned value beside the LM, else {d.DEFAULT_WORD_SCORE:g})",
        "phone_weight": "also decode the package's phone head and rescore both heads' n-best lists, the phone "
                        "head weighted W in (0, 1] against the character head's 1 - W; 0 = off (default: the "
                        "value tuned beside the LM by `asr lm tune` for a package with a phone head, else 0)",
    }
    types: dict[str, Any] = {"lm": Path, "lexicon": Path, "beam_size": int}
    if decoder:
        group.add_argument("--decoder", choices=DECODERS, default=d.decoder, help=f"CTC decoder (default {d.decoder})")
    for name in flags:
        group.add_argument(flag(name), type=types.get(name, float), help=help_text[name])


def beam_flags_given(args: argparse.Namespace) -> list[str]:
    """The beam flags given on the command line, as typed (``--lm``, ``--beam-size``)."""
    return [flag(n) for n in BEAM_FLAGS if getattr(args, n, None) is not None]


def check_decoding_flags(args: argparse.Namespace) -> str | None:
    """The problem with the decoding flags, as one message (e.g. ``--lm needs --decoder
    beam``), or None. Commands without ``--decoder`` (``asr lm tune``) always beam-search.

    The rules are :class:`DecodingOptions`' own: the options are built and their error is
    worded with the flags' names (``--beam-size must be >= 1 (is 0)``). One rule belongs to
    the command line alone: a beam flag typed with another decoder is refused even when it
    repeats a default, which the options cannot tell from a flag left out.
    """
    given = beam_flags_given(args)
    if getattr(args, "decoder", "beam") != "beam" and given:
        verb = "needs" if len(given) == 1 else "need"
        return f"{', '.join(given)} {verb} --decoder beam"
    try:
        decoding_options(args)
    except DecodingOptionError as e:
        return f"{', '.join(flag(name) for name in e.fields)} {e.problem}"
    return None


def decoding_options(args: argparse.Namespace) -> DecodingOptions:
    """The :class:`DecodingOptions` the flags ask for (flags not given keep its defaults).
    Check the flags with :func:`check_decoding_flags` first."""
    given = {n: getattr(args, n) for n in BEAM_FLAGS if getattr(args, n, None) is not None}
    return DecodingOptions(decoder=getattr(args, "decoder", "beam"), **given)
