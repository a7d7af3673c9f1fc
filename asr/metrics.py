"""Corpus-level WER/CER, word alignments and bootstrap confidence intervals.

Error rates are corpus-level: total edits over total reference words (or characters), as
``jiwer.process_words`` / ``jiwer.process_characters`` compute them over the whole list.
Averaging per-utterance rates would over-weight short utterances.

The bootstrap resamples *utterances* (not words), because errors inside one utterance are
correlated; it only needs each utterance's error and reference-length counts, so it is
vectorised over integer arrays and costs milliseconds for thousands of utterances.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

# Alignment operation names (jiwer's chunk types), as written to utterances.jsonl.
OPS = ("equal", "substitute", "delete", "insert")

# Cap on the number of resampled indices held in memory at once (resamples x utterances);
# 4M int64 = 32 MB, so 1000 resamples of 100k utterances run in blocks instead of 800 MB.
_BOOTSTRAP_BLOCK = 4_000_000


@dataclass(frozen=True)
class ErrorCounts:
    """Edit counts of a hypothesis against a reference (words or characters)."""

    hits: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_len(self) -> int:
        """Number of reference tokens: every one is a hit, a substitution or a deletion."""
        return self.hits + self.substitutions + self.deletions

    @property
    def hyp_len(self) -> int:
        return self.hits + self.substitutions + self.insertions

    def rate(self) -> float | None:
        """errors / ref_len, or None where the reference is empty (the rate is undefined)."""
        return self.errors / self.ref_len if self.ref_len else None

    def to_dict(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "errors": self.errors,
            "reference": self.ref_len,
            "hypothesis": self.hyp_len,
        }


@dataclass(frozen=True)
class UtteranceScore:
    """Scores of one utterance. ``ops`` is the word alignment, one dict per aligned word:
    ``{"op": "equal"|"substitute"|"delete"|"insert", "ref": str|None, "hyp": str|None}``."""

    reference: str
    hypothesis: str
    words: ErrorCounts
    chars: ErrorCounts
    ops: list[dict[str, str | None]]

    @property
    def wer(self) -> float | None:
        return self.words.rate()

    @property
    def cer(self) -> float | None:
        return self.chars.rate()


@dataclass(frozen=True)
class CorpusScore:
    """Corpus-level scores plus the per-utterance breakdown (same order as the input)."""

    wer: float
    cer: float
    words: ErrorCounts
    chars: ErrorCounts
    sentence_error_rate: float  # fraction of utterances with at least one word error
    utterances: list[UtteranceScore]
    # Character errors with the spaces removed from both sides: deepspeech.pytorch's CER (its
    # published AN4/LibriSpeech numbers); ``cer`` keeps the spaces, as ESPnet and jiwer do.
    chars_no_space: ErrorCounts | None = None
    utterance_chars_no_space: list[ErrorCounts] | None = None

    @property
    def cer_no_space(self) -> float | None:
        return self.chars_no_space.rate() if self.chars_no_space is not None else None

    @property
    def num_utterances(self) -> int:
        return len(self.utterances)

    def word_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(errors (U,), ref_words (U,)) int64 arrays for :func:`bootstrap_ci`."""
        return (
            np.array([u.words.errors for u in self.utterances], dtype=np.int64),
            np.array([u.words.ref_len for u in self.utterances], dtype=np.int64),
        )

    def char_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(errors (U,), ref_chars (U,)) int64 arrays for :func:`bootstrap_ci`."""
        return (
            np.array([u.chars.errors for u in self.utterances], dtype=np.int64),
            np.array([u.chars.ref_len for u in self.utterances], dtype=np.int64),
        )

    def char_no_space_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`char_arrays` for the CER without spaces."""
        counts = self.utterance_chars_no_space or []
        return (
            np.array([c.errors for c in counts], dtype=np.int64),
            np.array([c.ref_len for c in counts], dtype=np.int64),
        )


def _canonical(text: str) -> str:
    # jiwer's word transform collapses runs of spaces but its character transform does not;
    # collapsing here keeps CER consistent with the word split and with jiwer.cer on the
    # strings we write out.
    return " ".join(text.split())


