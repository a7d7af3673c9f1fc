"""The `asr <command>` modules: each parses its arguments, calls the library and returns an exit code."""
