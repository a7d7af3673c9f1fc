"""Decoding with a package's phone head: a lexicon beam search over phones, and both heads'
n-best lists rescored together (``--phone-weight``).

A model trained with ``model.phone_ctc_weight > 0`` has an auxiliary phone CTC head on one of
its recurrent layers; ``asr export`` puts it in the package with its phones and the
pronunciations of the training words (:class:`asr.package.PhoneHead`). Then:

- :class:`PhoneDecoder` decodes the phone head's log-probs with flashlight's lexicon beam
  search (torchaudio's ``ctc_decoder``) over those pronunciations and a word KenLM.
- :class:`TwoHeadDecoder` runs the character beam (n-best) and the phone beam (n-best) on the
  same utterance, pools their texts and picks the one maximising
  ``(1 - w) * char CTC log-lik + w * phone CTC log-lik + lm_weight * log10 P_LM + word_score * words``
  (``w`` = ``DecodingOptions.phone_weight``; the LM weight and word score are the character
  beam's, so ``asr lm tune``'s values serve both; it also tunes ``w``). On speechocean762
  (so9) this is 56.81% dev WER against 59.32% for the character beam alone, -2.52 points
  [-3.71, -1.31] in ``asr compare`` (recipes/speechocean762/README.md).

Tokens of the phone search: blank (id 0, as the head was trained), the head's phones, and a
word-boundary token the model never emits (its log-prob is fixed very low), the way NeMo
decodes BPE. Without a boundary token a word ends with its last phone, and flashlight's
search, back at the trie root, could not hold that phone over several frames; so, as
:mod:`asr.decode.beam` does for word pieces, each word is also spelled with its last phone
doubled ("K AE T T"): a repeat without a blank cannot enter a trie node but can complete a
word there.

Why rescoring is written here and not taken from a library: flashlight searches one
emission matrix at a time, and neither it nor torchaudio combines two CTC heads; the
per-text CTC log-likelihoods are ``torch.nn.functional.ctc_loss`` and the word times of a
text only the phone beam found come from ``torchaudio.functional.forced_align`` on the
character head.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from asr.decode.beam import BeamSearchDecoder
from asr.decode.decoding import (
    DecoderError,
    DecodingOptions,
    Hypothesis,
    label_runs,
    make_hypothesis,
    split_words,
)
from asr.decode.lm_files import search_spellings
from asr.files import atomic_write_text
from asr.text import Tokenizer, TokenizerError

BLANK = "<blank>"
BOUNDARY = "<sil>"  # flashlight's silence token: a word boundary the model never emits
UNK = "<unk>"
_BEAM = DecodingOptions(decoder="beam")  # the toolkit's beam size / threshold defaults
_NEVER = -1.0e4  # log-prob of BOUNDARY in every frame (finite: see asr.decode.beam's closing frame)
RESCORE_NBEST = 10  # hypotheses each beam contributes to the pool (TwoHeadDecoder)


def write_search_lexicon(prons: dict[str, tuple[str, ...]], path: str | Path) -> None:
    """flashlight lexicon: ``word<TAB>phones`` and the same with the last phone doubled
    (phones have no word delimiter: :func:`asr.decode.lm_files.search_spellings`)."""
    lines = []
    for word, ps in sorted(prons.items()):
        lines += [f"{word}\t{' '.join(sp)}\n" for sp in search_spellings(ps, delimiter=None)]
    atomic_write_text(Path(path), "".join(lines))


class PhoneHyp(NamedTuple):
    text: str
    score: float


class PhoneDecoder:
    """Lexicon beam search over phone-head log-probs (N, T, 1 + len(phones)), optional word LM."""

    def __init__(self, phones: Sequence[str], prons: dict[str, tuple[str, ...]], lm: str | None = None,
                 lm_weight: float = 1.0, word_score: float = 0.0,
                 beam_size: int = _BEAM.beam_size, beam_threshold: float = _BEAM.beam_threshold,
                 nbest: int = 1) -> None:
        from torchaudio.models.decoder import ctc_decoder

        if not prons:
            raise DecoderError("the phone decoding lexicon is empty")
        self.tokens = [BLANK, *phones, BOUNDARY]
        with tempfile.TemporaryDirectory(prefix="phone-lexicon-") as tmp:
            lex = Path(tmp) / "lexicon.txt"
            write_search_lexicon(prons, lex)
            try:
                self._decoder = ctc_decoder(
                    lexicon=str(lex), tokens=self.tokens, lm=lm, nbest=nbest, beam_size=beam_size,
                    beam_threshold=beam_threshold, lm_weight=lm_weight, word_score=word_score,
                    sil_score=0.0, blank_token=BLANK, sil_token=BOUNDARY, unk_word=UNK,
                )
            except (RuntimeError, ValueError, IndexError) as e:  # what flashlight/KenLM raise on a bad file
                raise DecoderError(f"{lm or 'lexicon'}: cannot build the phone beam search: {e}") from None

    def __call__(self, log_probs: Tensor, lengths: Tensor) -> list[list[PhoneHyp]]:
        """Per utterance, up to nbest (text, score) best first; an empty utterance gives ""."""
        n, t, v = log_probs.shape
        if v != len(self.tokens) - 1:
            raise DecoderError(f"log_probs have {v} classes; the phone head has {len(self.tokens) - 1}")
        em = torch.cat([log_probs.detach().float().cpu(), torch.full((n, t, 1), _NEVER)], dim=-1)
        out = []
        for b, hyps in enumerate(self._decoder(em.contiguous(), lengths.cpu().to(torch.int32))):
            if int(lengths[b]) == 0 or not hyps:
                out.append([PhoneHyp("", 0.0)])
                continue
            out.append([PhoneHyp(" ".join(h.words), float(h.score)) for h in hyps])
        return out


# --------------------------------------------------------------------------------------------
# both heads


def ctc_log_likelihood(log_probs: Tensor, targets: Sequence[int], blank: int = 0) -> float:
    """log P(targets | log_probs (T, V)) under CTC; -inf when no alignment fits."""
    if log_probs.shape[0] == 0:
        return 0.0 if not targets else -math.inf
    if not targets:
        return float(log_probs[:, blank].double().sum())
    tgt = torch.tensor([list(targets)], dtype=torch.long)
    loss = torch.nn.functional.ctc_loss(log_probs[:, None].float(), tgt, torch.tensor([log_probs.shape[0]]),
                                        torch.tensor([len(targets)]), blank=blank, reduction="sum")
    return -float(loss)


def phone_ids(text: str, prons: dict[str, tuple[str, ...]], phones: Sequence[str]) -> list[int] | None:
    """The phone head's target ids of ``text`` (phone i is id i + 1), None if a word has no pronunciation."""
    index = {p: i + 1 for i, p in enumerate(phones)}
    ids: list[int] = []
    for w in text.split():
        if w not in prons:
            return None
        ids.extend(index[p] for p in prons[w])
    return ids


