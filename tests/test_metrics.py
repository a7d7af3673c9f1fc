"""asr.metrics: corpus WER/CER against jiwer, alignments, bootstrap CIs, paired comparison."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest

from asr.metrics import ErrorCounts, bootstrap_ci, paired_bootstrap, score_corpus

REFS = ["the cat sat on the mat", "hello world", "one two three", "yes no yes", "a b"]
HYPS = ["the cat sit on mat", "hello there world", "", "yes no yes", "x a b c"]


def test_corpus_rates_equal_jiwer_over_the_whole_list():
    s = score_corpus(REFS, HYPS)
    assert s.wer == pytest.approx(jiwer.wer(REFS, HYPS))
    assert s.cer == pytest.approx(jiwer.cer(REFS, HYPS))
    # Corpus-level, not the mean of per-utterance rates (these differ on this data).
    mean_utt = np.mean([u.wer for u in s.utterances])
    assert s.wer != pytest.approx(mean_utt)
    assert s.words == ErrorCounts(hits=11, substitutions=1, deletions=4, insertions=3)
    assert s.words.ref_len == sum(len(r.split()) for r in REFS)
    assert sum(u.words.errors for u in s.utterances) == s.words.errors
    assert sum(u.chars.errors for u in s.utterances) == s.chars.errors
    assert s.sentence_error_rate == pytest.approx(4 / 5)


def test_per_utterance_counts_and_ops():
    s = score_corpus(["a b c"], ["a x c d"])
    u = s.utterances[0]
    assert (u.words.substitutions, u.words.deletions, u.words.insertions) == (1, 0, 1)
    assert u.ops == [
        {"op": "equal", "ref": "a", "hyp": "a"},
        {"op": "substitute", "ref": "b", "hyp": "x"},
        {"op": "equal", "ref": "c", "hyp": "c"},
        {"op": "insert", "ref": None, "hyp": "d"},
    ]
    assert u.wer == pytest.approx(2 / 3)


def test_ops_rebuild_reference_and_hypothesis():
    s = score_corpus(REFS, HYPS)
    for u in s.utterances:
        assert " ".join(o["ref"] for o in u.ops if o["ref"] is not None) == u.reference
        assert " ".join(o["hyp"] for o in u.ops if o["hyp"] is not None) == u.hypothesis
        assert sum(o["op"] != "equal" for o in u.ops) == u.words.errors


def test_empty_hypothesis_is_all_deletions():
    u = score_corpus(["one two three"], [""]).utterances[0]
    assert u.words == ErrorCounts(0, 0, 3, 0)
    assert [o["op"] for o in u.ops] == ["delete"] * 3
    assert u.wer == 1.0


def test_empty_reference_counts_insertions_and_corpus_stays_defined():
    s = score_corpus(["", "a b"], ["x y", "a b"])
    first = s.utterances[0]
    assert first.words == ErrorCounts(0, 0, 0, 2)
    assert first.wer is None  # undefined for this utterance alone
    assert s.wer == pytest.approx(2 / 2)


def test_whitespace_runs_do_not_count_as_characters():
    s = score_corpus(["a  b"], [" a b "])
    assert s.cer == 0.0 and s.wer == 0.0


@pytest.mark.parametrize(
    ("refs", "hyps", "match"),
    [
        (["", "  "], ["a", ""], "all 2 references are empty"),
        ([], [], "empty corpus"),
        (["a"], ["a", "b"], "1 references but 2 hypotheses"),
    ],
)
def test_bad_input_raises(refs, hyps, match):
    with pytest.raises(ValueError, match=match):
        score_corpus(refs, hyps)


def _counts(n: int = 500, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 25, n)
    errors = rng.binomial(lens, 0.2)
    return errors, lens


def test_bootstrap_ci_contains_point_and_is_deterministic():
    errors, lens = _counts()
    point = errors.sum() / lens.sum()
    ci = bootstrap_ci(errors, lens, num_resamples=1000, seed=7)
    assert ci.low < point < ci.high
    assert ci.high - ci.low < 0.05  # ~8k words at 20%: the interval is a few points wide
    assert ci == bootstrap_ci(errors, lens, num_resamples=1000, seed=7)
    assert ci != bootstrap_ci(errors, lens, num_resamples=1000, seed=8)


def test_bootstrap_blocks_give_the_same_answer(monkeypatch):
    import asr.metrics as m

    errors, lens = _counts(300)
    whole = bootstrap_ci(errors, lens, num_resamples=250, seed=3)
    monkeypatch.setattr(m, "_BOOTSTRAP_BLOCK", 300 * 7)  # 7 resamples per block
    assert bootstrap_ci(errors, lens, num_resamples=250, seed=3) == whole


def test_bootstrap_single_utterance_has_zero_width():
    ci = bootstrap_ci(np.array([2]), np.array([8]), num_resamples=50)
    assert ci.low == ci.high == 0.25


def test_bootstrap_ignores_resamples_without_reference_words():
    # Half the utterances have empty references; any resample holding only those is dropped.
    ci = bootstrap_ci(np.array([1, 3]), np.array([0, 4]), num_resamples=200, seed=0)
    assert 0.75 <= ci.low <= ci.high <= 1.0


@pytest.mark.parametrize(
    ("errors", "lens", "kwargs", "match"),
    [
        ([], [], {}, "at least one utterance"),
        ([1, 2], [3], {}, "same length"),
        ([1], [0], {}, "at least one reference"),
        ([1], [3], {"num_resamples": 0}, "num_resamples"),
        ([1], [3], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bootstrap_bad_input(errors, lens, kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(np.array(errors), np.array(lens), **kwargs)


def test_paired_bootstrap_identical_systems():
    errors, lens = _counts()
    p = paired_bootstrap(errors, errors, lens, num_resamples=300)
    assert p.delta == 0.0 and p.delta_low == 0.0 and p.delta_high == 0.0
    assert p.p_b_better == 0.0 and p.p_a_better == 0.0


def test_paired_bootstrap_clearly_better_system():
    errors_a, lens = _counts()
    errors_b = np.maximum(errors_a - 1, 0)  # B fixes one error wherever A has any
    p = paired_bootstrap(errors_a, errors_b, lens, num_resamples=500, seed=2)
    assert p.rate_a == pytest.approx(errors_a.sum() / lens.sum())
    assert p.rate_b == pytest.approx(errors_b.sum() / lens.sum())
    assert p.delta_low <= p.delta <= p.delta_high < 0
    assert p.p_b_better == 1.0
    assert p == paired_bootstrap(errors_a, errors_b, lens, num_resamples=500, seed=2)
    swapped = paired_bootstrap(errors_b, errors_a, lens, num_resamples=500, seed=2)
    assert swapped.p_a_better == 1.0 and swapped.delta == pytest.approx(-p.delta)


def test_paired_bootstrap_noise_is_undecided():
    rng = np.random.default_rng(0)
    lens = rng.integers(5, 15, 400)
    a = rng.binomial(lens, 0.2)
    b = rng.binomial(lens, 0.2)
    p = paired_bootstrap(a, b, lens, num_resamples=1000, seed=0)
    assert p.delta_low < 0 < p.delta_high
    assert 0.02 < p.p_b_better < 0.98


def test_cer_without_spaces_is_deepspeech_pytorch_convention():
    """Spaces removed from both sides: a split word costs no error, an empty ref inserts."""
    refs, hyps = ["a b c", "hello world", ""], ["a b", "hel lo world", "x y"]
    s = score_corpus(refs, hyps)
    # "abc"->"ab": 1 del; "helloworld"->"helloworld": 0; ""->"xy": 2 ins; 13 ref chars.
    assert s.chars_no_space == ErrorCounts(hits=12, substitutions=0, deletions=1, insertions=2)
    assert s.cer_no_space == pytest.approx(3 / 13)
    errors, lens = s.char_no_space_arrays()
    assert errors.tolist() == [1, 0, 2] and lens.tolist() == [3, 10, 0]
    assert s.cer > s.cer_no_space  # the spaced CER counts the split "hel lo" as an insertion
