"""Progress of inference: a rich bar on a terminal, plain logged lines otherwise
(asr.infer.progress.progress_bar is the one place that decides)."""

from __future__ import annotations

import logging
import sys

import pytest

from asr.infer.progress import LogProgress, progress_bar


@pytest.fixture(autouse=True)
def _propagate(monkeypatch):
    """asr.log.setup (run by any earlier CLI test) sends "asr" records to its own handler,
    on that test's (since closed) captured stderr; let them reach caplog's instead."""
    monkeypatch.setattr(logging.getLogger("asr"), "propagate", True)
    monkeypatch.setattr(logging.getLogger("asr"), "handlers", [])


def test_redirected_stderr_gets_plain_progress_lines(caplog, capsys):
    assert not sys.stderr.isatty()  # captured by pytest, like a log file
    with caplog.at_level(logging.INFO, logger="asr.infer.progress"):
        with progress_bar(True, interval=0.0) as bar:
            assert isinstance(bar, LogProgress)
            task = bar.add_task("transcribing 3 file(s)", total=260.0)
            for step in (60.0, 60.0, 140.0):
                bar.advance(task, step)
    assert [r.getMessage() for r in caplog.records] == [
        "transcribing 3 file(s): 60/260 s of audio (23%)",
        "transcribing 3 file(s): 120/260 s of audio (46%)",
        "transcribing 3 file(s): 260/260 s of audio (100%)",
    ]
    assert capsys.readouterr().err == ""  # no bar, no control codes


def test_plain_progress_is_rate_limited(caplog):
    with caplog.at_level(logging.INFO, logger="asr.infer.progress"):
        with progress_bar(True) as bar:  # default: a line every 10 s
            task = bar.add_task("inference", total=3.0)
            for _ in range(3):
                bar.advance(task, 1.0)
    assert caplog.records == []  # finished within the interval: nothing to report


def test_terminal_gets_a_rich_bar_and_disabled_gets_nothing(monkeypatch, caplog):
    from rich.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert isinstance(progress_bar(True), Progress)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    with caplog.at_level(logging.INFO, logger="asr.infer.progress"), progress_bar(False, interval=0.0) as bar:
        task = bar.add_task("x", total=2.0)
        bar.advance(task, 1.0)
    assert caplog.records == []