@dataclass(frozen=True)
class Candidate:
    text: str
    char_ll: float  # CTC log-likelihood under the character head
    phone_ll: float  # ... under the phone head (-inf: a word without a pronunciation)
    lm: float  # KenLM log10 probability of the sentence (with <s>, </s>); 0 without an LM
    words: int


def candidates(texts: Sequence[str], char_lp: Tensor, phone_lp: Tensor, tokenizer: Tokenizer,
               prons: dict[str, tuple[str, ...]], phones: Sequence[str], lm: Any) -> list[Candidate]:
    """Features of each distinct text for one utterance (see :func:`combine`); ``lm`` a
    ``kenlm.Model`` or None."""
    out = []
    for t in dict.fromkeys(texts):
        ids = phone_ids(t, prons, phones)
        try:
            char_ll = ctc_log_likelihood(char_lp, tokenizer.encode(t), tokenizer.blank_id)
        except TokenizerError:  # a phone-lexicon word the character head cannot spell
            char_ll = -math.inf
        out.append(Candidate(
            t, char_ll,
            -math.inf if ids is None else ctc_log_likelihood(phone_lp, ids),
            lm.score(t, bos=True, eos=True) if lm is not None else 0.0, len(t.split())))
    return out


def combined_score(c: Candidate, phone_weight: float, lm_weight: float, word_score: float) -> float:
    """``(1 - w) * char_ll + w * phone_ll + lm_weight * lm + word_score * words``; a text
    without a phone score competes on the character head alone, one the character head
    cannot align scores -inf."""
    if math.isinf(c.char_ll):
        return -math.inf
    am = c.char_ll if math.isinf(c.phone_ll) else (1 - phone_weight) * c.char_ll + phone_weight * c.phone_ll
    return am + lm_weight * c.lm + word_score * c.words


def best_candidate(cands: Sequence[Candidate], phone_weight: float, lm_weight: float,
                   word_score: float) -> tuple[Candidate, float]:
    """The candidate with the best :func:`combined_score`, and that score (``cands`` non-empty)."""
    scored = [(combined_score(c, phone_weight, lm_weight, word_score), i) for i, c in enumerate(cands)]
    score, i = max(scored, key=lambda si: si[0])  # the first of equal scores
    return cands[i], score


def combine(cands: Sequence[Candidate], phone_weight: float, lm_weight: float, word_score: float) -> str:
    """The text with the best :func:`combined_score` ("" for no candidates)."""
    return best_candidate(cands, phone_weight, lm_weight, word_score)[0].text if cands else ""


def aligned_hypothesis(text: str, log_probs: Tensor, tokenizer: Tokenizer, score: float) -> Hypothesis:
    """``text`` as a :class:`Hypothesis` with the word times of its best CTC alignment to
    ``log_probs`` (T, V) (torchaudio's ``forced_align``); the text must be alignable."""
    import torchaudio.functional as taf

    ids = tokenizer.encode(text)
    if not ids:
        return make_hypothesis([], [], [], score)
    path, _ = taf.forced_align(log_probs[None].float().contiguous(), torch.tensor([ids], dtype=torch.int32),
                               blank=tokenizer.blank_id)
    tokens, starts, ends = label_runs(path[0].long(), tokenizer.blank_id)
    return make_hypothesis(tokens, starts, split_words(tokens, starts, ends, tokenizer), score)


