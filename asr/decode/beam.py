"""CTC prefix beam search: :class:`BeamSearchDecoder`, flashlight-text's search
(:class:`asr.decode.flashlight.FlashlightSearch`, built as torchaudio's ``ctc_decoder`` builds
it), optionally with a KenLM n-gram model and a lexicon. With a word-level LM and no lexicon
given, the lexicon is written on the fly from the LM's vocabulary (see
:func:`asr.decode.lm_files.lm_vocabulary`), so ``BeamSearchDecoder(tok, lm="lm.bin")`` just
works for LMs built by ``asr lm build``. Its options, output type and text convention are
greedy decoding's (:mod:`asr.decode.decoding`).

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

The lexicon and LM side-file helpers used here (:func:`~asr.decode.lm_files.write_lexicon`,
:func:`~asr.decode.lm_files.lm_vocabulary`, :func:`~asr.decode.lm_files.load_tuned_weights`) live in
:mod:`asr.decode.lm_files`, below this module; the spelling rules above are why they write what they do
(:func:`~asr.decode.lm_files.search_spellings`).

Import order: lm_files, flashlight → decoding → beam.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from asr.decode.decoding import (
    EMPTY_HYPOTHESIS,
    DecodingOptions,
    Hypothesis,
    WordSpan,
    check_inputs,
    label_runs,
    make_hypothesis,
    split_words,
)
from asr.decode.flashlight import FlashlightSearch
from asr.decode.lm_files import (
    DecoderError,
    copy_user_lexicon,
    is_token_level_lm,
    lm_vocabulary,
    uses_word_pieces,
    write_lexicon,
)
from asr.text import Tokenizer

# Log-prob of every token but "|" in the synthetic frame closing each utterance (char lexicon
# mode). Finite on purpose: when no hypothesis can end a word by then, flashlight keeps
# unfinished ones whose closing frame took one of these tokens; with -inf their score would
# be -inf (NaN once the closing frame's share is taken back out), with -1e4 it stays exact.
_CLOSING_FRAME_LOG_PROB = -1.0e4


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
        lens = check_inputs(log_probs, lengths, self.tokenizer)
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
                out.append([EMPTY_HYPOTHESIS])
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
            out.append(hyps or [EMPTY_HYPOTHESIS])
        return out

    def stream(self, commit_frames: int | None = None) -> BeamStream:
        """An online search over one stream (flashlight's ``decode_begin / decode_step /
        decode_end``): the same search as :meth:`__call__` on the concatenated frames (with
        ``commit_frames``, words are fixed as :class:`BeamStream` says). One stream at a time
        per decoder: flashlight keeps the search state inside it."""
        return BeamStream(self, commit_frames)

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


class BeamStream:
    """Flashlight's incremental search, for :class:`asr.infer.streaming.StreamingRecognizer`:
    :meth:`step` frames (T, V) in any pieces, :meth:`partial` the best path so far (its
    tokens, words split at "|" or "▁" as greedy decoding does; see below for how the beam is
    ranked), :meth:`finish` the final hypothesis, which equals :class:`BeamSearchDecoder` on
    all the frames at once.

    ``commit_frames``: a word of the best path is fixed once the search has decoded this many
    frames past its end (and the word after it has begun). From then on the partials and the
    final keep it: the best hypothesis that reads the same up to there, or, if the search has
    dropped every such one, the fixed words followed by the best hypothesis' tokens after them.
    This bounds how late the LM can change a word that is already out, at some accuracy (the
    LM no longer revises a word from what follows it). Flashlight offers no way to prune its
    beam to a prefix, so the constraint is applied to what is read out of the beam. The last
    word so far is never fixed: CTC spells a word with blanks between its characters, so blanks
    after a word ("a" of "about") do not show that it ended (fixing it then took
    speechocean762 dev from 68.02% to 85.24% WER at 100 ms). None (the default): words may
    change until the final, which then equals the offline search.

    Partials in lexicon mode with characters rank the beam as :meth:`finish` would if the
    stream ended now: a hypothesis spelling a lexicon word gets that word's LM score in place of the
    trie's look-ahead, one in mid-spelling of no word drops out (as at the end, where the
    closing "|" must complete a word), and each gets the LM's end-of-sentence score. So
    once the audio of a segment's last word has been decoded, the partial already reads as
    the final will: without this, the best path mid-search is ranked by look-ahead scores and
    the last word changed only with the final, after the endpoint's 0.5 s of blanks. Finals
    are unaffected. (Lexicon-free search and word pieces rank by the score so far.)
    """

    def __init__(self, decoder: BeamSearchDecoder, commit_frames: int | None = None) -> None:
        if commit_frames is not None and commit_frames < 0:
            raise DecoderError(f"commit_frames must be >= 0 (is {commit_frames})")
        self._decoder = decoder
        self._search = decoder._search.decoder
        self._search.decode_begin()
        self.frames = 0
        self.commit_frames = commit_frames
        # The fixed prefix: emitted token runs (ids, start frames, end frames), all ending at
        # or before frame self._fixed_end.
        self._fixed: tuple[list[int], list[int], list[int]] = ([], [], [])
        self._fixed_end = 0
        self._current: tuple[Hypothesis, list[int]] | None = None  # the best path now, its run ends
        fl = decoder._search
        self._ended_ranking = decoder._lexicon_mode and not decoder._pieces
        self._lm, self._spellings = fl.lm, fl.spellings
        self._lm_scores: dict[tuple[int, ...], tuple[Any, float]] = {(): (fl.lm.start(False), 0.0)}

    def step(self, log_probs: Tensor) -> None:
        em = log_probs.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if em.ndim != 2 or em.shape[1] != len(self._decoder.tokenizer.tokens):
            raise DecoderError(f"stream frames must be (T, {len(self._decoder.tokenizer.tokens)}); "
                               f"got {tuple(em.shape)}")
        if em.shape[0]:
            self._search.decode_step(em.data_ptr(), em.shape[0], em.shape[1])
            self.frames += em.shape[0]
            self._current = None
            if self.commit_frames is not None:
                self.partial()
                assert self._current is not None
                self._fix(*self._current)

    def partial(self) -> Hypothesis:
        if not self.frames:
            return EMPTY_HYPOTHESIS
        if self._current is None:
            # Not get_best_hypothesis(): in lexicon mode flashlight walks it back to the last
            # frame that completed a word (findBestAncestor), which holds a word back until the
            # "|" after it, about 300 ms later than greedy shows it, and the last word of a
            # segment until the final. The current frame's hypotheses (unsorted until
            # decode_end) include the word being spelled; _rank orders them.
            self._current = self._read(self._rank(self._search.get_all_final_hypothesis()))
        return self._current[0]

    def finish(self) -> Hypothesis:
        """The final hypothesis; the stream is then spent."""
        closing = self._decoder._closing_frame
        if closing is not None and self.frames:
            row = closing[None].contiguous()
            self._search.decode_step(row.data_ptr(), 1, row.shape[1])
        self._search.decode_end()
        if not self.frames:
            return EMPTY_HYPOTHESIS
        results = self._search.get_all_final_hypothesis()
        if not results:
            return EMPTY_HYPOTHESIS
        if self.commit_frames is None:
            return self._decoder._to_hypothesis(results[0], self.frames)
        return self._read(sorted(((float(h.score), h) for h in results), key=lambda k: k[0], reverse=True))[0]

    def _runs(self, result: Any) -> tuple[list[int], list[int], list[int]]:
        # result.tokens: one entry per frame, after a start-of-sentence entry (see _to_hypothesis).
        path = torch.tensor(list(result.tokens)[1 : self.frames + 1], dtype=torch.long)
        return label_runs(path, self._decoder.tokenizer.blank_id)

    def _rank(self, results: list[Any]) -> list[tuple[float, Any]]:
        """The current frame's hypotheses with their scores, best first. Lexicon mode with
        characters: scored as if the stream ended now (see the class docstring), those that
        could not end now after the rest, with their score so far; else their score so far."""
        if not self._ended_ranking:
            return sorted(((float(h.score), h) for h in results), key=lambda k: k[0], reverse=True)
        keyed = []
        for h in results:
            ended = self._ended_score(h)
            keyed.append((ended is not None, float(h.score) if ended is None else ended, h))
        keyed.sort(key=lambda k: k[:2], reverse=True)
        return [(score, h) for _, score, h in keyed]

    def _ended_score(self, result: Any) -> float | None:
        """``result``'s score had the stream ended at this frame, or None if it cannot end here
        (it is spelling no lexicon word). What flashlight's last steps would add: the closing
        "|" completes the word being spelled (its LM score replaces the trie look-ahead that
        ``result.lmScore`` holds, plus the word score), then ``decode_end`` adds the LM's
        end-of-sentence score. The "|" itself scores the same for every hypothesis."""
        word_ids = list(result.words)  # one entry per frame (-1: none), read once: a copy each time
        words = [w for w in word_ids if w >= 0]
        tokens = list(result.tokens)[1 : self.frames + 1]
        # The tokens after the last completed word's frame (flashlight marks a word where its
        # spelling's last token, the "|", is first emitted): the word being spelled.
        last = max((i for i, w in enumerate(word_ids) if w >= 0), default=0)
        spelled: list[int] = []
        prev = None
        blank, sil = self._decoder.tokenizer.blank_id, self._decoder._sil_id
        for t in tokens[last:]:
            if t != prev and t != blank and not (t == sil and not spelled):
                spelled.append(t)
            prev = t
        extra = 0.0
        if spelled:
            ids = self._spellings.get(tuple(spelled) + (sil,))
            if not ids:
                return None
            best = max(ids, key=lambda w: self._lm_score(tuple(words) + (w,))[1])
            words.append(best)
            extra = self._decoder.options.word_score or 0.0
        state, lm_total = self._lm_score(tuple(words))
        lm_total += self._lm.finish(state)[1]
        weight = self._decoder.options.lm_weight or 0.0
        return float(result.score) + weight * (lm_total - float(result.lmScore)) + extra

    def _lm_score(self, words: tuple[int, ...]) -> tuple[Any, float]:
        """The LM state after ``words`` and their summed LM score (cached per stream)."""
        hit = self._lm_scores.get(words)
        if hit is None:
            state, total = self._lm_score(words[:-1])
            state, score = self._lm.score(state, words[-1])
            hit = self._lm_scores[words] = (state, total + score)
        return hit

    def _read(self, ranked: list[tuple[float, Any]]) -> tuple[Hypothesis, list[int]]:
        """The best of ``ranked`` ((score, result) pairs, best first) that agrees with the fixed
        prefix, else the best spliced onto it (see the class docstring), with its score; and
        the end frames of its token runs."""
        if not ranked:
            return EMPTY_HYPOTHESIS, []
        if not self._fixed_end:
            score, best = ranked[0]
            tokens, starts, ends = self._runs(best)
        else:
            fixed_tokens, fixed_starts, fixed_ends = self._fixed
            # A path agrees when its tokens before the fixed end are the fixed ones (word
            # delimiters trailing them aside: a path may start the "|" a frame earlier).
            delim = None if self._decoder._pieces else self._decoder._sil_id
            (score, best), (tokens, starts, ends) = ranked[0], self._runs(ranked[0][1])  # if none agrees
            for k_score, h in ranked:
                runs = (tokens, starts, ends) if h is best else self._runs(h)
                head = runs[0][: bisect.bisect_left(runs[1], self._fixed_end)]
                while head and head[-1] == delim:
                    head = head[:-1]
                if head == fixed_tokens:
                    score, best, (tokens, starts, ends) = k_score, h, runs
                    break
            # The fixed runs, then this path's runs that start after them (a run that began
            # inside the fixed part belongs to it: for an agreeing path it is the same token).
            k = bisect.bisect_left(starts, self._fixed_end)
            gap: tuple[list[int], list[int]] = ([], [])
            if delim is not None and tokens[k:] and tokens[k] != delim:
                # A fixed word is complete, so a "|" follows it: here it began inside the fixed
                # part, or (a path that disagrees) the path read one word across the fixed end.
                gap = ([delim], [self._fixed_end])
            tokens = fixed_tokens + gap[0] + tokens[k:]
            starts = fixed_starts + gap[1] + starts[k:]
            ends = fixed_ends + gap[1] + ends[k:]
        words = split_words(tokens, starts, ends, self._decoder.tokenizer)
        return make_hypothesis(tokens, starts, words, score), ends

    def _fix(self, hyp: Hypothesis, ends: list[int]) -> None:
        """Fix the words of ``hyp`` that ended ``commit_frames`` or more frames ago and have a
        token after them (so they are complete)."""
        assert self.commit_frames is not None
        if not hyp.tokens:
            return
        last_start = hyp.timesteps[-1]
        end = self._fixed_end
        for w in hyp.words:
            if w.end <= self.frames - self.commit_frames and w.end <= last_start:
                end = max(end, w.end)
        if end > self._fixed_end:
            k = bisect.bisect_right(ends, end)
            self._fixed = (hyp.tokens[:k], hyp.timesteps[:k], ends[:k])
            self._fixed_end = end
