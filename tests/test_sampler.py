"""Bucketed batch sampler: caps, coverage, padding efficiency, DDP sharding."""

import random

import pytest

from asr.data.sampler import BucketBatchSampler, pack_batches, plan_batches

random.seed(0)
DURS = [random.uniform(1.0, 10.0) for _ in range(500)]


def test_every_item_once_and_caps_respected():
    s = BucketBatchSampler(DURS, max_batch_seconds=60, max_batch_size=16, num_buckets=20, seed=1)
    batches = list(s)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(DURS)))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or max(DURS[i] for i in b) * len(b) <= 60


def test_bucketing_beats_random_batching_on_padding():
    bucketed = BucketBatchSampler(DURS, 60, num_buckets=40, seed=1).padding_efficiency()
    random_ = BucketBatchSampler(DURS, 60, bucketing=False, seed=1).padding_efficiency()
    assert bucketed > 0.95 > random_


def test_epochs_shuffle_differently_but_deterministically():
    s = BucketBatchSampler(DURS, 60, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 != e1


def test_shuffle_changes_order_across_epochs_and_seeds():
    for bucketing in (True, False):
        s = BucketBatchSampler(DURS, 60, seed=3, bucketing=bucketing)
        e0 = list(s)
        s.set_epoch(1)
        assert list(s) != e0
        assert list(BucketBatchSampler(DURS, 60, seed=4, bucketing=bucketing)) != e0


def test_no_shuffle_is_the_sorted_order_whatever_the_epoch_or_seed():
    by_duration = sorted(range(len(DURS)), key=DURS.__getitem__)
    for bucketing, expected in ((True, by_duration), (False, list(range(len(DURS))))):
        s = BucketBatchSampler(DURS, 60, shuffle=False, bucketing=bucketing, seed=3)
        e0 = list(s)
        assert [i for b in e0 for i in b] == expected
        s.set_epoch(5)
        assert list(s) == e0
        assert list(BucketBatchSampler(DURS, 60, shuffle=False, bucketing=bucketing, seed=9)) == e0


def test_pack_batches_keeps_the_order_and_respects_both_caps():
    durs = [1.0, 2.0, 5.0, 1.0, 1.0, 30.0, 1.0]
    batches = pack_batches(durs, range(len(durs)), 6.0, 3)
    assert batches == [[0, 1], [2], [3, 4], [5], [6]]  # padded seconds <= 6; 30 s alone; order kept
    assert pack_batches([1.0] * 7, range(7), 100.0, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError):
        pack_batches(durs, range(7), 0.0, 3)


def test_plan_batches_longest_first_respects_limits_and_covers_everything():
    durations = [3.0, 0.5, 12.0, 7.0, 7.0, 1.0, 30.0, 2.0]
    batches = plan_batches(durations, batch_size=3, max_batch_seconds=20.0)
    assert sorted(i for b in batches for i in b) == list(range(len(durations)))
    assert [i for b in batches for i in b] == sorted(range(8), key=lambda i: (-durations[i], i))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(durations[i] for i in b) <= 20.0
    assert batches[0] == [6]  # longer than the cap: alone


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_shards_are_disjoint_equal_and_cover_everything(world):
    shards = [list(BucketBatchSampler(DURS, 60, seed=5, num_replicas=world, rank=r)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    seen = [i for s in shards for b in s for i in b]
    assert set(seen) == set(range(len(DURS)))
    # only the padding batches (repeats of the first ones) may appear twice
    total = len(BucketBatchSampler(DURS, 60, seed=5).all_batches())
    assert sum(len(s) for s in shards) - total < world


def test_ddp_without_padding_keeps_each_batch_once():
    shards = [list(BucketBatchSampler(DURS, 60, shuffle=False, num_replicas=2, rank=r, pad_to_replicas=False)) for r in range(2)]
    seen = [i for s in shards for b in s for i in b]
    assert sorted(seen) == list(range(len(DURS)))


def test_bad_arguments():
    with pytest.raises(ValueError):
        BucketBatchSampler(DURS, 0)
    with pytest.raises(ValueError):
        BucketBatchSampler(DURS, 10, num_replicas=2, rank=2)


def test_tiny_dev_set_still_gives_every_rank_a_batch():
    shards = [list(BucketBatchSampler([1.0, 1.0], 60, shuffle=False, num_replicas=2, rank=r, pad_to_replicas=False)) for r in range(2)]
    assert all(len(s) == 1 for s in shards)


@pytest.mark.parametrize("world", [2, 3, 8])
def test_dev_set_with_fewer_batches_than_ranks_is_split_not_repeated(world):
    # 10 utterances fit one 60 s batch; on `world` ranks each gets a batch of its own and every
    # utterance is scored exactly once (a repeated batch would count its errors twice).
    durs = [1.0] * 10
    shards = [list(BucketBatchSampler(durs, 60, max_batch_size=32, num_buckets=1, shuffle=False, num_replicas=world, rank=r,
                                   pad_to_replicas=False))
              for r in range(world)]
    assert [len(s) for s in shards] == [1] * world
    assert sorted(i for s in shards for b in s for i in b) == list(range(10))
    assert all(len(BucketBatchSampler(durs, 60, max_batch_size=32, num_buckets=1, shuffle=False, num_replicas=world, rank=r,
                                      pad_to_replicas=False)) == 1 for r in range(world))


@pytest.mark.parametrize("bucketing", [True, False])
def test_every_epoch_has_the_same_number_of_batches(bucketing):
    # Regression: Lightning reads len(batch_sampler) once and validates when the batch index
    # reaches it; greedy packing gave 186-188 batches per epoch on speechocean762, so epochs
    # with 186 silently skipped validation and their checkpoint.
    rng = random.Random(7)
    durs = [rng.uniform(0.5, 15.0) for _ in range(2000)]
    s = BucketBatchSampler(durs, 60, max_batch_size=32, num_buckets=50, seed=1234, bucketing=bucketing)
    counts = set()
    for epoch in range(30):
        s.set_epoch(epoch)
        batches = list(s)
        counts.add(len(batches))
        assert len(s) == len(batches)
        assert sorted(i for b in batches for i in b) == list(range(len(durs)))
        for b in batches:
            assert len(b) <= 32 and (len(b) == 1 or max(durs[i] for i in b) * len(b) <= 60)
    assert len(counts) == 1


def test_len_is_arithmetic_and_matches_every_shard_and_epoch():
    import numpy as np

    durs = np.random.default_rng(3).uniform(0.5, 20.0, 301).tolist()
    for world, pad in ((1, True), (3, True), (4, False), (2000, False)):
        for rank in range(min(world, 5)):
            s = BucketBatchSampler(durs, max_batch_seconds=60, max_batch_size=16, num_buckets=7,
                                   num_replicas=world, rank=rank, pad_to_replicas=pad)
            for epoch in (0, 1):
                s.set_epoch(epoch)
                assert len(s) == len(list(s)), (world, pad, rank, epoch)
    s = BucketBatchSampler(durs, max_batch_seconds=60, max_batch_size=16, num_buckets=7)
    assert all(isinstance(i, int) for b in s for i in b)
    assert sorted(i for b in s for i in b) == list(range(301))