def _chunk_counts(chunks) -> ErrorCounts:
    n = {op: 0 for op in OPS}
    for c in chunks:
        if c.type == "insert":
            n["insert"] += c.hyp_end_idx - c.hyp_start_idx
        else:
            n[c.type] += c.ref_end_idx - c.ref_start_idx
    return ErrorCounts(n["equal"], n["substitute"], n["delete"], n["insert"])


def _word_ops(ref: list[str], hyp: list[str], chunks) -> list[dict[str, str | None]]:
    ops: list[dict[str, str | None]] = []
    for c in chunks:
        if c.type in ("equal", "substitute"):
            # jiwer guarantees equal ref/hyp span lengths for these chunk types.
            for i, j in zip(
                range(c.ref_start_idx, c.ref_end_idx),
                range(c.hyp_start_idx, c.hyp_end_idx),
                strict=True,
            ):
                ops.append({"op": c.type, "ref": ref[i], "hyp": hyp[j]})
        elif c.type == "delete":
            ops.extend(
                {"op": "delete", "ref": ref[i], "hyp": None}
                for i in range(c.ref_start_idx, c.ref_end_idx)
            )
        else:
            ops.extend(
                {"op": "insert", "ref": None, "hyp": hyp[j]}
                for j in range(c.hyp_start_idx, c.hyp_end_idx)
            )
    return ops


def score_corpus(references: Sequence[str], hypotheses: Sequence[str]) -> CorpusScore:
    """Score hypotheses against references (already normalised text, same order).

    Empty hypotheses count every reference word as a deletion; empty references count every
    hypothesis word as an insertion. Raises ValueError if the lists differ in length or if
    the whole corpus has no reference words (WER would divide by zero).
    """
    if len(references) != len(hypotheses):
        raise ValueError(
            f"{len(references)} references but {len(hypotheses)} hypotheses; they must pair up"
        )
    if not references:
        raise ValueError("cannot score an empty corpus (no utterances)")
    refs = [_canonical(t) for t in references]
    hyps = [_canonical(t) for t in hypotheses]
    if not any(refs):
        raise ValueError(
            f"all {len(refs)} references are empty after normalisation; WER is undefined "
            "(no reference words)"
        )

    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    refs_ns = [t.replace(" ", "") for t in refs]
    hyps_ns = [t.replace(" ", "") for t in hyps]
    ns_counts = _no_space_counts(refs_ns, hyps_ns)
    utts: list[UtteranceScore] = []
    for i in range(len(refs)):
        utts.append(
            UtteranceScore(
                reference=refs[i],
                hypothesis=hyps[i],
                words=_chunk_counts(w.alignments[i]),
                chars=_chunk_counts(c.alignments[i]),
                ops=_word_ops(w.references[i], w.hypotheses[i], w.alignments[i]),
            )
        )
    words = ErrorCounts(w.hits, w.substitutions, w.deletions, w.insertions)
    chars = ErrorCounts(c.hits, c.substitutions, c.deletions, c.insertions)
    # The per-utterance counts must add up to jiwer's corpus totals (internal invariant).
    assert sum(u.words.errors for u in utts) == words.errors
    assert sum(u.chars.errors for u in utts) == chars.errors
    ser = sum(1 for u in utts if u.words.errors > 0) / len(utts)
    return CorpusScore(
        wer=float(w.wer),
        cer=float(c.cer),
        words=words,
        chars=chars,
        sentence_error_rate=ser,
        utterances=utts,
        chars_no_space=ErrorCounts(
            *(sum(getattr(n, f) for n in ns_counts) for f in ("hits", "substitutions", "deletions", "insertions"))
        ),
        utterance_chars_no_space=ns_counts,
    )


def _no_space_counts(refs: list[str], hyps: list[str]) -> list[ErrorCounts]:
    """Per-utterance character error counts of space-free strings.

    An empty reference (not aligned: jiwer may refuse it) counts every hypothesis character
    as an insertion.
    """
    counts: list[ErrorCounts | None] = [None] * len(refs)
    pairs = [i for i in range(len(refs)) if refs[i]]
    for i in range(len(refs)):
        if not refs[i]:
            counts[i] = ErrorCounts(0, 0, 0, len(hyps[i]))
    if pairs:
        c = jiwer.process_characters([refs[i] for i in pairs], [hyps[i] for i in pairs])
        for k, i in enumerate(pairs):
            counts[i] = _chunk_counts(c.alignments[k])
    return [n for n in counts if n is not None]


