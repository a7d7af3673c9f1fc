"""Thread defaults: half the usable cores, at least 1, at most 4; OMP_NUM_THREADS wins."""

from __future__ import annotations

import pytest

from asr import threads


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_default_threads_is_half_the_usable_cores_capped(monkeypatch, cores, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    assert threads.default_threads() == expected


def test_omp_num_threads_overrides_the_default(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")  # not a count: ignored
    assert threads.default_threads() == 1


def test_set_threads_zero_means_the_default_and_negative_is_refused(monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        assert threads.set_threads(0) == 2 and torch.get_num_threads() == 2
        assert threads.set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="num_threads"):
            threads.set_threads(-1)
    finally:
        torch.set_num_threads(before)
