"""KenLM n-gram language models: build one from text, tune its decoding weights on a dev set.

``asr lm build TEXT... --order 3 --out lm.bin``
    Normalises the text exactly like transcripts (:func:`asr.text.normalize_text`), runs
    KenLM's ``lmplz`` (modified Kneser-Ney) and, for a ``.bin`` output, ``build_binary``.
    A binary LM gets a ``lm.bin.vocab`` side file: KenLM binaries cannot list their words,
    and the beam decoder builds its lexicon from them (:func:`asr.decode.lm_files.lm_vocabulary`).
``asr lm build TEXT... --tokens MODEL.asr --order 6 --out chars.bin``
    A token-level LM: each sentence is written as the model's tokens (characters with "|"
    between words, or word pieces) before ``lmplz``. The beam decoder then searches
    lexicon-free with the LM scoring every token, so it can spell words the text never had.
``asr lm tune MODEL DEV_MANIFEST --lm lm.bin``
    Grid search over ``lm_weight`` x ``word_score`` by corpus WER; the best pair is saved as
    ``lm.bin.tune.json``, which decoders pick up as their defaults
    (:func:`asr.decode.lm_files.load_tuned_weights`).

The KenLM tools are not part of the ``kenlm`` pip package; ``scripts/build_kenlm.sh``
compiles them into ``tools/kenlm/bin`` (see :func:`find_kenlm_bin`). The command line is
:mod:`asr.commands.lm`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from asr.data.manifest import read_manifest, utf8_lines
from asr.decode.beam import BeamSearchDecoder
from asr.decode.decoding import DecoderError, DecodingOptions, greedy_decode
from asr.decode.factory import decode_emissions
from asr.decode.lm_files import LM_TUNE_SUFFIX, LM_VOCAB_SUFFIX, lm_vocabulary
from asr.files import atomic_write_text
from asr.package import PhoneHead
from asr.text import Tokenizer, normalize_text

log = logging.getLogger(__name__)

KENLM_BIN_ENV = "KENLM_BIN"  # directory holding lmplz and build_binary
# KenLM's compile-time KENLM_MAX_ORDER (6 by default) in flashlight-text's decoder and in
# scripts/build_kenlm.sh's build_binary: lmplz writes higher orders, but neither loads them.
KENLM_MAX_ORDER = 6
DEFAULT_LM_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0)
DEFAULT_PHONE_WEIGHTS = (0.25, 0.5, 0.75)  # tried for a package with a phone head (0, off, always is)
_REPO_ROOT = Path(__file__).resolve().parents[1]
_BUILD_HINT = "run scripts/build_kenlm.sh (builds them into tools/kenlm/bin) or set KENLM_BIN"


class LMError(RuntimeError):
    """KenLM tools missing or failing, or a corpus with no usable text."""


@dataclass(frozen=True)
class LMBuild:
    path: Path  # the ARPA or binary model written
    order: int  # n-gram order
    sentences: int  # non-empty lines after normalisation
    words: int  # running words (tokens) in the corpus
    vocabulary: int  # distinct words in the LM (without <s>, </s>, <unk>)
    lines: int = 0  # lines (manifest: utterances) read, before dropping empty ones
    text_vocabulary: int = 0  # distinct words in the text, before any --vocab-size cap
    oov_rate: float = 0.0  # share of the text's tokens outside the capped vocabulary
    unspellable: int = 0  # token-level LM: sentences left out, holding characters the tokenizer lacks


# --------------------------------------------------------------------------------------------
# KenLM tools


def _has_tools(d: Path, names: Sequence[str]) -> bool:
    return all(os.access(d / n, os.X_OK) for n in names)


def find_kenlm_bin(need: Sequence[str] = ("lmplz", "build_binary")) -> Path:
    """Directory holding the KenLM tools ``need``.

    Looks at ``$KENLM_BIN`` (an error if set but incomplete), ``./tools/kenlm/bin``, the
    repository's ``tools/kenlm/bin``, then ``PATH``.

    Raises:
        LMError: not found; the message says how to build them.
    """
    env = os.environ.get(KENLM_BIN_ENV)
    if env:
        d = Path(env)
        if not _has_tools(d, need):
            raise LMError(f"{KENLM_BIN_ENV}={env} lacks {' and '.join(need)}; {_BUILD_HINT}")
        return d
    candidates = [Path.cwd() / "tools" / "kenlm" / "bin", _REPO_ROOT / "tools" / "kenlm" / "bin"]
    for d in candidates:
        if _has_tools(d, need):
            return d
    found = shutil.which(need[0])
    if found and _has_tools(Path(found).parent, need):
        return Path(found).parent
    looked = ", ".join(str(d) for d in dict.fromkeys(candidates))
    raise LMError(
        f"KenLM tools {' and '.join(need)} not found (looked in {looked} and PATH); {_BUILD_HINT}"
    )


def _run_tool(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise LMError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


# --------------------------------------------------------------------------------------------
# building


def _read_texts(source: str | os.PathLike) -> Iterable[str]:
    path = Path(source)
    if path.suffix == ".jsonl":  # a manifest: use its transcripts
        return [u.text for u in read_manifest(path)]
    try:
        # utf8_lines names the line of any bytes that are not UTF-8 and drops a byte-order mark.
        return [text for _, line in utf8_lines(path, LMError) for text in line.splitlines()]
    except OSError as e:
        raise LMError(f"{path}: cannot read text: {e.strerror or e}") from e


def build_lm(
    text: str | os.PathLike | Iterable[str],
    order: int,
    out_path: str | os.PathLike,
    kenlm_bin: str | os.PathLike | None = None,
    memory: str = "1G",
    vocab_size: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> LMBuild:
    """Estimate a word n-gram LM with KenLM (or, with ``tokenizer``, a token n-gram).

    Args:
        text: a text file (one sentence per line) or JSONL manifest (its ``text`` fields)
            as a str/Path, a list of such ``Path`` objects, or an iterable of sentences
            (str items that are not Paths are sentences, never file names).
            Everything is passed through :func:`normalize_text`; empty lines are dropped.
        order: n-gram order, >= 2 (KenLM cannot load unigram models).
        out_path: ``*.arpa`` (text) or ``*.bin`` (KenLM binary, loads much faster). A
            ``.bin`` gets the ``<out>.vocab`` word list. A stale ``<out>.tune.json`` is
            removed: tuned weights belong to the model they were tuned with.
        kenlm_bin: directory of ``lmplz``/``build_binary``; None: :func:`find_kenlm_bin`.
        memory: ``lmplz -S`` sorting memory (number + unit, or a percentage of RAM).
        vocab_size: keep only the ``vocab_size`` most frequent words (ties: alphabetical),
            through lmplz's own ``--limit_vocab_file``: n-grams holding another word are
            pruned, while every sentence still counts towards the kept n-grams' statistics
            (mapping the other words to ``<unk>`` first would instead invent n-grams like
            "the <unk> of"). None: every word of the text.
        tokenizer: a token-level LM: each sentence is written as this tokenizer's tokens
            (:func:`token_sentence`); the LM's words are then the tokens, and the beam decoder
            searches lexicon-free with it. Sentences holding characters the tokenizer cannot
            spell are left out and counted (``unspellable``, logged as a warning).

    ``--discount_fallback`` is always passed: on small corpora the closed-form Kneser-Ney
    discounts are undefined, and on large ones the flag never triggers.
    """
    if order < 2:
        raise ValueError(f"order must be >= 2 (KenLM cannot load unigram models); got {order}")
    if order > KENLM_MAX_ORDER:
        raise ValueError(f"order must be <= {KENLM_MAX_ORDER} (the largest KenLM loads when decoding); got {order}")
    if vocab_size is not None and tokenizer is not None:
        raise ValueError("vocab_size limits words; a token-level LM keeps every token")
    if vocab_size is not None and vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1 (is {vocab_size})")
    out = Path(out_path)
    if out.suffix not in (".arpa", ".bin"):
        raise ValueError(f"{out}: output must end in .arpa or .bin")

    if isinstance(text, (str, os.PathLike)):
        named: list[tuple[str, Iterable[str]]] = [(str(text), _read_texts(text))]
    else:
        texts = list(text)
        if texts and all(isinstance(t, os.PathLike) for t in texts):
            named = [(str(t), _read_texts(t)) for t in texts]
        else:
            named = [("<texts>", texts)]
    name = ", ".join(n for n, _ in named)
    sentences: list[str] = []
    lines = 0
    for src_name, src in named:
        raw = list(src)
        kept = [s for s in (normalize_text(line) for line in raw) if s]
        log.info(
            "lm text %s: %d lines, %d sentences after normalisation, %d tokens",
            src_name,
            len(raw),
            len(kept),
            sum(len(s.split()) for s in kept),
        )
        lines += len(raw)
        sentences += kept
    unspellable = 0
    if tokenizer is not None:
        spelled = [token_sentence(s, tokenizer) for s in sentences]
        unspellable = sum(t is None for t in spelled)
        if unspellable:
            log.warning("lm text %s: %d of %d sentences left out: characters the tokenizer cannot spell",
                        name, unspellable, len(sentences))
        sentences = [t for t in spelled if t]
        if not sentences and unspellable:
            raise LMError(f"{name}: no sentence the tokenizer can spell ({unspellable} left out)")
    if not sentences:
        raise LMError(f"{name}: no text left after normalisation")
    counts = Counter(w for s in sentences for w in s.split())
    words = sum(counts.values())
    log.info(
        "lm text: %d source(s), %d lines, %d sentences, %d tokens, %d distinct words",
        len(named),
        lines,
        len(sentences),
        words,
        len(counts),
    )
    limit = _vocabulary_limit(counts, vocab_size)
    oov = 0 if limit is None else words - sum(counts[w] for w in limit)

    tools = ("lmplz", "build_binary") if out.suffix == ".bin" else ("lmplz",)
    bin_dir = Path(kenlm_bin) if kenlm_bin is not None else find_kenlm_bin(tools)
    if not _has_tools(bin_dir, tools):
        raise LMError(f"{bin_dir} lacks {' and '.join(tools)}; {_BUILD_HINT}")

    out.parent.mkdir(parents=True, exist_ok=True)
    # Scratch files for lmplz / build_binary (the corpus, the vocabulary limit, the ARPA and
    # binary files) are plain writes in a temporary folder next to the output: the finished
    # LM is renamed into place from there (one filesystem, so the rename is atomic), and its
    # vocabulary side file is written atomically.
    with tempfile.TemporaryDirectory(prefix=".lm-", dir=out.parent) as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        arpa = Path(tmp) / "lm.arpa"
        _run_tool(
            [
                str(bin_dir / "lmplz"),
                "-o",
                str(order),
                "--discount_fallback",
                "-S",
                memory,
                "-T",
                tmp + os.sep,
                "--text",
                str(corpus),
                "--arpa",
                str(arpa),
                *(
                    ["--limit_vocab_file", str(_write_words(Path(tmp) / "limit.txt", limit))]
                    if limit
                    else []
                ),
            ],
            "lmplz",
        )
        vocab = lm_vocabulary(arpa)
        if out.suffix == ".bin":
            binary = Path(tmp) / "lm.bin"
            _run_tool([str(bin_dir / "build_binary"), str(arpa), str(binary)], "build_binary")
            atomic_write_text(Path(str(out) + LM_VOCAB_SUFFIX), "\n".join(vocab) + "\n")
            os.replace(binary, out)
        else:
            os.replace(arpa, out)
    Path(str(out) + LM_TUNE_SUFFIX).unlink(missing_ok=True)
    return LMBuild(
        out,
        order,
        len(sentences),
        words,
        len(vocab),
        lines=lines,
        text_vocabulary=len(counts),
        oov_rate=oov / words,
        unspellable=unspellable,
    )


def token_sentence(text: str, tokenizer: Tokenizer) -> str | None:
    """A normalised sentence as the LM text of a token-level LM: its tokens, space-separated
    ("c a t | o n" for characters, "▁the ▁c at" for word pieces); None if the tokenizer
    cannot spell it. The decoder reads the LM's words as tokens
    (:func:`asr.decode.lm_files.is_token_level_lm`)."""
    if tokenizer.unknown_chars(text):
        return None
    return " ".join(tokenizer.tokens[i] for i in tokenizer.encode(text))


def _vocabulary_limit(counts: Counter[str], vocab_size: int | None) -> list[str] | None:
    """The ``vocab_size`` most frequent words (ties alphabetical, so builds are repeatable),
    or None when there is no cap or the text has no more words than that. Logs the
    vocabulary before and after the cap and the OOV rate: the share of the text's tokens
    that fall outside it."""
    if vocab_size is None:
        return None
    if len(counts) <= vocab_size:
        log.info(
            "lm vocabulary: all %d words of the text fit the cap of %d (OOV rate 0.00%%)",
            len(counts),
            vocab_size,
        )
        return None
    kept = sorted(counts, key=lambda w: (-counts[w], w))[:vocab_size]
    total = sum(counts.values())
    covered = sum(counts[w] for w in kept)
    log.info(
        "lm vocabulary capped at %d of %d words: OOV rate %.2f%% of the text's tokens",
        vocab_size,
        len(counts),
        100 * (total - covered) / total,
    )
    return kept


def _write_words(path: Path, words: Sequence[str]) -> Path:
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# tuning


def decode_texts(decode: Any, emissions: Sequence[Tensor], batch: int = 32) -> list[str]:
    """Best text per utterance of ``decode(padded (n, T, V), lengths)``, run over ``emissions``
    in padded batches of ``batch``; ``decode`` returns per utterance a hypothesis with
    ``.text`` or a best-first list of them."""
    return [h[0].text if isinstance(h, list) else h.text for h in decode_emissions(decode, emissions, batch)]


def _tune_phone_weight(joint: Sequence[Tensor], refs: Sequence[str], tokenizer: Tokenizer, head: PhoneHead,
                       weights: Sequence[float], options: DecodingOptions, char_wer: float) -> dict[str, Any]:
    """The phone weight (0 = off, scoring ``char_wer``) with the lowest WER; the beams run
    once, each weight only re-picks from the pooled n-best lists."""
    from asr.decode.phones import TwoHeadDecoder
    from asr.metrics import score_corpus

    weights = [float(w) for w in weights if w > 0]
    if not weights:
        return {}
    try:
        dec = TwoHeadDecoder(tokenizer, head.phones, head.pronunciations, replace(options, phone_weight=weights[0]))
    except DecoderError as e:  # e.g. a character LM: two-head decoding needs a word LM
        log.info("phone weight not tuned: %s", e)
        return {}
    pools = list(decode_emissions(dec.pool, joint, batch=32))
    grid = [{"phone_weight": 0.0, "wer": char_wer}]
    for w in weights:
        texts = [dec.pick(p, w, align=False).text for p in pools]
        grid.append({"phone_weight": w, "wer": score_corpus(refs, texts).wer})
    best = min(grid, key=lambda g: g["wer"])  # the first of equal WERs: 0 (off) on a tie
    return {"phone_weight": best["phone_weight"], "wer": best["wer"], "char_beam_wer": char_wer,
            "phone_grid": grid}


def tune_lm(
    emissions: Sequence[Tensor],
    refs: Sequence[str],
    tokenizer: Tokenizer,
    lm_path: str | os.PathLike,
    lm_weights: Sequence[float] = DEFAULT_LM_WEIGHTS,
    word_scores: Sequence[float] = DEFAULT_WORD_SCORES,
    options: DecodingOptions | None = None,
    save: bool = False,
    progress: bool = False,
    phone_head: PhoneHead | None = None,
    phone_weights: Sequence[float] = DEFAULT_PHONE_WEIGHTS,
) -> dict[str, Any]:
    """Grid-search LM weight and word insertion score by corpus WER on a dev set; with a
    package's phone head, then the phone weight of two-head decoding (:mod:`asr.decode.phones`).

    Args:
        emissions: [(T_i, V)] log-probs of the dev utterances (a (0, V) tensor decodes to "").
        refs: their reference transcripts (normalised here).
        lm_path: the LM whose weights are tuned.
        options: the rest of the beam search (beam size and threshold, lexicon, ...;
            default :class:`DecodingOptions`' defaults); its ``lm``, ``lm_weight`` and
            ``word_score`` are replaced by ``lm_path`` and each grid point.
        save: also write the result to ``<lm_path>.tune.json``.
        phone_head: the package's phone head; ``emissions`` are then joint, (T_i, V + 1 + P)
            (:func:`asr.infer.engine.forward_batch` with ``phones=True``). At the best LM weight and
            word score, each of ``phone_weights`` rescores both heads' n-best lists; the best
            (0, the character beam alone, unless one is strictly better) is ``"phone_weight"``.

    Returns:
        ``{"lm_weight", "word_score", "wer"}`` of the best grid point (the first one on a
        tie, so list the preferred values first), ``"grid"`` with every point's WER,
        ``"greedy_wer"`` for reference, ``"tuned"``, and the settings used. When a grid of
        several points gives one WER everywhere (e.g. 0% on an easy dev set), the dev set
        cannot tell the weights apart: a warning is logged, ``"tuned"`` is False, the
        weights are :class:`DecodingOptions`' defaults and nothing is saved (a pick
        among equals would pass an arbitrary choice off as a tuned one).
    """
    from asr.metrics import score_corpus

    if len(emissions) != len(refs):
        raise ValueError(f"{len(emissions)} emissions but {len(refs)} references")
    if not emissions:
        raise ValueError("cannot tune on an empty dev set")
    if not lm_weights or not word_scores:
        raise ValueError("lm_weights and word_scores must each have at least one value")
    v = len(tokenizer.tokens)
    width = v + (1 + len(phone_head.phones) if phone_head is not None else 0)
    for i, e in enumerate(emissions):
        if e.ndim != 2 or e.shape[1] != width:
            raise ValueError(f"emissions[{i}] must be (T, {width}); got {tuple(e.shape)}")
    joint = [e.detach().float().cpu() for e in emissions]
    emissions = [e[:, :v] for e in joint]
    refs = [normalize_text(r) for r in refs]

    greedy = decode_texts(lambda lp, lens: greedy_decode(lp, lens, tokenizer), emissions)
    greedy_wer = score_corpus(refs, greedy).wer
    points = [(float(w), float(s)) for w in lm_weights for s in word_scores]
    grid: list[dict[str, float]] = []
    settings: dict[str, Any] = {}

    base = options or DecodingOptions()

    def run_point(w: float, s: float) -> None:
        dec = BeamSearchDecoder(tokenizer, base, lm=str(lm_path), lm_weight=w, word_score=s)
        settings.update(dec.settings())
        wer = score_corpus(refs, decode_texts(dec, emissions)).wer
        grid.append({"lm_weight": w, "word_score": s, "wer": wer})

    if progress:
        from rich.progress import track

        for w, s in track(points, description="tuning LM weights", transient=True):
            run_point(w, s)
    else:
        for w, s in points:
            run_point(w, s)

    best = min(grid, key=lambda g: g["wer"])  # min() keeps the first of equal WERs
    tuned = len(grid) == 1 or any(g["wer"] != best["wer"] for g in grid)
    if not tuned:
        weight, score = DecodingOptions.DEFAULT_LM_WEIGHT, DecodingOptions.DEFAULT_WORD_SCORE
        log.warning(
            "every one of the %d grid points gives WER %.2f%%: this dev set cannot tune the LM "
            "weights; keeping the defaults (lm_weight=%g, word_score=%g), nothing saved",
            len(grid),
            100 * best["wer"],
            weight,
            score,
        )
        best = {"lm_weight": weight, "word_score": score, "wer": best["wer"]}
    phone: dict[str, Any] = {}
    if phone_head is not None and tuned and phone_weights:
        phone = _tune_phone_weight(joint, refs, tokenizer, phone_head, phone_weights,
                                   replace(base, decoder="beam", lm=str(lm_path), lm_weight=best["lm_weight"],
                                           word_score=best["word_score"]), best["wer"])
    result: dict[str, Any] = {
        **best,
        **phone,
        "tuned": tuned,
        "greedy_wer": greedy_wer,
        "lm": str(Path(lm_path).resolve()),
        "mode": settings.get("mode"),
        "beam_size": base.beam_size,
        "beam_threshold": base.beam_threshold,
        "utterances": len(refs),
        "grid": grid,
    }
    if save and tuned:
        side = Path(str(lm_path) + LM_TUNE_SUFFIX)
        atomic_write_text(side, json.dumps(result, indent=2) + "\n")
        result["saved_to"] = str(side)
    return result


__all__ = [
    "DEFAULT_LM_WEIGHTS",
    "DEFAULT_PHONE_WEIGHTS",
    "DEFAULT_WORD_SCORES",
    "LMBuild",
    "LMError",
    "build_lm",
    "find_kenlm_bin",
    "tune_lm",
]
