"""Duration-bucketed batch sampler, DDP-aware.

Each epoch: sort utterances by duration, cut the sorted list into ``num_buckets``
contiguous buckets (equal counts), shuffle inside each bucket, pack each bucket greedily into batches whose
*padded* duration (longest item x batch size) stays under ``max_batch_seconds``, then
shuffle the batches. Similar lengths share a batch (little padding); batch composition and
order still change every epoch.

Under DDP every rank must run the same number of steps (gradient all-reduce), so with
``pad_to_replicas`` the batch list is padded by repeating its first batches to a multiple of
the world size before rank ``r`` takes batches ``r, r + W, ...``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        max_batch_size: int = 64,
        num_buckets: int = 20,
        shuffle: bool = True,
        bucketing: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        pad_to_replicas: bool = True,
    ) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0 (is {max_batch_seconds})")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.durations = np.asarray(durations, dtype=np.float64)
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_size = max_batch_size
        self.num_buckets = max(1, num_buckets)
        self.shuffle = shuffle
        self.bucketing = bucketing
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad_to_replicas = pad_to_replicas
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of each epoch so shuffling differs per epoch."""
        self.epoch = epoch

    def _pack(self, indices: Sequence[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0.0
        for i in indices:
            d = float(self.durations[i])
            new_longest = max(longest, d)
            if cur and (new_longest * (len(cur) + 1) > self.max_batch_seconds or len(cur) >= self.max_batch_size):
                batches.append(cur)
                cur, new_longest = [], d
            cur.append(int(i))
            longest = new_longest
        if cur:
            batches.append(cur)
        return batches

    def all_batches(self) -> list[list[int]]:
        """Every batch of this epoch, across all ranks (before sharding)."""
        rng = np.random.default_rng(self.seed + self.epoch)
        n = len(self.durations)
        if not self.bucketing:
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            batches = self._pack(order)
        else:
            order = np.argsort(self.durations, kind="stable")
            batches = []
            for bucket in np.array_split(order, min(self.num_buckets, max(n, 1))):
                # Shuffling inside a bucket varies batch composition between epochs; the
                # bucket's narrow duration range bounds the padding this costs.
                batches.extend(self._pack(rng.permutation(bucket) if self.shuffle else bucket))
            if self.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        if self.num_replicas == 1:
            return batches
        if batches and (self.pad_to_replicas or len(batches) < self.num_replicas):
            # Without padding a rank could get no batch at all, which Lightning refuses; a
            # set that small then scores a few utterances twice.
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = (batches * self.num_replicas)[:total]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._shard(self.all_batches()))

    def __len__(self) -> int:
        return len(self._shard(self.all_batches()))

    def padding_efficiency(self) -> float:
        """Real audio seconds / padded seconds over this epoch's batches (1.0 = no padding)."""
        real = padded = 0.0
        for b in self.all_batches():
            d = self.durations[b]
            real += float(d.sum())
            padded += float(d.max()) * len(b)
        return real / padded if padded else 1.0
