"""Carve a dev split out of train: whole speakers, or utterances when train has one speaker.

Speakers are sorted, then sampled with ``random.Random(seed)``: the same seed gives the same
split whatever the file-system order.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

from asr.data.corpora import DevSplit, RawItem
from asr.data.prepare.options import PrepareError


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def carve_dev(
    items: list[RawItem],
    default: DevSplit,
    dev_speakers: int | None = None,
    dev_fraction: float | None = None,
    seed: int = 0,
) -> tuple[list[RawItem], str]:
    """Move part of train to dev: whole speakers, or utterances when train has one speaker.

    Speakers (sorted, then sampled with ``random.Random(seed)``) make the choice
    deterministic and independent of file-system order. Returns (items, a note saying what
    was done).
    """
    has_dev = any(it.split == "dev" for it in items)
    if has_dev:
        if dev_speakers is not None or dev_fraction is not None:
            raise PrepareError(
                "the corpus has its own dev split; --dev-speakers/--dev-fraction do not apply"
            )
        return items, "dev: the corpus' own dev split"
    train = [it for it in items if it.split == "train"]
    speakers = sorted({it.speaker for it in train})
    if not train:
        return items, "dev: none (no train items)"
    rng = random.Random(seed)
    # Defaults that cannot apply to a tiny corpus give no dev; explicit requests are errors.
    explicit = dev_speakers is not None or dev_fraction is not None
    if len(speakers) >= 2:
        if dev_speakers is not None:
            n = dev_speakers
        elif dev_fraction is None and default.speakers is not None:
            n = default.speakers
        else:
            fraction = dev_fraction if dev_fraction is not None else (default.fraction or 0.0)
            n = 0 if fraction == 0 else max(1, _round_half_up(len(speakers) * fraction))
        if n == 0:
            return items, "dev: none (disabled)"
        if n >= len(speakers):
            if not explicit:
                return items, f"dev: none (only {len(speakers)} train speakers)"
            raise PrepareError(f"cannot move {n} of {len(speakers)} train speakers to dev")
        chosen = set(rng.sample(speakers, n))
        moved = [
            replace(it, split="dev") if it.split == "train" and it.speaker in chosen else it
            for it in items
        ]
        return (
            moved,
            f"dev: {n} of {len(speakers)} train speakers (seed {seed}): {', '.join(sorted(chosen))}",
        )
    if dev_speakers is not None:
        raise PrepareError(
            f"train has a single speaker ({speakers[0]!r}): a speaker-disjoint dev set is "
            "impossible; use --dev-fraction to carve utterances instead"
        )
    fraction = dev_fraction if dev_fraction is not None else (default.fraction or 0.0)
    n = 0 if fraction == 0 else max(1, _round_half_up(len(train) * fraction))
    if n == 0:
        return items, "dev: none (disabled)"
    if n >= len(train):
        if not explicit:
            return items, f"dev: none (only {len(train)} train utterances)"
        raise PrepareError(f"cannot move {n} of {len(train)} train utterances to dev")
    chosen_ids = set(rng.sample(sorted(it.id for it in train), n))
    moved = [
        replace(it, split="dev") if it.split == "train" and it.id in chosen_ids else it
        for it in items
    ]
    return moved, (
        f"dev: {n} of {len(train)} train utterances (seed {seed}); single speaker, so dev is "
        "NOT speaker-disjoint"
    )
