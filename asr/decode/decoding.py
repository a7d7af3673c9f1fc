"""CTC decoding's shared ground: the output type, greedy decoding and the options.

Both decoders are pure functions of (log_probs (N, T, V), lengths (N,), tokenizer) and share
one output type, :class:`Hypothesis` (text, tokens, the output frame where each token starts,
score, word spans in output frames):

- :func:`greedy_decode` (here): best path (argmax -> collapse repeats -> drop blanks).
- :class:`asr.decode.beam.BeamSearchDecoder`: flashlight-text's CTC prefix beam search,
  optionally with a KenLM n-gram model and a lexicon.

Every choice either makes is one :class:`DecodingOptions`, whose defaults are written only
here. The helpers both build their hypotheses with (:func:`check_inputs`, :func:`label_runs`,
:func:`split_words`, :func:`make_hypothesis`) live here too; :mod:`asr.decode.phones` uses them
as well.

Text convention (both decoders): words joined by single spaces, no leading/trailing space.
Frames are OUTPUT frames of the acoustic model: :meth:`Hypothesis.word_times` turns them into
seconds given the time between output frames, ``ModelPackage.frame_shift`` (the features'
frame shift times the model's subsampling).

:class:`DecoderError`, raised by both decoders, is defined in :mod:`asr.decode.lm_files` (below
this module) and re-exported here as part of the decoder API
(``from asr.decode.decoding import DecoderError``).

Nothing here imports the model: decoders only see log-probs, lengths and the tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from asr.decode.lm_files import DecoderError, uses_word_pieces
from asr.text import Tokenizer, normalize_text

__all__ = [
    "DECODERS",
    "EMPTY_HYPOTHESIS",
    "DecoderError",
    "DecodingOptionError",
    "DecodingOptions",
    "Hypothesis",
    "WordSpan",
    "check_inputs",
    "greedy_decode",
    "label_runs",
    "make_hypothesis",
    "split_words",
]


@dataclass(frozen=True)
class WordSpan:
    word: str
    start: int  # output frame where the word's first token starts
    end: int  # one past the last frame of the word's last token (exclusive)


@dataclass(frozen=True)
class Hypothesis:
    text: str  # words joined by single spaces, each normalised like transcripts (normalize_text)
    tokens: list[int]  # emitted token ids: repeats collapsed, blanks dropped, "|" kept
    timesteps: list[int]  # output frame where each token of ``tokens`` starts
    score: float  # greedy: path log-prob; beam: flashlight's total (AM + weighted LM + bonuses)
    words: list[WordSpan]

    def word_times(self, frame_shift_s: float) -> list[tuple[str, float, float]]:
        """[(word, start_s, end_s)] given the seconds between output frames."""
        return [(w.word, w.start * frame_shift_s, w.end * frame_shift_s) for w in self.words]


EMPTY_HYPOTHESIS = Hypothesis(text="", tokens=[], timesteps=[], score=0.0, words=[])  # an utterance with no frames


# --------------------------------------------------------------------------------------------
# shared helpers (asr.decode.beam and asr.decode.phones build their hypotheses with them too)


def check_inputs(log_probs: Tensor, lengths: Tensor, tokenizer: Tokenizer) -> list[int]:
    """The valid frame counts of ``lengths``, once (N, T, V) ``log_probs`` fit ``tokenizer``."""
    if log_probs.ndim != 3:
        raise DecoderError(f"log_probs must be (N, T, V); got shape {tuple(log_probs.shape)}")
    n, t, v = log_probs.shape
    if v != len(tokenizer.tokens):
        raise DecoderError(
            f"log_probs have {v} classes but the tokenizer has {len(tokenizer.tokens)} tokens"
        )
    if lengths.shape != (n,):
        raise DecoderError(f"lengths must be ({n},) to match log_probs; got {tuple(lengths.shape)}")
    lens = [int(x) for x in lengths.tolist()]
    bad = [x for x in lens if not 0 <= x <= t]
    if bad:
        raise DecoderError(f"lengths must lie in [0, {t}] (the padded frame count); got {bad}")
    return lens


def label_runs(path: Tensor, blank_id: int) -> tuple[list[int], list[int], list[int]]:
    """Non-blank runs of a frame-level label path (T,): (token ids, start frames, end frames)."""
    ids, counts = torch.unique_consecutive(path, return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    keep = ids != blank_id
    return ids[keep].tolist(), starts[keep].tolist(), ends[keep].tolist()


def split_words(
    tokens: list[int], starts: list[int], ends: list[int], tokenizer: Tokenizer
) -> list[WordSpan]:
    """Group emitted tokens into words: at "|" tokens (chars) or before "▁" pieces (BPE)."""
    d = tokenizer.word_delimiter
    pieces = uses_word_pieces(tokenizer)
    spans: list[WordSpan] = []
    cur: list[int] = []  # indices into tokens of the word being built

    def flush() -> None:
        if cur:
            # Words leave the decoder in the form transcripts have (normalize_text), so a
            # hypothesis scores alike wherever it is scored (training's dev WER, `asr lm
            # tune`, `asr evaluate`) and transcripts show no stray marks: the model can
            # emit an apostrophe at a word's edge ("at'") or alone, which transcripts
            # never hold. A lone "▁" piece or "'" spells nothing and gives no word.
            for word in normalize_text(tokenizer.decode([tokens[k] for k in cur])).split():
                spans.append(WordSpan(word, starts[cur[0]], ends[cur[-1]]))
            cur.clear()

    for k, tok in enumerate(tokens):
        s = tokenizer.tokens[tok]
        if not pieces and s == d:
            flush()
            continue
        if pieces and s.startswith(d):
            flush()
        cur.append(k)
    flush()
    return spans


def make_hypothesis(
    tokens: list[int], starts: list[int], words: list[WordSpan], score: float
) -> Hypothesis:
    """The Hypothesis of emitted ``tokens`` (starting at output frames ``starts``) grouped
    into ``words`` (:func:`split_words`)."""
    return Hypothesis(
        text=" ".join(w.word for w in words),
        tokens=tokens,
        timesteps=starts,
        score=float(score),
        words=words,
    )


# --------------------------------------------------------------------------------------------
# greedy


def greedy_decode(log_probs: Tensor, lengths: Tensor, tokenizer: Tokenizer) -> list[Hypothesis]:
    """Best-path CTC decoding.

    Args:
        log_probs: (N, T, V) log-probabilities (any device/dtype); V == len(tokenizer.tokens).
        lengths: (N,) valid output frames per utterance; frames at or past ``lengths[i]``
            are padding and never affect the result.
        tokenizer: owns blank id, token strings and word delimiter.

    Returns:
        One Hypothesis per utterance; ``score`` is the best path's total log-prob.
        A word starts at its first token's first frame and ends after its last token's
        last frame (repeats of that token included, trailing blanks excluded).
    """
    lens = check_inputs(log_probs, lengths, tokenizer)
    best, idx = log_probs.detach().max(dim=-1)  # (N, T) each
    best, idx = best.double().cpu(), idx.cpu()
    out = []
    for i, n in enumerate(lens):
        tokens, starts, ends = label_runs(idx[i, :n], tokenizer.blank_id)
        words = split_words(tokens, starts, ends, tokenizer)
        out.append(make_hypothesis(tokens, starts, words, best[i, :n].sum().item()))
    return out


class GreedyStream:
    """Best-path decoding of a stream, frames in pieces: :meth:`step` takes the next frames'
    log-probs (T, V); :meth:`hypothesis` is :func:`greedy_decode` of every frame stepped so far
    (frame indices from the first), so the pieces' sizes never change the result."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._path: list[Tensor] = []
        self._score = 0.0
        self.frames = 0

    def step(self, log_probs: Tensor) -> None:
        best, idx = log_probs.detach().max(dim=-1)
        self._path.append(idx.cpu())
        self._score += best.double().sum().item()
        self.frames += int(idx.numel())

    def hypothesis(self) -> Hypothesis:
        if not self.frames:
            return EMPTY_HYPOTHESIS
        tokens, starts, ends = label_runs(torch.cat(self._path), self.tokenizer.blank_id)
        return make_hypothesis(tokens, starts, split_words(tokens, starts, ends, self.tokenizer), self._score)

    partial = hypothesis

    def finish(self) -> Hypothesis:
        return self.hypothesis()


