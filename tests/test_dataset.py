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


def _wave_dataset(tmp_path, rates=(16000, 8000, 16000), seconds=(1.3, 0.7, 2.05)):
    rng = np.random.default_rng(1)
    utts = []
    for i, (sr, s) in enumerate(zip(rates, seconds)):
        p = tmp_path / f"w{i}.wav"
        sf.write(p, rng.standard_normal(int(sr * s)).astype("float32") * 0.1, sr)
        utts.append(Utterance(f"w{i}", str(p), s, "ab", "s", sr))
    return utts, [[1, 2], [2], [1, 1, 2]][: len(utts)]


def test_features_on_device_path_matches_per_item_features(tmp_path):
    """Waveforms padded into a batch, then log-mels of the batch == collate of per-item log-mels
    (resampled 8 kHz audio included), lengths from num_frames."""
    from asr.data.dataset import collate_waves, wave_batch_features
    from asr.features import LogMel, num_frames

    utts, targets = _wave_dataset(tmp_path)
    per_item = FeatureDataset(utts, targets, CFG, cache=False)
    on_device = FeatureDataset(utts, targets, CFG, cache=False, waveforms=True)
    expected = collate([per_item[i] for i in range(3)])
    waves = collate_waves([on_device[i] for i in range(3)])
    assert waves.waves.ndim == 2 and waves.wave_lens.tolist() == [int(16000 * s) for s in (1.3, 0.7, 2.05)]
    got = wave_batch_features(waves, LogMel(CFG))
    assert got.ids == expected.ids == ["w0", "w1", "w2"]
    assert got.feat_lens.tolist() == expected.feat_lens.tolist() == [num_frames(int(n)) for n in waves.wave_lens]
    assert got.feats.shape == expected.feats.shape
    torch.testing.assert_close(got.feats, expected.feats, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.targets, expected.targets) and torch.equal(got.target_lens, expected.target_lens)


def test_features_on_device_speed_perturbation_matches_per_item(tmp_path):
    from asr.data.dataset import collate_waves, wave_batch_features
    from asr.features import LogMel

    utts, targets = _wave_dataset(tmp_path, rates=(16000, 16000), seconds=(1.0, 1.5))
    ds = FeatureDataset(utts, targets, CFG, cache=False, waveforms=True)
    items = [("w0", ds.waveform(0, 1.1), ds.targets[0]), ("w1", ds.waveform(1, 0.9), ds.targets[1])]
    got = wave_batch_features(collate_waves(items), LogMel(CFG))
    for k, factor in ((0, 1.1), (1, 0.9)):
        ref = ds.compute(k, factor)
        assert int(got.feat_lens[k]) == ref.shape[0]
        torch.testing.assert_close(got.feats[k, : ref.shape[0]], ref, atol=1e-5, rtol=1e-5)
        assert not got.feats[k, ref.shape[0]:].any()


def test_features_on_device_counts_unreadable_and_non_finite(tmp_path):
    from asr.data.dataset import Unreadable, WaveBatch, collate_waves, wave_batch_features
    from asr.features import LogMel

    utts, targets = _wave_dataset(tmp_path, rates=(16000, 16000), seconds=(1.0, 1.0))
    utts.append(Utterance("gone", str(tmp_path / "gone.wav"), 1.0, "ab", "s", 16000))
    ds = FeatureDataset(utts, targets + [[1]], CFG, cache=False, waveforms=True)
    assert isinstance(ds[2], Unreadable) and "gone.wav" in ds[2].reason
    batch = collate_waves([ds[0], ds[1], ds[2]])
    assert batch.ids == ["w0", "w1"] and batch.skipped[0][0] == "gone"
    # A waveform whose power overflows float32 (load_audio's magnitude bound makes this
    # unreachable from files; the guard stays) is dropped and reported, not trained on.
    waves = batch.waves.clone()
    waves[1] *= 1e30
    out = wave_batch_features(WaveBatch(waves, *batch[1:]), LogMel(CFG))
    assert out.ids == ["w0"] and out.feats.shape[0] == 1 and torch.isfinite(out.feats).all()
    assert [s[0] for s in out.skipped] == ["gone", "w1"] and "not finite" in out.skipped[1][1]
    empty = wave_batch_features(collate_waves([ds[2]]), LogMel(CFG))
    assert empty.ids == [] and empty.skipped == batch.skipped


def test_targets_are_stored_flat_and_survive_remove():
    from asr.data.dataset import Ragged

    seqs = [[1, 2, 3], [4], [5, 6], [40000, 1]]
    r = Ragged(seqs)
    assert len(r) == 4 and r.flat.dtype == np.int32 and Ragged(seqs[:3]).flat.dtype == np.int16
    assert [r[i].tolist() for i in range(4)] == seqs and r[-1].tolist() == [40000, 1]
    assert r[0].dtype == torch.long
    assert [t.tolist() for t in r.select([3, 0])] == [[40000, 1], [1, 2, 3]]
    assert len(r.select([])) == 0
    ds = FeatureDataset([utt(f"u{i}", 1.0, "ab") for i in range(4)], seqs, CFG, cache=False)
    ds.remove([1])
    assert [u.id for u in ds.utts] == ["u0", "u2", "u3"]
    assert [ds.targets[i].tolist() for i in range(3)] == [[1, 2, 3], [5, 6], [40000, 1]]
