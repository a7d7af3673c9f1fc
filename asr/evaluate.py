"""`asr evaluate`: score a model package, or another system's hypothesis file, on a manifest.

    asr evaluate MODEL MANIFEST --out DIR [--decoder greedy|beam] [--lm FILE] [--beam-size N]
                                          [--lm-weight W] [--word-score S]
                                          [--device cpu|cuda] [--devices N]
    asr evaluate --hyps HYP_FILE MANIFEST --out DIR [--allow-missing]

Both references and hypotheses go through :func:`asr.text.normalize_text`, so a system is
not penalised for casing or punctuation and two systems are always scored alike. The
evaluation directory layout is described in :mod:`asr.reports`.

Hypothesis files are JSONL (``{"id": ..., "text": ...}`` per line) or Kaldi-style text
(``id word word ...`` per line; an id alone is an empty hypothesis). The format is taken from
the first non-empty line. Ids in the manifest but not in the hypotheses are an error unless
``--allow-missing`` (then they are scored as empty and counted); ids only in the hypotheses
are ignored with a counted warning; blank lines are skipped with a counted warning;
duplicate ids are an error.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.data.manifest import Utterance, read_manifest, utf8_lines
from asr.metrics import score_corpus
from asr.reports import ReportError, build_summary, output_lock, utterance_record, write_report
from asr.text import normalize_text

# How many ids an error or warning message lists before "...".
_EXAMPLES = 5


def _normalization_info() -> dict[str, str]:
    # Taken from the function's own docstring so the report cannot drift from the code.
    doc = inspect.getdoc(normalize_text) or ""
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    description = " ".join(p for p in paragraphs if p and not p.startswith(">>>"))
    # reST inline literals (``x``) read badly in Markdown/HTML; quote them instead.
    description = re.sub(r"``(.+?)``", r"“\1”", description)
    return {"name": "asr.text.normalize_text", "description": description}


class HypothesisFileError(ValueError):
    """A malformed hypothesis file; the message names ``path:line``."""


class MissingHypothesesError(ValueError):
    """Manifest utterances without a hypothesis (and missing ones were not allowed)."""

    def __init__(self, missing: Sequence[str], total: int):
        self.missing = list(missing)
        shown = ", ".join(self.missing[:_EXAMPLES]) + (", ..." if len(missing) > _EXAMPLES else "")
        super().__init__(
            f"{len(missing)} of {total} manifest utterances have no hypothesis ({shown}); "
            "pass --allow-missing (allow_missing=True) to score them as empty hypotheses"
        )


class HypothesisWarning(UserWarning):
    """Counted, non-fatal problems with hypotheses (extra ids, blank lines, missing allowed)."""


class ReferenceWarning(UserWarning):
    """Counted, non-fatal problems with references (empty after normalisation)."""


def _examples(ids: Sequence[str]) -> str:
    return ", ".join(ids[:_EXAMPLES]) + (", ..." if len(ids) > _EXAMPLES else "")


@dataclass(frozen=True)
class Hypotheses:
    """A parsed hypothesis file."""

    path: str
    format: str  # "jsonl" or "kaldi"
    texts: dict[str, str]  # id -> raw hypothesis text (not yet normalised)
    empty_lines: int  # blank lines skipped


def read_hypotheses(path: str | Path) -> Hypotheses:
    """Read a JSONL or Kaldi-style hypothesis file.

    Raises HypothesisFileError (``path:line: problem``) for bad JSON, a missing/non-string
    id or text, a duplicate id or a line that is not UTF-8; FileNotFoundError if the file does not exist.
    """
    path = Path(path)
    texts: dict[str, str] = {}
    first_line: dict[str, int] = {}
    empty = 0
    fmt: str | None = None
    # utf8_lines drops a byte-order mark (Windows tools often write one) and names the line
    # of any bytes that are not UTF-8.
    for lineno, line in utf8_lines(path, HypothesisFileError):
        if not line.strip():
            empty += 1
            continue
        if fmt is None:
            fmt = "jsonl" if line.lstrip().startswith("{") else "kaldi"
        if fmt == "jsonl":
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise HypothesisFileError(
                    f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno}); the "
                    "first line made this a JSONL file"
                ) from e
            if not isinstance(d, dict):
                raise HypothesisFileError(f"{path}:{lineno}: expected a JSON object")
            uid, text = d.get("id"), d.get("text")
            if not isinstance(uid, str) or not uid.strip():
                raise HypothesisFileError(f"{path}:{lineno}: 'id' must be a non-empty string")
            if not isinstance(text, str):
                raise HypothesisFileError(
                    f"{path}:{lineno}: utterance {uid}: 'text' must be a string (is {text!r})"
                )
        else:
            parts = line.strip().split(maxsplit=1)
            uid, text = parts[0], parts[1] if len(parts) > 1 else ""
        if uid in first_line:
            raise HypothesisFileError(
                f"{path}:{lineno}: duplicate id {uid!r} (first on line {first_line[uid]})"
            )
        first_line[uid] = lineno
        texts[uid] = text
    return Hypotheses(str(path), fmt or "kaldi", texts, empty)


def package_sha256(path: str | Path) -> str:
    """sha256 of a model package file; for a package directory, of its sorted relative file
    names and contents (so a renamed or edited member changes the digest)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def evaluate(
    refs: list[Utterance],
    hyps: Mapping[str, str],
    out_dir: str | Path,
    settings: Mapping[str, Any],
    model_info: Mapping[str, Any] | None = None,
    rtf: float | None = None,
    *,
    allow_missing: bool = False,
    hypothesis_info: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    num_resamples: int = 1000,
    seed: int = 0,
    worst: int = 20,
) -> dict[str, Any]:
    """Score ``hyps`` (id -> text) against ``refs`` and write the evaluation directory.

    Returns the summary dict also written to ``out_dir/summary.json``. Missing hypotheses
    raise MissingHypothesesError unless ``allow_missing``; then they are scored as empty and
    counted. Extra ids and allowed-missing ids emit a HypothesisWarning with the count;
    references empty after normalisation a ReferenceWarning (counted in
    ``summary["references"]``).
    ``hypothesis_info`` is merged into ``summary["hypotheses"]``, ``extra`` into the summary.
    """
    if not refs:
        raise ValueError("no reference utterances to evaluate")
    seen: set[str] = set()
    dups: list[str] = []
    for u in refs:
        if u.id in seen:
            dups.append(u.id)
        seen.add(u.id)
    if dups:
        raise ValueError(f"duplicate utterance ids in the references: {_examples(dups)}")

    missing = [u.id for u in refs if u.id not in hyps]
    extra_ids = [k for k in hyps if k not in seen]
    if missing and not allow_missing:
        raise MissingHypothesesError(missing, len(refs))
    if missing:
        warnings.warn(
            f"{len(missing)} of {len(refs)} utterances have no hypothesis and were scored as "
            f"empty ({_examples(missing)})",
            HypothesisWarning,
            stacklevel=2,
        )
    if extra_ids:
        warnings.warn(
            f"{len(extra_ids)} hypotheses have ids that are not in the manifest and were "
            f"ignored ({_examples(extra_ids)})",
            HypothesisWarning,
            stacklevel=2,
        )

    ref_texts = [normalize_text(u.text) for u in refs]
    empty_refs = [u.id for u, t in zip(refs, ref_texts, strict=True) if not t]
    if empty_refs:
        # Scored (any hypothesis word is an insertion) but worth knowing: the manifest text
        # was only punctuation/symbols, or the normaliser removed what it held.
        warnings.warn(
            f"{len(empty_refs)} reference(s) are empty after normalisation and were scored "
            f"as empty ({_examples(empty_refs)})",
            ReferenceWarning,
            stacklevel=2,
        )
    hyp_texts = [normalize_text(hyps.get(u.id, "")) for u in refs]
    score = score_corpus(ref_texts, hyp_texts)
    missing_set = set(missing)
    records = [
        utterance_record(u.id, u.speaker, u.duration, s, missing=u.id in missing_set)
        for u, s in zip(refs, score.utterances, strict=True)
    ]
    info = {"missing": len(missing), "extra": len(extra_ids), **(hypothesis_info or {})}
    summary = build_summary(
        score,
        durations=[u.duration for u in refs],
        settings=settings,
        model_info=model_info,
        rtf=rtf,
        normalization=_normalization_info(),
        num_resamples=num_resamples,
        seed=seed,
        extra={
            "hypotheses": info,
            "references": {"empty_after_normalization": len(empty_refs), "empty_items": empty_refs},
            **(extra or {}),
        },
    )
    write_report(out_dir, summary, records, worst=worst)
    return summary


