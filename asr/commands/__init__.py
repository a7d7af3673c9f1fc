"""`asr <command>` implementations: argparse set-up (``configure``) and ``run(args) -> int``."""
