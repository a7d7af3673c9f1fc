"""`asr <command>`: parse, validate, call the library, return an exit code.

Each sub-command lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; modules are imported lazily so ``asr --help`` stays fast and a
broken optional dependency only affects the command that needs it.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

# The toolkit's "bad input" errors: (module, class name). Each one's message already names
# the file (and line, for text files), so `main` prints it as one `error: ...` line and
# exits 2 instead of a traceback. Imported lazily, only when an exception is being
# handled, so `asr --help` stays fast. Anything else propagates with its traceback: it is a bug.
KNOWN_ERRORS: tuple[tuple[str, str], ...] = (
    ("asr.config", "ConfigError"),
    ("asr.audio", "AudioError"),
    ("asr.text", "TokenizerError"),
    ("asr.data.manifest", "ManifestError"),
    ("asr.data.prepare.options", "PrepareError"),
    ("asr.data.corpora", "CorpusError"),
    ("asr.data.download", "DownloadError"),
    ("asr.package", "PackageError"),
    ("asr.train.checkpoint", "CheckpointError"),
    ("asr.train.resume", "CheckpointLoadError"),
    ("asr.decode.lm_files", "DecoderError"),
    ("asr.decode.lm", "LMError"),
    ("asr.lock", "ReportError"),  # also raised by the reports (asr.evaluate.reports.data re-exports it)
    ("asr.evaluate.evaluation", "HypothesisFileError"),
    ("asr.evaluate.evaluation", "MissingHypothesesError"),
    ("asr.evaluate.compare", "CompareError"),
    ("asr.infer.streaming", "StreamingError"),
)

# OSErrors that say what is wrong with the machine, not with the program: no space left, a
# read-only or forbidden place, a path through a file. With the path they happened on (an
# atomic write names its target) they are one `error: PATH: reason` line, exit 2.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG})

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("asr.commands.prepare", "prepare a corpus into validated JSONL manifests"),
    "shard": ("asr.commands.shard", "pack a manifest into WebDataset tar shards + index.json for streaming"),
    "train": ("asr.commands.train", "train a model from a YAML config with key=value overrides"),
    "export": ("asr.commands.export", "turn Lightning checkpoints into a loadable model package"),
    "transcribe": ("asr.commands.transcribe", "transcribe audio files with a model package"),
    "evaluate": ("asr.commands.evaluate", "score a model (or a hypothesis file) on a manifest; write reports"),
    "compare": ("asr.commands.compare", "compare two evaluation reports with a paired bootstrap test"),
    "lm": ("asr.commands.lm", "build a KenLM n-gram language model; tune LM weights"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The ``asr`` parser; only the command named by ``argv[0]`` gets its options configured."""
    parser = argparse.ArgumentParser(
        prog="asr", description="Speech recognition: prepare corpora, train log-mel -> BiLSTM -> CTC models, "
        "transcribe and evaluate.", epilog="`asr COMMAND --help` lists a command's options.")
    from asr import __version__

    parser.add_argument("--version", action="version", version=f"asr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # -q/-v on every command (after the command word, like its other options).
    common = argparse.ArgumentParser(add_help=False)
    noise = common.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=0,
                       help="print only warnings, errors and results")
    noise.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       help="also print debugging detail")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        # Only import the module of the command actually being run.
        if argv and argv[0] == name:
            importlib.import_module(module).configure(p)
            _add_common_to_subcommands(p, common)
            p.set_defaults(_module=module)
    return parser


def _add_common_to_subcommands(parser: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    """Give nested sub-commands (``asr lm build``) the common options too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                group = nested.add_mutually_exclusive_group()
                for opt in common._actions:
                    group._add_action(opt)
                _add_common_to_subcommands(nested, common)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `asr lm TEXT --order N --out FILE` is shorthand for `asr lm build TEXT ...`.
    if len(argv) > 1 and argv[0] == "lm" and argv[1] not in ("build", "tune", "-h", "--help"):
        argv.insert(1, "build")
    parser = build_parser(argv)
    args = _parse(parser, argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from asr import log

    log.setup(getattr(args, "verbosity", 0))
    try:
        module = importlib.import_module(args._module)
        return int(module.run(args) or 0)
    except Exception as e:
        message = known_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse with options and positionals in any order, so ``asr train CONFIG --resume
    key=value`` works.

    ``parse_intermixed_args`` refuses parsers with sub-parsers (TypeError), so the
    sub-command word is resolved here, recursively (``asr lm build``), and only the innermost
    parser parses intermixed; one it still refuses falls back to plain ``parse_args``.
    """
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is not None and argv and argv[0] in sub.choices:
        args = _parse(sub.choices[argv[0]], argv[1:])
        if sub.dest is not argparse.SUPPRESS:
            setattr(args, sub.dest, argv[0])
        for action in parser._actions:
            if action is not sub and action.default is not argparse.SUPPRESS and not hasattr(args, action.dest):
                setattr(args, action.dest, action.default)
        for key, value in parser._defaults.items():
            if not hasattr(args, key):
                setattr(args, key, value)
        return args
    try:
        return parser.parse_intermixed_args(argv)
    except TypeError:
        return parser.parse_args(argv)


def known_error_message(e: BaseException) -> str | None:
    """The one-line message for a known bad-input error, else None (a bug: keep the traceback).

    An OSError in :data:`ENVIRONMENT_ERRNOS` that names its path is the environment's fault
    (a full disk), reported as ``PATH: reason``.

    A UnicodeDecodeError escaping a command means an input text file is not UTF-8; the
    readers that know the file name re-raise it as their own error type, this is the
    last resort (it still says what failed, and where in the bytes).
    """
    if isinstance(e, UnicodeDecodeError):
        return f"input is not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, KeyboardInterrupt):
        return None
    if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    for module_name, class_name in KNOWN_ERRORS:
        module = sys.modules.get(module_name)
        if module is None:
            # Not imported: no instance of its errors can exist yet.
            continue
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and isinstance(e, cls):
            return str(e)
    return None


if __name__ == "__main__":
    sys.exit(main())
