"""What `asr prepare` can be asked to do (:class:`PrepareOptions`), and its error type."""

from __future__ import annotations

from dataclasses import dataclass

# Default vocabulary: what English transcripts need after normalize_text.
ENGLISH_VOCAB = frozenset("abcdefghijklmnopqrstuvwxyz'0123456789")
VOCABS = ("english", "chars-from-train")


class PrepareError(ValueError):
    """The corpus as a whole cannot be prepared (bad options, empty train split, ...)."""


@dataclass(frozen=True)
class PrepareOptions:
    """How items are split and validated."""

    dev_speakers: int | None = None  # train speakers moved to dev (None: corpus default)
    dev_fraction: float | None = None  # fraction of train speakers moved (not with dev_speakers)
    seed: int = 0  # seeds the dev-speaker choice; same seed -> same split
    min_duration: float = 0.1  # seconds; shorter items are rejected
    vocab: str = "english"  # "english" (a-z ' 0-9) or "chars-from-train"
    workers: int = 2  # processes that decode audio

    def __post_init__(self) -> None:
        if self.dev_speakers is not None and self.dev_fraction is not None:
            raise PrepareError("give dev_speakers or dev_fraction, not both")
        if self.dev_speakers is not None and self.dev_speakers < 0:
            raise PrepareError(f"dev_speakers must be >= 0 (is {self.dev_speakers})")
        if self.dev_fraction is not None and not 0 <= self.dev_fraction < 1:
            raise PrepareError(f"dev_fraction must be in [0, 1) (is {self.dev_fraction})")
        if self.min_duration < 0:
            raise PrepareError(f"min_duration must be >= 0 (is {self.min_duration})")
        if self.vocab not in VOCABS:
            raise PrepareError(f"vocab must be one of {VOCABS} (is {self.vocab!r})")
        if self.workers < 1:
            raise PrepareError(f"workers must be >= 1 (is {self.workers})")
