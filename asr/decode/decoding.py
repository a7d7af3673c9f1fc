"""CTC decoders: pure functions of (log_probs (N, T, V), lengths (N,), tokenizer).

Two decoders share one output type, :class:`Hypothesis` (text, tokens, the output frame
where each token starts, score, word spans in output frames):

- :func:`greedy_decode`: best path (argmax -> collapse repeats -> drop blanks).
- :class:`BeamSearchDecoder`: flashlight-text's CTC prefix beam search
  (:class:`asr.decode.flashlight.FlashlightSearch`, built as torchaudio's ``ctc_decoder`` builds
  it), optionally with a KenLM n-gram model and a lexicon. With a word-level LM and no
  lexicon given, the lexicon is written on the fly from the LM's vocabulary (see
  :func:`asr.decode.lm_files.lm_vocabulary`), so ``BeamSearchDecoder(tok, lm="lm.bin")`` just
  works for LMs built by ``asr lm build``. Every choice either makes is one
  :class:`DecodingOptions`, whose defaults are written only there.

Lexicons and character tokenizers: lexicon words are spelled with a trailing word delimiter
("c a t |", as flashlight expects). Flashlight's lexicon search finishes a word when its
spelling is complete and returns to the trie root, where the only way to stay on a token is to
emit the silence token, so a word spelled without "|" could not hold its last character over
several frames ("c c" after "a b") and the search invented a repeated word instead. Our models
emit "|" only BETWEEN words, so :class:`BeamSearchDecoder` appends one synthetic frame (only
"|" possible) to every utterance to let the last word end; that frame never shows in tokens,
timesteps, word spans or the score.

Lexicons and word pieces: there is no delimiter token (a word ends where the next "▁" piece
begins), so the same trap is avoided differently. Each word gets a second spelling with its
last piece doubled ("▁c at at"): in flashlight's CTC search, a repeated token without a blank
in between cannot *enter* a trie node but can still *complete* the word there, and the search
may stay on a node while the token repeats; so "▁c at at" completes "cat" on the LAST frame of
a held "at" run, and "▁c at" on its first. (Side effect: "at - at", a genuinely repeated last
piece, can also read as "cat"; the LM and the other spelling compete for it.)

Text convention (both decoders): words joined by single spaces, no leading/trailing space.
Frames are OUTPUT frames of the acoustic model: :meth:`Hypothesis.word_times` turns them into
seconds given the time between output frames, ``ModelPackage.frame_shift`` (the features'
frame shift times the model's subsampling).

The lexicon and LM side-file helpers these decoders use (:func:`~asr.decode.lm_files.write_lexicon`,
:func:`~asr.decode.lm_files.lm_vocabulary`, :func:`~asr.decode.lm_files.load_tuned_weights`) live in
:mod:`asr.decode.lm_files`, below this module; the spelling rules above are why they write what they do
(:func:`~asr.decode.lm_files.search_spellings`). :class:`DecoderError`, raised by both, is defined
there and re-exported here as part of the decoder API (``from asr.decode.decoding import DecoderError``).

Nothing here imports the model: decoders only see log-probs, lengths and the tokenizer.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from asr.decode.flashlight import FlashlightSearch
from asr.decode.lm_files import (
    DecoderError,
    copy_user_lexicon,
    is_token_level_lm,
    lm_vocabulary,
    uses_word_pieces,
    write_lexicon,
)
from asr.text import Tokenizer, normalize_text

# Log-prob of every token but "|" in the synthetic frame closing each utterance (char lexicon
# mode). Finite on purpose: when no hypothesis can end a word by then, flashlight keeps
# unfinished ones whose closing frame took one of these tokens; with -inf their score would
# be -inf (NaN once the closing frame's share is taken back out), with -1e4 it stays exact.
_CLOSING_FRAME_LOG_PROB = -1.0e4


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


_EMPTY = Hypothesis(text="", tokens=[], timesteps=[], score=0.0, words=[])


# --------------------------------------------------------------------------------------------
# shared helpers (label_runs, split_words, make_hypothesis: asr.decode.phones builds its hypotheses with them too)


def _check_inputs(log_probs: Tensor, lengths: Tensor, tokenizer: Tokenizer) -> list[int]:
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
    lens = _check_inputs(log_probs, lengths, tokenizer)
    best, idx = log_probs.detach().max(dim=-1)  # (N, T) each
    best, idx = best.double().cpu(), idx.cpu()
    out = []
    for i, n in enumerate(lens):
        tokens, starts, ends = label_runs(idx[i, :n], tokenizer.blank_id)
        words = split_words(tokens, starts, ends, tokenizer)
        out.append(make_hypothesis(tokens, starts, words, best[i, :n].sum().item()))
    return out


# --------------------------------------------------------------------------------------------
# beam search


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
    # BeamSearchDecoder). None: the value `asr lm tune` saved beside the LM (make_decoder),
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


class BeamSearchDecoder:
    """CTC prefix beam search (flashlight-text), optionally with a KenLM model and a lexicon.

    Modes, chosen from ``lm`` and ``lexicon``:

    - no LM, no lexicon: lexicon-free search over tokens (any token sequence allowed).
    - lexicon given: only lexicon words can be output; a word-level LM (or none) scores them.
    - word-level LM, no lexicon: a lexicon is written from the LM's vocabulary
      (:func:`lm_vocabulary`), keeping the words the tokenizer can spell.
    - token-level LM (its vocabulary is the tokenizer's tokens), no lexicon: lexicon-free
      search with the LM scoring every token.

    Word boundaries: for characters flashlight's silence token is ``"|"``, and lexicon words
    end with it (a given lexicon is copied with "|" added where a spelling lacks it; an extra
    closing frame lets the last word end, see the module docstring); for word pieces
    there is no boundary token (words start at "▁" pieces, which lexicon spellings carry), so
    the silence token is ``"<unk>"`` (never emitted by a trained model; what NeMo does), and
    ``sil_score`` has no practical effect. Flashlight's lexicon-free decoder has no word
    insertion score; for characters ``word_score`` is therefore added to ``sil_score`` (one
    "|" per word boundary); for word pieces lexicon-free, a non-zero ``word_score`` is refused.
    """

    def __init__(self, tokenizer: Tokenizer, options: DecodingOptions | None = None, **overrides: Any) -> None:
        """``options`` (default: :class:`DecodingOptions`' defaults) with ``overrides`` (its
        field names: ``beam_size=10, lm="lm.bin"``) replaced; weights left unset take the
        defaults (the LM's tuned weights are :func:`asr.decode.factory.make_decoder`'s business)."""
        opts = replace(options or DecodingOptions(), decoder="beam", **overrides).with_weights()
        opts.check_files()
        if opts.phone_weight:
            raise DecoderError("phone_weight needs the package's phone head: build the decoder with "
                               "asr.decode.factory.make_decoder(package, options)")
        assert opts.lm_weight is not None and opts.word_score is not None  # with_weights()
        lm_weight, word_score = opts.lm_weight, opts.word_score
        self.options = opts
        self.tokenizer = tokenizer
        self._pieces = uses_word_pieces(tokenizer)
        blank = tokenizer.tokens[tokenizer.blank_id]
        if self._pieces:
            sil = "<unk>" if "<unk>" in tokenizer.tokens else blank
        else:
            sil = tokenizer.word_delimiter
            if sil not in tokenizer.tokens:
                raise DecoderError(
                    f"word delimiter {sil!r} is not one of the tokenizer's tokens; cannot decode"
                )
        self._sil_id = tokenizer.tokens.index(sil)

        # Decide the mode; `lexicon_source` is also reported by settings().
        self.skipped_words: list[str] = []  # LM words the tokenizer cannot spell (auto lexicon)
        auto_words: list[str] | None = None
        if opts.lexicon is not None:
            self.lexicon_source: str | None = opts.lexicon
        elif opts.lm is not None and not is_token_level_lm(Path(opts.lm), tokenizer):
            auto_words = lm_vocabulary(opts.lm)
            self.lexicon_source = f"vocabulary of {opts.lm}"
        else:
            self.lexicon_source = None

        sil_score = opts.sil_score
        if self.lexicon_source is None and word_score != 0.0:
            if self._pieces:
                raise DecoderError(
                    "word_score has no effect in lexicon-free decoding of word pieces "
                    "(flashlight has no word insertion score there); use a lexicon or set it to 0"
                )
            sil_score += word_score
        self._sil_score = sil_score  # flashlight's silScore, as passed below

        with tempfile.TemporaryDirectory(prefix="asr-lexicon-") as tmp:
            lexicon_path = opts.lexicon
            if auto_words is not None:
                lexicon_path = os.path.join(tmp, "lexicon.txt")
                self.skipped_words = write_lexicon(auto_words, tokenizer, lexicon_path)
            elif opts.lexicon is not None:
                lexicon_path = os.path.join(tmp, "lexicon.txt")
                copy_user_lexicon(opts.lexicon, lexicon_path, tokenizer)
            try:
                # The lexicon is read into the trie here: the temporary file may then go.
                self._search = FlashlightSearch(
                    tokenizer, lexicon_path, opts.lm, blank, sil, opts.beam_size,
                    opts.beam_threshold, lm_weight, word_score, sil_score, opts.unk_word,
                )
            except (RuntimeError, ValueError, IndexError) as e:
                what = opts.lm if opts.lm is not None else opts.lexicon
                raise DecoderError(f"{what}: cannot build the beam search decoder: {e}") from e
        self._lexicon_mode = lexicon_path is not None
        # Char lexicon words end with "|", which our models do not emit after the last word:
        # each utterance gets a closing frame where "|" is certain (see the module docstring).
        # Word pieces need none: a word ends with its last piece.
        self._closing_frame: Tensor | None = None
        if self._lexicon_mode and not self._pieces:
            row = torch.full((len(tokenizer.tokens),), _CLOSING_FRAME_LOG_PROB)
            row[self._sil_id] = 0.0
            self._closing_frame = row

    def settings(self) -> dict[str, Any]:
        """Options plus the resolved mode, for reports."""
        d = asdict(self.options)
        if d.get("lm") is None:
            d["lm_weight"] = None  # no LM: a weight would mislead a reader of the report
        d["decoder"] = "beam"
        d["mode"] = "lexicon" if self._lexicon_mode else "lexicon-free"
        d["lexicon_source"] = self.lexicon_source
        if self.skipped_words:
            d["lexicon_skipped_words"] = len(self.skipped_words)
        return d

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[list[Hypothesis]]:
        """Decode a padded batch.

        Args:
            log_probs: (N, T, V) log-probabilities, any device/dtype (copied to float32 CPU,
                which flashlight requires).
            lengths: (N,) valid frames; padding beyond them is never read.

        Returns:
            For each utterance, up to ``nbest`` hypotheses with distinct texts, best first.
        """
        lens = _check_inputs(log_probs, lengths, self.tokenizer)
        em = log_probs.detach().to(device="cpu", dtype=torch.float32)
        closing = self._closing_frame
        if closing is not None:
            # One frame more than the longest utterance; utterance b's closing frame goes
            # at frame lens[b] (its first padding frame, or the new last one).
            n_, t_, v_ = em.shape
            padded = torch.empty(n_, t_ + 1, v_, dtype=torch.float32)
            padded[:, :t_] = em
            for b, n in enumerate(lens):
                padded[b, n] = closing
            em = padded
        em = em.contiguous()
        v = em.shape[2]
        extra = 0 if closing is None else 1
        out: list[list[Hypothesis]] = []
        for b, n in enumerate(lens):
            if n == 0:
                out.append([_EMPTY])
                continue
            # flashlight reads (n + extra) * V floats from this address: utterance b, frames
            # [0, n) plus its closing frame.
            ptr = em.data_ptr() + em.element_size() * b * em.stride(0)
            # The raw flashlight result keeps the full frame-level path, needed for token
            # END frames (word end times) and for the frame where each lexicon word completes.
            results = self._search.decoder.decode(ptr, n + extra, v)
            hyps: list[Hypothesis] = []
            seen: set[str] = set()
            for r in results:
                h = self._to_hypothesis(r, n)
                if h.text in seen:  # same words through a different path/end state
                    continue
                seen.add(h.text)
                hyps.append(h)
                if len(hyps) == self.options.nbest:
                    break
            out.append(hyps or [_EMPTY])
        return out

    def _to_hypothesis(self, result: Any, n: int) -> Hypothesis:
        # result.tokens has one entry per decoded frame plus two: a start-of-sentence
        # silence first and a final silence last (index i is frame i - 1; ours are frame
        # indices).
        # Only the n real frames describe the path: the closing frame, if any, is raw[n + 1].
        raw = list(result.tokens)
        path = torch.tensor(raw[1 : n + 1], dtype=torch.long)
        tokens, starts, ends = label_runs(path, self.tokenizer.blank_id)
        score = float(result.score)
        if self._closing_frame is not None:
            # Take the closing frame's share back out of the score: its emission (0 for "|")
            # and the sil_score flashlight adds for every "|" it emits (children and
            # stay-at-root alike), so scores keep describing the real frames only.
            last = raw[n + 1]
            score -= float(self._closing_frame[last])
            if last == self._sil_id:
                score -= self._sil_score
        if not self._lexicon_mode:
            words = split_words(tokens, starts, ends, self.tokenizer)
        else:
            words = self._lexicon_words(list(result.words), tokens, starts, ends)
        return make_hypothesis(tokens, starts, words, score)

    def _lexicon_words(
        self, word_ids: list[int], tokens: list[int], starts: list[int], ends: list[int]
    ) -> list[WordSpan]:
        # Flashlight marks a word at the frame where its LAST token is first emitted (the trie
        # reaches a word end there): for characters that is the trailing "|", possibly the
        # closing frame (index n, past every run: bisect then lands on the last real run);
        # for word pieces the last piece, or the last frame of its run (doubled spelling).
        # The word's tokens are those after the previous word's last token, minus leading
        # silence tokens (the previous word's "|") and trailing ones (its own "|").
        spans: list[WordSpan] = []
        prev = -1  # index into tokens of the previous word's last non-silence token
        word_dict = self._search.word_dict
        for i, w in enumerate(word_ids):
            if w < 0:
                continue
            frame = i - 1  # same +1 offset as the token path
            k = bisect.bisect_right(starts, frame) - 1  # the run containing/ending before it
            while k > prev and tokens[k] == self._sil_id:
                k -= 1
            k = max(k, prev)
            first = prev + 1
            while first < k and tokens[first] == self._sil_id:
                first += 1
            if k < 0:  # a word with no token at all cannot happen in CTC; keep it visible
                start = end = 0
            elif first > k:
                start = end = ends[k]
            else:
                start, end = starts[first], ends[k]
            spans.append(WordSpan(word_dict.get_entry(w), start, end))
            prev = k
        return spans