def _resampled_sums(
    arrays: Sequence[np.ndarray], num_resamples: int, seed: int
) -> list[np.ndarray]:
    """Sum each (U,) array over ``num_resamples`` bootstrap resamples of utterance indices.

    The same indices are used for every array (that is what makes a paired test paired).
    Returns one (num_resamples,) array per input array.
    """
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    block = max(1, _BOOTSTRAP_BLOCK // max(n, 1))
    out = [np.empty(num_resamples, dtype=np.int64) for _ in arrays]
    for start in range(0, num_resamples, block):
        stop = min(start + block, num_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # (B, U)
        for a, o in zip(arrays, out, strict=True):
            o[start:stop] = a[idx].sum(axis=1)
    return out


def _check_counts(errors: np.ndarray, ref_lens: np.ndarray, num_resamples: int) -> None:
    if errors.ndim != 1 or errors.shape != ref_lens.shape:
        raise ValueError(
            f"errors {errors.shape} and ref_lens {ref_lens.shape} must be 1-D of the same length"
        )
    if errors.size == 0:
        raise ValueError("bootstrap needs at least one utterance")
    if ref_lens.sum() <= 0:
        raise ValueError("bootstrap needs at least one reference word/character")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1 (is {num_resamples})")


@dataclass(frozen=True)
class ConfidenceInterval:
    low: float
    high: float
    confidence: float
    num_resamples: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "num_resamples": self.num_resamples,
            "seed": self.seed,
        }


def bootstrap_ci(
    errors: np.ndarray,
    ref_lens: np.ndarray,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap CI of a corpus error rate, resampling utterances.

    errors, ref_lens: (U,) per-utterance edit counts and reference lengths.
    Resamples whose reference length is zero (only possible with empty references) have no
    defined rate and are dropped. Deterministic for a given seed.
    """
    errors = np.asarray(errors, dtype=np.int64)
    ref_lens = np.asarray(ref_lens, dtype=np.int64)
    _check_counts(errors, ref_lens, num_resamples)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1) (is {confidence})")
    err_sum, len_sum = _resampled_sums([errors, ref_lens], num_resamples, seed)
    ok = len_sum > 0
    rates = err_sum[ok] / len_sum[ok]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(rates, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(low), float(high), confidence, num_resamples, seed)


@dataclass(frozen=True)
class PairedComparison:
    """Paired bootstrap of system B against system A over the same utterances.

    delta = rate_B - rate_A (negative: B makes fewer errors).
    """

    rate_a: float
    rate_b: float
    delta: float
    delta_low: float
    delta_high: float
    p_b_better: float  # fraction of resamples where B's rate is strictly lower than A's
    p_a_better: float  # ... strictly higher; the rest are ties
    confidence: float
    num_resamples: int
    seed: int

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_lens: np.ndarray,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Paired bootstrap comparison (Koehn 2004, Bisani & Ney 2004) of two systems.

    errors_a, errors_b, ref_lens: (U,) counts for the same utterances in the same order.
    Each resample draws one set of utterance indices and scores both systems on it, so
    utterance difficulty cancels out of the difference.
    """
    errors_a = np.asarray(errors_a, dtype=np.int64)
    errors_b = np.asarray(errors_b, dtype=np.int64)
    ref_lens = np.asarray(ref_lens, dtype=np.int64)
    _check_counts(errors_a, ref_lens, num_resamples)
    _check_counts(errors_b, ref_lens, num_resamples)
    total = ref_lens.sum()
    rate_a = float(errors_a.sum() / total)
    rate_b = float(errors_b.sum() / total)
    # Summing the per-utterance difference gives B-A directly from one resampled sum.
    diff_sum, len_sum = _resampled_sums([errors_b - errors_a, ref_lens], num_resamples, seed)
    ok = len_sum > 0
    deltas = diff_sum[ok] / len_sum[ok]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(deltas, [alpha, 1.0 - alpha])
    return PairedComparison(
        rate_a=rate_a,
        rate_b=rate_b,
        delta=rate_b - rate_a,
        delta_low=float(low),
        delta_high=float(high),
        p_b_better=float(np.mean(deltas < 0)),
        p_a_better=float(np.mean(deltas > 0)),
        confidence=confidence,
        num_resamples=num_resamples,
        seed=seed,
    )
