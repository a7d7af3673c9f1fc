"""benchmarks/bench_streaming.py runs end to end on tiny random models (--dry-run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_streaming_benchmark_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_streaming.py"), "--dry-run", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| lc | 320 ms | beam+LM |" in proc.stdout
    result = json.loads(out.read_text())
    streamed = [r for r in result["rows"] if r["latency_s"] is not None]
    assert [r["decoder"] for r in streamed] == ["greedy", "beam+LM", "beam+LM, words fixed after 100 ms"]
    assert [r["commit_s"] for r in streamed] == [None, None, 0.1]
    # streaming computes the offline result (fixing words may change it; not on these 2-word ones)
    assert all(r["same_as_offline"] == "3/3" for r in streamed)
    assert result["hour"]["seconds"] >= 5 and result["hour"]["finals"] >= 1


def test_emission_time_is_when_a_word_stops_changing() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_streaming import emission_times
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from asr.infer.streaming import StreamResult, StreamWord

    def partial(text: str) -> StreamResult:
        return StreamResult(False, text, (), 0.0, 0.0)

    final = StreamResult(True, "fifty nine", (StreamWord("fifty", 0.1, 0.5), StreamWord("nine", 0.6, 0.9)), 0.0, 0.0)
    timed = [(0.3, partial("fif")), (0.6, partial("fifty")), (0.8, partial("fifty fi")),
             (1.0, partial("fifty five")), (1.1, partial("fifty five")), (1.6, final)]
    # "fifty" is out at 0.6 and never changes again; "nine" only comes with the final.
    assert emission_times(timed) == [("fifty", 0.6, False), ("nine", 1.6, True)]
