"""Duration-bucketed batch sampler, DDP-aware, with the same number of batches every epoch.

Bucketing (the default): sort utterances by duration and cut the sorted list into
``num_buckets`` contiguous buckets (equal counts). Each bucket gets a fixed number of
batches, enough for batches of its longest utterance to stay under ``max_batch_seconds``
of *padded* audio (longest item x batch size) and ``max_batch_size`` items. Every epoch
shuffles inside each bucket, cuts it into that many batches of near-equal size, and
shuffles the batches. Similar lengths share a batch (little padding); batch composition and
order still change every epoch.

Why the count is fixed: Lightning reads ``len(batch_sampler)`` once and runs validation
when the batch index reaches it; an epoch with fewer batches than that first count
silently skipped validation (and its checkpoint), one with more validated before the
epoch's last batches. Packing each epoch greedily, as this sampler first did, varied the
count by a batch or two between epochs.

Without bucketing (``bucketing=False``, random batches): each epoch packs a random order
greedily, then splits its largest batches until the epoch has as many batches as the most
any of the first 20 epochs needed. A later epoch that needs more keeps them (Lightning
then validates a few batches before that epoch ends).

Under DDP every rank must run the same number of steps (gradient all-reduce), so with
``pad_to_replicas`` the batch list is padded by repeating its first batches to a multiple of
the world size before rank ``r`` takes batches ``r, r + W, ...``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def pack_batches(
    durations: Sequence[float], order: Iterable[int], max_batch_seconds: float, max_batch_size: int
) -> list[list[int]]:
    """Cut ``order`` (indices into ``durations``), in that order, into consecutive batches.

    A batch grows until one more item would take it past ``max_batch_size`` items or
    ``max_batch_seconds`` of padded audio (items x its longest); an item longer than
    ``max_batch_seconds`` gets a batch of its own. Every index appears in exactly one batch.
    The one packer of the toolkit: training's unbucketed epochs and inference
    (:func:`plan_batches`) both use it.
    """
    if max_batch_size < 1 or max_batch_seconds <= 0:
        raise ValueError(f"max_batch_size must be >= 1 and max_batch_seconds > 0 "
                         f"(are {max_batch_size}, {max_batch_seconds})")
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0.0
    for i in order.tolist() if isinstance(order, np.ndarray) else order:
        d = durations[i]
        new_longest = max(longest, d)
        if cur and (new_longest * (len(cur) + 1) > max_batch_seconds or len(cur) >= max_batch_size):
            batches.append(cur)
            cur, new_longest = [], d
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


def plan_batches(durations: Sequence[float], batch_size: int, max_batch_seconds: float) -> list[list[int]]:
    """Inference batches: :func:`pack_batches` over the indices longest first (ties by index),
    so each batch holds similar lengths and the first batch is the most memory-hungry."""
    order = sorted(range(len(durations)), key=lambda i: (-durations[i], i))
    return pack_batches(durations, order, max_batch_seconds, batch_size)


def per_batch(longest: float, max_batch_seconds: float, max_batch_size: int) -> int:
    """Most utterances of at most ``longest`` s a batch may hold (at least one): the capacity of
    a duration bucket, for :class:`BucketBatchSampler` and the shard stream alike."""
    per = max(1, min(max_batch_size, int(max_batch_seconds // longest) if longest > 0 else max_batch_size))
    while per > 1 and longest * per > max_batch_seconds:  # float rounding of //
        per -= 1
    return per


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

    @functools.cached_property
    def _duration_list(self) -> list[float]:
        # Python floats: indexing a numpy array per item costs ~10x more in the packing loop.
        return self.durations.tolist()

    @functools.cached_property
    def _bucket_plan(self) -> list[tuple[np.ndarray, int]]:
        """(utterance indices, number of batches) per bucket; the same every epoch."""
        order = np.argsort(self.durations, kind="stable")
        plan = []
        for bucket in np.array_split(order, min(self.num_buckets, max(len(order), 1))):
            if len(bucket):
                per = per_batch(float(self.durations[bucket].max()), self.max_batch_seconds, self.max_batch_size)
                plan.append((bucket, math.ceil(len(bucket) / per)))
        return plan

    def _random_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng(self.seed + epoch)
        order = rng.permutation(len(self.durations)) if self.shuffle else np.arange(len(self.durations))
        return pack_batches(self._duration_list, order, self.max_batch_seconds, self.max_batch_size)

    @functools.cached_property
    def _random_count(self) -> int:
        """Batches per epoch without bucketing: the most any of the first 20 epochs packs."""
        epochs = range(20) if self.shuffle else range(1)
        return max(len(self._random_batches(e)) for e in epochs)

    def all_batches(self) -> list[list[int]]:
        """Every batch of this epoch, across all ranks (before sharding)."""
        rng = np.random.default_rng(self.seed + self.epoch)
        if not self.bucketing:
            batches = self._random_batches(self.epoch)
            # Split the largest batches until this epoch has the usual number of batches.
            while len(batches) < self._random_count and any(len(b) > 1 for b in batches):
                k = max(range(len(batches)), key=lambda j: len(batches[j]))
                b = batches.pop(k)
                batches[k:k] = [b[: len(b) // 2], b[len(b) // 2 :]]
            return batches
        batches = []
        for bucket, count in self._bucket_plan:
            # Shuffling inside a bucket varies batch composition between epochs; the
            # bucket's narrow duration range bounds the padding this costs.
            items = rng.permutation(bucket) if self.shuffle else bucket
            batches.extend(chunk.tolist() for chunk in np.array_split(items, count))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        if self.num_replicas == 1:
            return batches
        if not self.pad_to_replicas and len(batches) < self.num_replicas:
            # A rank without a batch is refused by Lightning, and a repeated dev batch would be
            # scored twice: split the largest batches until every rank has one of its own.
            # Only a set with fewer utterances than ranks still has to repeat some.
            batches = [list(b) for b in batches]
            while len(batches) < self.num_replicas and any(len(b) > 1 for b in batches):
                k = max(range(len(batches)), key=lambda j: len(batches[j]))
                b = batches.pop(k)
                batches[k:k] = [b[: len(b) // 2], b[len(b) // 2 :]]
        if batches and (self.pad_to_replicas or len(batches) < self.num_replicas):
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = (batches * self.num_replicas)[:total]
        return batches[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._shard(self.all_batches()))

    def __len__(self) -> int:
        # Arithmetic, not a whole epoch's plan: Lightning asks several times per epoch.
        if not self.bucketing:  # an epoch may pack more than the usual count (module docstring)
            return len(self._shard(self.all_batches()))
        total = sum(count for _, count in self._bucket_plan)
        if self.num_replicas == 1:
            return total
        if total and (self.pad_to_replicas or total < self.num_replicas):
            return math.ceil(total / self.num_replicas)
        return len(range(self.rank, total, self.num_replicas))

    def padding_efficiency(self) -> float:
        """Real audio seconds / padded seconds over this epoch's batches (1.0 = no padding)."""
        real = padded = 0.0
        for b in self.all_batches():
            d = self.durations[b]
            real += float(d.sum())
            padded += float(d.max()) * len(b)
        return real / padded if padded else 1.0
