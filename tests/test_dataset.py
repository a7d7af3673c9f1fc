"""Dataset filtering (counted, never silent), features and collate."""

import numpy as np
import soundfile as sf
import torch

from asr.data.dataset import FeatureDataset, collate, ctc_min_frames, filter_utterances
from asr.data.manifest import Utterance
from asr.features import FeatureConfig
from asr.model import ConvSubsampling
from asr.text import CharTokenizer

CFG = FeatureConfig()
TOK = CharTokenizer.from_texts(["hello world", "aab"])


def utt(uid, dur, text, audio="x.wav"):
    return Utterance(id=uid, audio=audio, duration=dur, text=text, speaker="s", sample_rate=16000)


def test_ctc_min_frames_counts_repeats():
    assert ctc_min_frames([1, 2, 3]) == 3
    assert ctc_min_frames([1, 1, 2, 2, 2]) == 8
    assert ctc_min_frames([]) == 0


def test_filter_skips_and_counts_with_reasons():
    out4 = lambda n: ConvSubsampling.out_lengths(n, 4)  # noqa: E731
    utts = [
        utt("ok", 2.0, "hello world"),
        utt("short", 0.1, "hello world"),  # 11 frames -> 3 output frames < 11 tokens
        utt("long", 40.0, "hello"),
        utt("oov", 2.0, "hello zzz"),
    ]
    keep, targets, skipped = filter_utterances(utts, TOK, CFG, out4, max_duration=30.0)
    assert [u.id for u in keep] == ["ok"]
    assert targets[0] == TOK.encode("hello world")
    reasons = dict(skipped.items)
    assert set(reasons) == {"short", "long", "oov"}
    assert reasons["short"].startswith("ctc-infeasible")
    assert reasons["long"].startswith("too long")
    assert len(skipped) == 3 and "ctc-infeasible" in skipped.summary()


def test_dataset_features_cache_and_collate(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, n in enumerate([8000, 4000]):
        p = tmp_path / f"{i}.wav"
        sf.write(p, rng.standard_normal(n).astype("float32") * 0.1, 8000)  # 8 kHz -> 16 kHz
        paths.append(str(p))
    utts = [utt("a", 1.0, "aab", paths[0]), utt("b", 0.5, "hello", paths[1])]
    ds = FeatureDataset(utts, [TOK.encode("aab"), TOK.encode("hello")], CFG, cache=True)
    uid, feats, target = ds[0]
    assert uid == "a" and feats.shape == (101, 80) and target.tolist() == TOK.encode("aab")
    assert (0, 1.0) in ds.cache and ds[0][1] is feats
    batch = collate([ds[0], ds[1]])
    assert batch.feats.shape == (2, 101, 80)
    assert batch.feat_lens.tolist() == [101, 51]
    assert batch.target_lens.tolist() == [3, 5]
    assert batch.feats[1, 51:].abs().sum() == 0
    assert batch.targets[0, 3:].tolist() == [0, 0]
    assert batch.ids == ["a", "b"]
    torch.testing.assert_close(batch.feats[1, :51], ds[1][1])


def test_speed_perturbed_versions_are_cached_and_sized(tmp_path):
    from asr.data.dataset import fill_cache

    p = tmp_path / "a.wav"
    sf.write(p, np.random.default_rng(0).standard_normal(16000).astype("float32") * 0.1, 16000)
    ds = FeatureDataset([utt("a", 1.0, "aab", str(p))], [TOK.encode("aab")], CFG, cache=True, speed_perturb=(0.9, 1.0, 1.1))
    fill_cache(ds)
    assert set(ds.cache) == {(0, 0.9), (0, 1.0), (0, 1.1)}
    # slower speech is longer: 1 s at 0.9x lasts 1.11 s
    assert [ds.cache[(0, f)].shape[0] for f in (0.9, 1.0, 1.1)] == [112, 101, 91]
    seen = {ds[0][1].shape[0] for _ in range(30)}
    assert seen == {112, 101, 91}


def test_feasibility_accounts_for_the_fastest_speed():
    out1 = lambda n: n  # noqa: E731
    u = utt("x", 0.12, "hello")  # 13 frames at 1.0x, 11 at 1.1x; "hello" needs 6
    keep, _, _ = filter_utterances([u], TOK, CFG, lambda n: out1(n) // 2, max_speed=1.0)
    assert len(keep) == 1
    keep, _, skipped = filter_utterances([u], TOK, CFG, lambda n: out1(n) // 2, max_speed=1.1)
    assert not keep and len(skipped) == 1


def test_unreadable_audio_is_removed_and_reported_by_fill_cache(tmp_path):
    from asr.data.dataset import fill_cache

    good = [tmp_path / f"{n}.wav" for n in "ac"]
    for p in good:
        sf.write(p, np.random.default_rng(0).standard_normal(8000).astype("float32") * 0.1, 16000)
    bad = tmp_path / "b.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVE not really")
    utts = [utt("a", 0.5, "aab", str(good[0])), utt("b", 0.5, "ab", str(bad)), utt("c", 0.5, "ba", str(good[1]))]
    ds = FeatureDataset(utts, [TOK.encode(u.text) for u in utts], CFG, cache=True, speed_perturb=(0.9, 1.0))
    skipped = fill_cache(ds)
    assert [uid for uid, _ in skipped.items] == ["b"]
    reason = skipped.items[0][1]
    assert reason.startswith("unreadable: ") and str(bad) in reason
    assert [u.id for u in ds.utts] == ["a", "c"] and len(ds) == 2
    # the survivors keep their own features and targets, re-indexed
    assert set(ds.cache) == {(0, 0.9), (0, 1.0), (1, 0.9), (1, 1.0)}
    assert ds[1][0] == "c" and ds.targets[1].tolist() == TOK.encode("ba")
