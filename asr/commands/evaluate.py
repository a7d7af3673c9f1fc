"""`asr evaluate`: score a model package, or another system's hypothesis file, on a manifest.

    asr evaluate MODEL MANIFEST --out DIR [--decoder greedy|beam] [--lm FILE] [--lexicon FILE]
                                          [--beam-size N] [--beam-threshold T] [--lm-weight W]
                                          [--word-score S]
    asr evaluate --hyps HYP_FILE MANIFEST --out DIR [--allow-missing]

Parses and validates the command line, calls :func:`asr.evaluate.evaluation.evaluate` (and, in MODEL
mode, :func:`asr.infer.inference.transcribe_manifest`), prints the summary table to stdout.
Counted problems (missing/extra hypotheses, blank lines) are logged as warnings; bad input
raises the library's error types, which ``asr.cli.main`` turns into one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asr.commands.decoding_flags import (
    add_decoding_arguments,
    beam_flags_given,
    check_decoding_flags,
    decoding_options,
)
from asr.data.manifest import read_manifest
from asr.evaluate.evaluation import (
    HypothesisWarning,
    MissingHypothesesError,
    ReferenceWarning,
    evaluate,
    read_hypotheses,
)
from asr.evaluate.reports.data import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, ReportError
from asr.files import sha256_digest
from asr.lock import output_lock
from asr.signals import run_interruptible

log = logging.getLogger(__name__)

def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = (
        "asr evaluate MODEL MANIFEST --out DIR [decoding options] [--device cpu|cuda] [--devices N]\n"
        "       asr evaluate --hyps HYP_FILE MANIFEST --out DIR [--allow-missing]"
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="MODEL MANIFEST",
        help="model package and manifest (only MANIFEST with --hyps)",
    )
    parser.add_argument("--out", required=True, type=Path, help="evaluation directory to write")
    parser.add_argument(
        "--hyps", type=Path, help="score this hypothesis file (JSONL {id,text} or Kaldi 'id text')"
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="score manifest utterances without a hypothesis as empty (counted)",
    )
    g = parser.add_argument_group("decoding (MODEL mode)")
    add_decoding_arguments(g)
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the model runs (default cpu)")
    g.add_argument("--devices", type=int, default=1, metavar="N",
                   help="run N worker processes, each on a share of the utterances balanced by duration: "
                        "with --device cuda on cuda:0..N-1, with cpu splitting the cores (default 1)")
    r = parser.add_argument_group("report")
    r.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples for the CIs")
    r.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed")
    r.add_argument("--worst", type=int, default=20, help="worst utterances shown in the report")
    parser.set_defaults(_parser=parser)


def _validate(args: argparse.Namespace) -> None:
    parser: argparse.ArgumentParser = args._parser
    flags = ", ".join(beam_flags_given(args))
    if args.hyps is not None:
        if len(args.inputs) != 1:
            parser.error(f"with --hyps give only MANIFEST (got {len(args.inputs)} positionals)")
        if flags or args.decoder != "greedy" or args.devices != 1:
            what = flags or ("--decoder" if args.decoder != "greedy" else "--devices")
            parser.error(f"decoding options ({what}) do not apply with --hyps")
    else:
        if len(args.inputs) != 2:
            parser.error(
                f"expected MODEL MANIFEST (got {len(args.inputs)} positionals); "
                "use --hyps HYP_FILE MANIFEST to score a hypothesis file"
            )
    problem = check_decoding_flags(args)
    if problem:
        parser.error(problem)
    if args.lm is not None and not args.lm.exists():
        parser.error(f"--lm {args.lm}: no such file")
    if args.devices != 1 and args.hyps is None:
        from asr.infer.parallel import worker_devices

        try:
            worker_devices(args.device, args.devices)
        except (ValueError, RuntimeError) as e:
            parser.error(str(e))
    if args.resamples < 1:
        parser.error(f"--resamples must be >= 1 (is {args.resamples})")
    if args.worst < 0:
        parser.error(f"--worst must be >= 0 (is {args.worst})")
    for p in args.inputs:
        if not Path(p).exists():
            parser.error(f"{p}: no such file or directory")
    # Not is_file(): /dev/stdin and <(...) are pipes, read once like any file.
    if args.hyps is not None and not args.hyps.exists():
        parser.error(f"--hyps {args.hyps}: no such file")
    if args.hyps is not None and args.hyps.is_dir():
        parser.error(f"--hyps {args.hyps}: is a directory (give the hypothesis file)")


def _print_summary(summary: Mapping[str, Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    w = summary["words"]
    t = Table(title=f"evaluation: {out_dir}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    lo, hi = summary["wer_ci"]
    t.add_row("WER", f"{100 * summary['wer']:.2f}%  (95% CI {100 * lo:.2f}–{100 * hi:.2f})")
    lo, hi = summary["cer_ci"]
    t.add_row("CER", f"{100 * summary['cer']:.2f}%  (95% CI {100 * lo:.2f}–{100 * hi:.2f})")
    if summary.get("cer_no_space_ci"):
        lo, hi = summary["cer_no_space_ci"]
        t.add_row(
            "CER, no spaces",
            f"{100 * summary['cer_no_space']:.2f}%  (95% CI {100 * lo:.2f}–{100 * hi:.2f})",
        )
    t.add_row("SER", f"{100 * summary['ser']:.1f}%")
    t.add_row(
        "words",
        f"{w['reference']} ref: S {w['substitutions']}  D {w['deletions']}  "
        f"I {w['insertions']}  H {w['hits']}",
    )
    t.add_row("utterances", str(summary["num_utterances"]))
    hyp = summary["hypotheses"]
    if hyp["missing"]:
        t.add_row("missing hyps", f"{hyp['missing']} scored as empty hypotheses")
    if hyp["extra"]:
        t.add_row("extra hyps", f"{hyp['extra']} ignored (not in the manifest)")
    empty_refs = (summary.get("references") or {}).get("empty_after_normalization", 0)
    if empty_refs:
        t.add_row("empty refs", f"{empty_refs} empty after normalisation")
    mismatch = (summary.get("duration_mismatch") or {}).get("count", 0)
    if mismatch:
        t.add_row("duration", f"{mismatch} manifest duration(s) disagree with the file")
    if summary.get("rtf") is not None:
        t.add_row("RTF", f"{summary['rtf']:.4f}")
    t.add_row("report", str(out_dir / "report.html"))
    Console().print(t)


def run(args: argparse.Namespace) -> int:
    _validate(args)

    def locked() -> int:
        # One writer per evaluation directory: a second run fails (exit 2) naming the first,
        # instead of both writing and leaving a mix of the two results.
        with output_lock(args.out, "asr evaluate " + " ".join(map(str, args.inputs))):
            return _run(args)

    # SIGTERM / Ctrl-C: workers stopped, lock removed, one line, exit 143 / 130.
    return run_interruptible(str(args.out), locked)


def _run(args: argparse.Namespace) -> int:
    manifest = Path(args.inputs[-1])
    try:
        refs = read_manifest(manifest)
    except OSError as e:
        print(f"error: {manifest}: {e.strerror or e}", file=sys.stderr)
        return 2
    if not refs:
        print(f"error: {manifest}: no utterances", file=sys.stderr)
        return 2

    hyp_info: dict[str, Any] = {}
    model_info: dict[str, Any] | None = None
    rtf: float | None = None
    extra: dict[str, Any] = {"manifest": str(manifest.resolve())}
    if args.hyps is not None:
        try:
            parsed = read_hypotheses(args.hyps)
        except OSError as e:
            print(f"error: {args.hyps}: {e.strerror or e}", file=sys.stderr)
            return 2
        hyps = parsed.texts
        hyp_info = {
            "source": parsed.path,
            "format": parsed.format,
            "empty_lines": parsed.empty_lines,
        }
        settings: dict[str, Any] = {"system": "external hypotheses", "file": parsed.path}
        if parsed.empty_lines:
            log.warning("%s: skipped %d empty line(s)", args.hyps, parsed.empty_lines)
    else:
        # Imported here: decoding needs torch and the model stack, scoring files does not.
        from asr.infer.inference import transcribe_manifest

        # The manifest read above, not read again: it may be a pipe (/dev/stdin), already drained.
        hyps, rtf, settings, info = transcribe_manifest(
            args.inputs[0], str(manifest), decoding_options(args), device=args.device, devices=args.devices,
            utterances=refs,
        )
        # Manifest durations that disagree with the files: a property of the data, so
        # counted at the top level of summary.json rather than among decoder settings.
        mismatch = settings.pop("duration_mismatch_items", None) or {}
        settings.pop("duration_mismatch", None)
        extra["duration_mismatch"] = {"count": len(mismatch), "items": mismatch}
        model_info = dict(info or {})
        model_info.setdefault("path", str(Path(args.inputs[0]).resolve()))
        if not model_info.get("sha256"):
            model_info["sha256"] = sha256_digest(args.inputs[0])
        hyp_info = {"source": "model"}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HypothesisWarning)
        warnings.simplefilter("always", ReferenceWarning)
        try:
            summary = evaluate(
                refs,
                hyps,
                args.out,
                settings,
                model_info,
                rtf,
                allow_missing=args.allow_missing,
                hypothesis_info=hyp_info,
                extra=extra,
                num_resamples=args.resamples,
                seed=args.seed,
                worst=args.worst,
            )
        except (MissingHypothesesError, ReportError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            # The new set was staged beside the old one: the directory still holds the old run.
            print(f"error: {e.filename or args.out}: cannot write the report ({e.strerror or e}); "
                  f"{args.out} was left as it was", file=sys.stderr)
            return 2
        finally:
            for w in caught:
                log.warning("%s", w.message)
    _print_summary(summary, args.out)
    failed = settings.get("failed_items") or {}
    if failed:
        # Scored as empty hypotheses (so the WER counts them as deletions), but the run failed.
        print(f"error: {len(failed)} utterance(s) could not be read and were scored as empty:", file=sys.stderr)
        for utt_id, reason in list(failed.items())[:10]:
            print(f"  {utt_id}: {reason}", file=sys.stderr)
        return 1
    return 0
