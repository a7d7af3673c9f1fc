"""Where long recordings are cut: at pauses (asr.infer.windows.find_pauses + plan_pause_windows),
with fixed overlapping windows only across stretches that have no pause."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from asr.infer.windows import find_pauses, plan_pause_windows, plan_windows

SR = 16000


def tones(pattern: list[tuple[str, float]], seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """("tone" | "gap", seconds) pieces -> audio and the gaps' (start, end) seconds. Gaps hold
    faint noise (60 dB below the tones), not digital zeros, like a real pause."""
    rng = np.random.default_rng(seed)
    parts, gaps, t = [], [], 0.0
    for kind, sec in pattern:
        n = round(sec * SR)
        if kind == "tone":
            parts.append(0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / SR))
        else:
            parts.append(5e-4 * rng.standard_normal(n))
            gaps.append((t, t + sec))
        t += sec
    return np.concatenate(parts).astype(np.float32), gaps


def check_tiling(windows, duration: float) -> None:
    """Owned regions tile [0, inf); every window reads at least what it owns."""
    assert windows[0][2] == 0.0 and windows[-1][3] == math.inf
    for (_, _, _, end), (_, _, start, _) in zip(windows, windows[1:]):
        assert end == pytest.approx(start)
    for offset, read, own_start, own_end in windows:
        assert offset <= own_start + 1e-9
        stop = duration if read is None else offset + read
        assert stop >= min(own_end, duration) - 1e-9


def test_cuts_land_in_the_silences(tmp_path):
    audio, gaps = tones([("tone", 0.7), ("gap", 0.4)] * 10 + [("tone", 0.7)])
    path = tmp_path / "tones.wav"
    sf.write(path, audio, SR)
    duration = len(audio) / SR
    pauses = find_pauses(path, SR, duration)
    assert len(pauses) == len(gaps)
    for (s, e), (gs, ge) in zip(pauses, gaps):  # found to within a few 10 ms frames
        assert abs(s - gs) < 0.04 and abs(e - ge) < 0.04
    windows, method = plan_pause_windows(duration, pauses, chunk_seconds=2.5, overlap_seconds=0.5)
    assert method == "pauses"
    check_tiling(windows, duration)
    for offset, read, own_start, own_end in windows[:-1]:
        assert read == pytest.approx(own_end - own_start) and offset == own_start  # no overlap needed
        assert read <= 2.5
        assert any(gs < own_end < ge for gs, ge in gaps)  # the cut is inside a gap
    # As long as allowed: 2 tone+gap periods (2.2 s) per window, not 1.
    assert len(windows) == math.ceil(duration / 2.2)


def test_speech_without_pause_falls_back_to_fixed_windows(tmp_path):
    audio, _ = tones([("tone", 9.0)])
    path = tmp_path / "tone.wav"
    sf.write(path, audio, SR)
    pauses = find_pauses(path, SR, 9.0)
    assert pauses == []
    windows, method = plan_pause_windows(9.0, pauses, chunk_seconds=2.5, overlap_seconds=0.5)
    assert method == "fixed" and windows == plan_windows(9.0, 2.5, 0.5)


def test_a_long_stretch_without_pause_gets_fixed_windows_up_to_the_next_pause():
    # pauses at 1 s and 9 s (middles); 1..9 s is 8 s of speech without a pause
    windows, method = plan_pause_windows(12.0, [(0.9, 1.1), (8.9, 9.1)], chunk_seconds=3.0, overlap_seconds=0.5)
    assert method == "pauses+fixed"
    check_tiling(windows, 12.0)
    assert windows[0] == (0.0, 1.0, 0.0, 1.0)
    fixed = [w for w in windows if 1.0 <= w[2] < 9.0]
    assert len(fixed) == 3 and fixed[0][0] == 1.0 and fixed[1][0] == pytest.approx(3.5)  # overlap read
    assert fixed[-1][3] == pytest.approx(9.0) and fixed[-1][0] + fixed[-1][1] == pytest.approx(9.0)
    assert windows[-1] == (9.0, None, 9.0, math.inf)


def test_short_files_are_one_window_and_short_pauses_are_not_cuts(tmp_path):
    assert plan_pause_windows(2.0, [(0.5, 0.7)], 2.5, 0.5) == ([(0.0, None, 0.0, math.inf)], "single")
    audio, _ = tones([("tone", 0.5), ("gap", 0.1), ("tone", 0.5)])  # 0.1 s: a gap inside a word
    sf.write(tmp_path / "t.wav", audio, SR)
    assert find_pauses(tmp_path / "t.wav", SR, len(audio) / SR) == []


def test_pauses_are_joined_across_block_edges(tmp_path):
    audio, gaps = tones([("tone", 1.0), ("gap", 0.6), ("tone", 1.0)])
    sf.write(tmp_path / "t.wav", audio, SR)
    # block edge at 1.3 s, in the middle of the gap: one pause, not two halves
    pauses = find_pauses(tmp_path / "t.wav", SR, len(audio) / SR, block_seconds=1.3)
    assert len(pauses) == 1 and abs(pauses[0][0] - 1.0) < 0.04 and abs(pauses[0][1] - 1.6) < 0.04