# --------------------------------------------------------------------------------------------
# command line

_DECODING_OPTS = ("lm", "beam_size", "lm_weight", "word_score")


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
    g.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    g.add_argument("--lm", type=Path, help="KenLM language model (binary or ARPA); beam only")
    g.add_argument("--beam-size", type=int, help="beam width; beam only")
    g.add_argument("--lm-weight", type=float, help="language model weight; beam only")
    g.add_argument("--word-score", type=float, help="word insertion score; beam only")
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where the model runs (default cpu)")
    g.add_argument("--devices", type=int, default=1, metavar="N",
                   help="run N worker processes, each on a share of the utterances balanced by duration: "
                        "with --device cuda on cuda:0..N-1, with cpu splitting the cores (default 1)")
    r = parser.add_argument_group("report")
    r.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the CIs")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    r.add_argument("--worst", type=int, default=20, help="worst utterances shown in the report")
    parser.set_defaults(_parser=parser)


def _validate(args: argparse.Namespace) -> None:
    parser: argparse.ArgumentParser = args._parser
    given = [o for o in _DECODING_OPTS if getattr(args, o) is not None]
    flags = ", ".join("--" + o.replace("_", "-") for o in given)
    if args.hyps is not None:
        if len(args.inputs) != 1:
            parser.error(f"with --hyps give only MANIFEST (got {len(args.inputs)} positionals)")
        if given or args.decoder != "greedy" or args.devices != 1:
            what = flags or ("--decoder" if args.decoder != "greedy" else "--devices")
            parser.error(f"decoding options ({what}) do not apply with --hyps")
    else:
        if len(args.inputs) != 2:
            parser.error(
                f"expected MODEL MANIFEST (got {len(args.inputs)} positionals); "
                "use --hyps HYP_FILE MANIFEST to score a hypothesis file"
            )
        if args.decoder == "greedy" and given:
            parser.error(f"{flags} need --decoder beam")
    if args.beam_size is not None and args.beam_size < 1:
        parser.error(f"--beam-size must be >= 1 (is {args.beam_size})")
    if args.lm is not None and not args.lm.exists():
        parser.error(f"--lm {args.lm}: no such file")
    if args.devices != 1 and args.hyps is None:
        from asr.inference import worker_devices

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
    if args.hyps is not None and not args.hyps.is_file():
        parser.error(f"--hyps {args.hyps}: no such file")


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
    # One writer per evaluation directory: a second run fails (exit 2) naming the first,
    # instead of both writing and leaving a mix of the two results.
    with output_lock(args.out, "asr evaluate " + " ".join(map(str, args.inputs))):
        return _run(args)


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
            print(
                f"warning: {args.hyps}: skipped {parsed.empty_lines} empty line(s)", file=sys.stderr
            )
    else:
        # Imported here: decoding needs torch and the model stack, scoring files does not.
        from asr.inference import transcribe_manifest

        opts = {o: getattr(args, o) for o in _DECODING_OPTS if getattr(args, o) is not None}
        if args.devices != 1:
            opts["devices"] = args.devices
        if "lm" in opts:
            opts["lm"] = str(opts["lm"])
        hyps, rtf, settings, info = transcribe_manifest(
            args.inputs[0], str(manifest), decoder=args.decoder, device=args.device, **opts
        )
        # Manifest durations that disagree with the files: a property of the data, so
        # counted at the top level of summary.json rather than among decoder settings.
        mismatch = settings.pop("duration_mismatch_items", None) or {}
        settings.pop("duration_mismatch", None)
        extra["duration_mismatch"] = {"count": len(mismatch), "items": mismatch}
        model_info = dict(info or {})
        model_info.setdefault("path", str(Path(args.inputs[0]).resolve()))
        if not model_info.get("sha256"):
            model_info["sha256"] = package_sha256(args.inputs[0])
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
            print(f"error: {args.out}: cannot write the report ({e})", file=sys.stderr)
            return 2
        finally:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
    _print_summary(summary, args.out)
    failed = settings.get("failed_items") or {}
    if failed:
        # Scored as empty hypotheses (so the WER counts them as deletions), but the run failed.
        print(f"error: {len(failed)} utterance(s) could not be read and were scored as empty:", file=sys.stderr)
        for utt_id, reason in list(failed.items())[:10]:
            print(f"  {utt_id}: {reason}", file=sys.stderr)
        return 1
    return 0
