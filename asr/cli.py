"""`asr <command>`: parse, validate, call the library, return an exit code.

Each sub-command lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; modules are imported lazily so ``asr --help`` stays fast and a
broken optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("asr.data.prepare", "prepare a corpus into validated JSONL manifests"),
    "train": ("asr.train", "train a model from a YAML config with key=value overrides"),
    "export": ("asr.checkpoint", "turn Lightning checkpoints into a loadable model package"),
    "transcribe": ("asr.transcription", "transcribe audio files with a model package"),
    "evaluate": ("asr.evaluate", "score a model (or a hypothesis file) on a manifest; write reports"),
    "compare": ("asr.compare", "compare two evaluation reports with a paired bootstrap test"),
    "lm": ("asr.lm", "build a KenLM n-gram language model; tune LM weights"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace | None]:
    parser = argparse.ArgumentParser(prog="asr", description=__doc__.splitlines()[0])
    from asr import __version__

    parser.add_argument("--version", action="version", version=f"asr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only import the module of the command actually being run.
        if argv and argv[0] == name:
            importlib.import_module(module).configure(p)
            p.set_defaults(_module=module)
    return parser, None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `asr lm TEXT --order N --out FILE` is shorthand for `asr lm build TEXT ...`.
    if len(argv) > 1 and argv[0] == "lm" and argv[1] not in ("build", "tune", "-h", "--help"):
        argv.insert(1, "build")
    parser, _ = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
