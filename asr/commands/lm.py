"""`asr lm build` / `asr lm tune`: estimate a KenLM n-gram LM, tune its decoding weights.

    asr lm build TEXT... --order 3 --out lm.bin [--vocab-size N] [--memory 1G] [--kenlm-bin DIR]
    asr lm tune MODEL DEV_MANIFEST --lm lm.bin [--lm-weights ...] [--word-scores ...]

Parses the command line and calls :func:`asr.decode.lm.build_lm` / :func:`asr.decode.lm.tune_lm`; prints
the product to stdout (the "wrote ..." line, the tuning table). ``asr lm TEXT ...`` means
``build`` (see :func:`asr.cli.main`).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from asr.commands.decoding_flags import (
    add_decoding_arguments,
    check_decoding_flags,
    decoding_options,
)
from asr.decode.lm import (
    DEFAULT_LM_WEIGHTS,
    DEFAULT_PHONE_WEIGHTS,
    DEFAULT_WORD_SCORES,
    LMError,
    build_lm,
    tune_lm,
)


def _float_list(s: str) -> list[float]:
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from e
    if not vals or not all(math.isfinite(x) for x in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {s!r}")
    return vals


def _order(s: str) -> int:
    try:
        n = int(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"order must be an integer, got {s!r}") from e
    if n < 2:
        raise argparse.ArgumentTypeError(
            f"order must be >= 2 (KenLM cannot load unigram models), got {n}"
        )
    return n


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lm_command", metavar="SUBCOMMAND", required=True)

    b = sub.add_parser(
        "build",
        help="estimate an n-gram LM from text with KenLM",
        description="Estimate a word n-gram LM (modified Kneser-Ney) with KenLM.",
    )
    b.add_argument(
        "text",
        nargs="+",
        type=Path,
        help="text file(s), one sentence per line, or JSONL manifest(s)",
    )
    b.add_argument("--order", type=_order, default=3, help="n-gram order (default 3)")
    b.add_argument("--out", type=Path, required=True, help="output model: *.arpa or *.bin")
    b.add_argument("--memory", default="1G", help="lmplz sorting memory (default 1G)")
    b.add_argument(
        "--vocab-size",
        type=int,
        help="keep only the N most frequent words of all the text (default: every word)",
    )
    b.add_argument("--kenlm-bin", type=Path, help="directory of lmplz/build_binary")
    b.add_argument(
        "--tokens",
        type=Path,
        metavar="MODEL",
        help="a token-level LM over this model package's tokens (characters with '|' between "
        "words, or word pieces), for lexicon-free beam search; e.g. --order 6",
    )

    t = sub.add_parser(
        "tune",
        help="grid-search LM weight and word score on a dev set",
        description="Grid-search lm_weight x word_score by corpus WER; saves "
        "the best to <LM>.tune.json, used as the decoding defaults.",
    )
    t.add_argument("model", type=Path, help="model package")
    t.add_argument("manifest", type=Path, help="dev manifest (JSONL)")
    t.add_argument("--lm", type=Path, required=True, help="KenLM model (ARPA or binary)")
    t.add_argument(
        "--lm-weights",
        type=_float_list,
        default=list(DEFAULT_LM_WEIGHTS),
        help="comma-separated grid (default %(default)s)",
    )
    t.add_argument(
        "--word-scores",
        type=_float_list,
        default=list(DEFAULT_WORD_SCORES),
        help="comma-separated grid (default %(default)s); negatives: --word-scores=-1,0,1",
    )
    t.add_argument(
        "--phone-weights",
        type=_float_list,
        default=list(DEFAULT_PHONE_WEIGHTS),
        help="for a package with a phone head: phone weights tried (against 0, off) at the best LM "
        "weight and word score (default %(default)s; --phone-weights 0: do not use the head)",
    )
    add_decoding_arguments(t, flags=("lexicon", "beam_size", "beam_threshold"), decoder=False)
    t.add_argument("--device", default="cpu", help="device for the acoustic model (default cpu)")
    t.add_argument("--no-save", action="store_true", help="do not write <LM>.tune.json")
    parser.set_defaults(_lm_parser=parser)


def _run_build(args: argparse.Namespace) -> int:
    text: Any = args.text[0] if len(args.text) == 1 else list(args.text)
    tokenizer = None
    if args.tokens is not None:
        # Imported here: reading a package's tokenizer loads the model stack.
        from asr.package import PackageError, load_package

        try:
            tokenizer = load_package(args.tokens).tokenizer
        except PackageError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    try:
        info = build_lm(
            text,
            args.order,
            args.out,
            kenlm_bin=args.kenlm_bin,
            memory=args.memory,
            vocab_size=args.vocab_size,
            tokenizer=tokenizer,
        )
    except (LMError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    unit = "tokens" if tokenizer is not None else "words"
    left_out = f"; {info.unspellable} sentences left out (unspellable)" if info.unspellable else ""
    print(
        f"wrote {info.path}: order {info.order}, {info.vocabulary} {unit} in the vocabulary, "
        f"trained on {info.sentences} sentences / {info.words} {unit}{left_out}"
    )
    return 0


def _run_tune(args: argparse.Namespace) -> int:
    problem = check_decoding_flags(args)
    if problem:
        args._lm_parser.error(problem)
    if not args.lm.is_file():
        print(f"error: {args.lm}: language model not found", file=sys.stderr)
        return 1
    # Imported here: loading a model needs the whole model stack, building an LM does not.
    from asr.infer.inference import emissions_for_manifest
    from asr.package import load_package

    failed: dict[str, str] = {}
    try:
        package = load_package(args.model, device=args.device)
        head = package.phone_head if any(w > 0 for w in args.phone_weights) else None
        ems, utts = emissions_for_manifest(package, args.manifest, failed=failed, phones=head is not None)
        result = tune_lm(
            ems,
            [u.text for u in utts],
            package.tokenizer,
            args.lm,
            lm_weights=args.lm_weights,
            word_scores=args.word_scores,
            options=decoding_options(args),
            save=not args.no_save,
            progress=True,
            phone_head=head,
            phone_weights=args.phone_weights,
        )
    except (ValueError, OSError, LMError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{'lm_weight':>9} {'word_score':>10} {'WER':>7}")
    chosen = (result["lm_weight"], result["word_score"]) if result["tuned"] else None
    for g in result["grid"]:
        mark = " *" if (g["lm_weight"], g["word_score"]) == chosen else ""
        print(f"{g['lm_weight']:>9g} {g['word_score']:>10g} {100 * g['wer']:>6.2f}%{mark}")
    for g in result.get("phone_grid", []):
        mark = " *" if g["phone_weight"] == result["phone_weight"] else ""
        what = "both heads rescored" if g["phone_weight"] else "character beam alone"
        print(f"phone_weight {g['phone_weight']:>4g} ({what}) {100 * g['wer']:>6.2f}%{mark}")
    phone = f"phone_weight={result['phone_weight']:g} " if "phone_weight" in result else ""
    print(
        f"{'best' if result['tuned'] else 'untuned, defaults'}: lm_weight={result['lm_weight']:g} "
        f"word_score={result['word_score']:g} {phone}"
        f"WER {100 * result['wer']:.2f}% (greedy {100 * result['greedy_wer']:.2f}%, "
        f"{result['utterances']} utterances, {result['mode']})"
    )
    if "saved_to" in result:
        print(f"saved to {result['saved_to']}")
    if failed:
        print(
            f"error: {len(failed)} utterance(s) had unreadable audio and were scored as empty "
            "hypotheses",
            file=sys.stderr,
        )
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if args.lm_command == "build":
        return _run_build(args)
    return _run_tune(args)