@dataclass
class Pool:
    """One utterance's pooled texts (both beams' n-best) and what picking among them needs."""

    cands: list[Candidate]
    char_hyps: list[Hypothesis]  # the character beam's n-best, best first (word times)
    char_lp: Tensor  # (T, V) character log-probs, for aligning a text only the phone beam found


class TwoHeadDecoder:
    """Character beam + phone beam, n-best lists pooled and rescored (module docstring).

    Called like the other decoders, but on *joint* emissions: (N, T, V + 1 + P), the
    character log-probs followed by the phone head's (what
    :func:`asr.infer.engine.forward_batch` returns with ``phones=True``; the
    :class:`asr.decode.factory.Decoder` built around it says so in its ``joint_emissions`` field).
    Returns, per utterance, the best text as a one-item list.
    :meth:`pool` and :meth:`pick` are the two halves, so that ``asr lm tune`` searches the
    phone weight without running the beams again.
    """

    def __init__(self, tokenizer: Tokenizer, phones: Sequence[str], prons: dict[str, tuple[str, ...]],
                 options: DecodingOptions) -> None:
        opts = replace(options, decoder="beam").with_weights()
        assert opts.lm_weight is not None and opts.word_score is not None and opts.phone_weight is not None
        if not 0.0 < opts.phone_weight <= 1.0:
            raise DecoderError(f"phone_weight must be in (0, 1] for two-head decoding (is {opts.phone_weight})")
        nbest = min(max(RESCORE_NBEST, opts.nbest), opts.beam_size)
        self.char = BeamSearchDecoder(tokenizer, replace(opts, phone_weight=0.0, nbest=nbest))
        if opts.lm is not None and self.char.settings()["mode"] != "lexicon":
            raise DecoderError(f"{opts.lm}: --phone-weight needs a word LM (this one scores tokens)")
        self.phone = PhoneDecoder(phones, prons, lm=opts.lm, lm_weight=opts.lm_weight, word_score=opts.word_score,
                                  beam_size=opts.beam_size, beam_threshold=opts.beam_threshold, nbest=nbest)
        self.lm = None
        if opts.lm is not None:
            import kenlm

            self.lm = kenlm.Model(opts.lm)
        self.options = opts
        self.rescore_nbest = nbest
        self.phone_weight = float(opts.phone_weight)
        self.lm_weight, self.word_score = float(opts.lm_weight), float(opts.word_score)
        self.tokenizer = tokenizer
        self.phones = tuple(phones)
        self.prons = dict(prons)

    def settings(self) -> dict[str, Any]:
        d = self.char.settings()
        d.update(phone_weight=self.phone_weight, nbest=self.options.nbest, rescore_nbest=self.rescore_nbest,
                 mode=f"{d['mode']} + phone beam, rescored", phone_lexicon_words=len(self.prons))
        return d

    def pool(self, joint: Tensor, lengths: Tensor) -> list[Pool]:
        """Both beams' n-best texts of each utterance, with their scores under both heads and the LM."""
        v = self.tokenizer.vocab_size
        if joint.ndim != 3 or joint.shape[2] != v + 1 + len(self.phones):
            raise DecoderError(f"joint emissions must be (N, T, {v} + {1 + len(self.phones)}); got "
                               f"{tuple(joint.shape)}")
        joint = joint.detach().float().cpu()
        char_lp, phone_lp = joint[..., :v], joint[..., v:]
        char_hyps = self.char(char_lp, lengths)
        phone_hyps = self.phone(phone_lp, lengths)
        pools = []
        for b, n in enumerate(int(x) for x in lengths.tolist()):
            texts = [h.text for h in char_hyps[b]] + [h.text for h in phone_hyps[b]]
            cands = candidates(texts, char_lp[b, :n], phone_lp[b, :n], self.tokenizer, self.prons, self.phones,
                               self.lm)
            pools.append(Pool(cands, char_hyps[b], char_lp[b, :n]))
        return pools

    def pick(self, pool: Pool, phone_weight: float | None = None, align: bool = True) -> Hypothesis:
        """The pooled text with the best :func:`combined_score` (``phone_weight``: this
        decoder's unless given), with word times (``align``: a text only the phone beam
        found is aligned to the character head; without it, its words carry no times)."""
        w = self.phone_weight if phone_weight is None else phone_weight
        best, score = best_candidate(pool.cands, w, self.lm_weight, self.word_score)
        by_text = {h.text: h for h in pool.char_hyps}
        if best.text in by_text:
            return replace(by_text[best.text], score=score)
        if math.isinf(score) or pool.char_lp.shape[0] == 0:
            return pool.char_hyps[0]  # nothing alignable: the character beam's answer
        if not align:
            return Hypothesis(best.text, [], [], score, [])
        return aligned_hypothesis(best.text, pool.char_lp, self.tokenizer, score)

    def __call__(self, joint: Tensor, lengths: Tensor) -> list[list[Hypothesis]]:
        return [[self.pick(p)] for p in self.pool(joint, lengths)]
