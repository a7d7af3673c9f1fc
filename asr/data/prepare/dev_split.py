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
    # Whole speakers when train has several; else utterances (a dev set that shares the
    # speaker, said so in the note). One rule for both: sample n of the sorted units.
    by_speaker = len(speakers) >= 2
    if not by_speaker and dev_speakers is not None:
        raise PrepareError(
            f"train has a single speaker ({speakers[0]!r}): a speaker-disjoint dev set is "
            "impossible; use --dev-fraction to carve utterances instead"
        )
    units = speakers if by_speaker else sorted(it.id for it in train)
    what = "train speakers" if by_speaker else "train utterances"
    if by_speaker and dev_speakers is not None:
        n = dev_speakers
    elif by_speaker and dev_fraction is None and default.speakers is not None:
        n = default.speakers
    else:
        fraction = dev_fraction if dev_fraction is not None else (default.fraction or 0.0)
        n = 0 if fraction == 0 else max(1, _round_half_up(len(units) * fraction))
    if n == 0:
        return items, "dev: none (disabled)"
    # Defaults that cannot apply to a tiny corpus give no dev; explicit requests are errors.
    if n >= len(units):
        if dev_speakers is None and dev_fraction is None:
            return items, f"dev: none (only {len(units)} {what})"
        raise PrepareError(f"cannot move {n} of {len(units)} {what} to dev")
    chosen = set(random.Random(seed).sample(units, n))
    moved = [
        replace(it, split="dev") if it.split == "train" and (it.speaker if by_speaker else it.id) in chosen else it
        for it in items
    ]
    if by_speaker:
        return moved, f"dev: {n} of {len(units)} {what} (seed {seed}): {', '.join(sorted(chosen))}"
    return moved, f"dev: {n} of {len(units)} {what} (seed {seed}); single speaker, so dev is NOT speaker-disjoint"