# --------------------------------------------------------------------------------------------
# options


DECODERS = ("greedy", "beam")


class DecodingOptionError(ValueError):
    """A :class:`DecodingOptions` value its rules refuse: ``fields`` name the field(s),
    ``problem`` says what is wrong and reads after either the field names (``beam_size must
    be >= 1 (is 0)``) or the command-line flags that set them
    (:func:`asr.commands.decoding_flags.check_decoding_flags`), so each rule is written once."""

    def __init__(self, fields: tuple[str, ...], problem: str) -> None:
        super().__init__(f"{', '.join(fields)} {problem}")
        self.fields, self.problem = fields, problem

    def __reduce__(self) -> tuple[type, tuple[tuple[str, ...], str]]:  # pickles (worker processes)
        return type(self), (self.fields, self.problem)


@dataclass(frozen=True)
class DecodingOptions:
    """How emissions become text: every decoding choice, its default written here only.

    A command builds one from its flags (:mod:`asr.commands.decoding_flags`), a caller from
    keywords; it travels unchanged through :func:`asr.decode.factory.make_decoder`,
    :func:`asr.infer.inference.transcribe_manifest`, :func:`asr.infer.transcription.transcribe`,
    :func:`asr.decode.lm.tune_lm` and into worker processes (it pickles). Beam-only fields left at
    their defaults are ignored by the greedy decoder; set to anything else with
    ``decoder="greedy"`` they are refused, so a forgotten ``decoder="beam"`` is not silently
    decoded greedily.
    """

    decoder: str = "greedy"  # "greedy" (best path) or "beam" (flashlight prefix beam search)
    beam_size: int = 50  # hypotheses kept after each frame
    beam_threshold: float = 25.0  # prune hypotheses this far (log score) below the best
    lm: str | None = None  # KenLM model (ARPA or binary); None: no LM
    lexicon: str | None = None  # "word tok tok ..." file; None: lexicon-free, or from LM vocab
    # LM log-prob multiplier and bonus per word (lexicon-free chars: per "|", see
    # asr.decode.beam.BeamSearchDecoder). None: the value `asr lm tune` saved beside the LM (make_decoder),
    # else DEFAULT_LM_WEIGHT / DEFAULT_WORD_SCORE (see with_weights).
    lm_weight: float | None = None
    word_score: float | None = None
    sil_score: float = 0.0  # bonus per emitted word delimiter / silence token
    nbest: int = 1  # hypotheses returned per utterance (distinct texts)
    unk_word: str = "<unk>"  # LM/lexicon entry for unknown words
    # > 0: also decode the package's phone head and rescore both heads' n-best lists, the
    # phone head's CTC log-likelihood weighted w, the character head's 1 - w
    # (asr.decode.phones.TwoHeadDecoder; needs a package exported from a run with a phone head).
    # None: the value `asr lm tune` saved beside the LM (for such a package), else 0 (off).
    phone_weight: float | None = None

    DEFAULT_LM_WEIGHT: ClassVar[float] = 0.5
    DEFAULT_WORD_SCORE: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        for name in ("lm", "lexicon"):  # Paths welcome; stored as str (reports, pickling)
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, os.fspath(value))
        if self.decoder not in DECODERS:
            raise DecodingOptionError(("decoder",), f"must be 'greedy' or 'beam' (is {self.decoder!r})")
        given = self.beam_options_given()
        if self.decoder == "greedy" and given:
            raise DecodingOptionError(tuple(given), "need(s) decoder='beam' (greedy decoding has no LM or beam)")
        if self.beam_size < 1:
            raise DecodingOptionError(("beam_size",), f"must be >= 1 (is {self.beam_size})")
        if not self.beam_threshold > 0:
            raise DecodingOptionError(("beam_threshold",), f"must be > 0 (is {self.beam_threshold:g})")
        if self.nbest < 1:
            raise DecodingOptionError(("nbest",), f"must be >= 1 (is {self.nbest})")
        if self.phone_weight is not None and not 0.0 <= self.phone_weight <= 1.0:
            raise DecodingOptionError(("phone_weight",), f"must be in [0, 1] (is {self.phone_weight:g})")
        if self.nbest > self.beam_size:
            raise DecodingOptionError(("nbest",), f"({self.nbest}) cannot exceed beam_size ({self.beam_size})")

    def beam_options_given(self) -> list[str]:
        """Names of the beam-only fields set to something other than their defaults."""
        return [f.name for f in fields(self) if f.name != "decoder" and getattr(self, f.name) != f.default]

    def with_weights(self, tuned: dict[str, float] | None = None) -> DecodingOptions:
        """These options with ``lm_weight``/``word_score``/``phone_weight`` filled in: the
        value given, else ``tuned`` (from :func:`asr.decode.lm_files.load_tuned_weights`), else the
        defaults."""
        tuned = tuned or {}
        weight = self.lm_weight if self.lm_weight is not None else tuned.get("lm_weight", self.DEFAULT_LM_WEIGHT)
        score = self.word_score if self.word_score is not None else tuned.get("word_score", self.DEFAULT_WORD_SCORE)
        phone = self.phone_weight if self.phone_weight is not None else tuned.get("phone_weight", 0.0)
        return replace(self, lm_weight=float(weight), word_score=float(score), phone_weight=float(phone))

    def check_files(self) -> None:
        """Raises DecoderError when the LM or lexicon named here is not a file."""
        for name in ("lm", "lexicon"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise DecoderError(f"{p}: {name} file not found")
