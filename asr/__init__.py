"""asr: log-mel -> stacked bidirectional RNN -> CTC speech recognition toolkit."""

__version__ = "0.1.0"
