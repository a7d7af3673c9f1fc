"""`asr <command>` implementations: argparse ``configure(parser)`` and ``run(args) -> int`` per command."""
