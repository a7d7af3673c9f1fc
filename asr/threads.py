"""CPU thread defaults for training and inference.

torch's default is one intra-op thread per core. That is the fastest choice on an idle machine
and a pathological one on a busy one: with a second process on one of two cores, a 7-step
yesno epoch took 138 s with torch's default and 1 s with one thread, because
OpenMP threads spin-wait on a core that is not theirs. The default here is therefore half the
cores this process may use, at most 4: never slower than one thread under load, and within a
small factor of the best on an idle machine. ``OMP_NUM_THREADS`` (or ``trainer.threads`` /
``--threads``) overrides it.
"""

from __future__ import annotations

import os

MAX_DEFAULT_THREADS = 4


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else half the usable cores (at least 1, at most 4)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(MAX_DEFAULT_THREADS, usable_cores() // 2))


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op CPU threads (None or 0: :func:`default_threads`); returns the count."""
    import torch

    n = default_threads() if not num_threads else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be >= 1 (is {n})")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
