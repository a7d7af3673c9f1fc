"""Word decoding from the auxiliary phone CTC head: lexicon beam search + word LM over phones.

    python recipes/speechocean762/decode_phones.py CKPT [CKPT ...] MANIFEST --train TRAIN.jsonl --lexicon LEXICON.txt \\
        --lm LM.bin --out DIR [--lm-weights 0.5,1,2,3] [--word-scores -1,0,1,2] [--beam-size N]
        [--emissions DIR/emissions.pt] [--combine --char-lm-weight W --char-word-score S [--nbest 10]]

CKPT is a Lightning checkpoint of ``asr train`` with ``model.phone_ctc_weight > 0`` (or an
experiment directory: its best checkpoint by dev WER); several CKPTs of one run are averaged
(network and phone head), as ``asr export --average`` does. It reads checkpoints, not a
package (an exported package holds the phone head too, see the end of this docstring), with
:func:`asr.train.checkpoint.read_lightning_checkpoint` (weights-only, nothing unpickled), runs the
network over MANIFEST (the toolkit's features, model and inference batching), takes the phone
head's log-probs on the layer it was trained on, and decodes them with flashlight's lexicon
beam search (``torchaudio.models.decoder.ctc_decoder``) and a word KenLM.

Decoding lexicon: every word of the TRAINING transcripts (``--train``) that LEXICON lists,
spelled with its first pronunciation, stress stripped -- what the phone targets were built
from (:class:`asr.data.lexicon.PhoneMap`). Words of LEXICON outside the training transcripts
never enter it: a publisher's lexicon usually lists the test words too, and decoding with
them would leak the test vocabulary. Training words without a pronunciation are counted and
listed in ``DIR/summary.json`` (they cannot be output).

Tokens: blank (id 0, as the head was trained), the checkpoint's phones, and a word-boundary
token the model never emits (its log-prob is fixed very low), the way NeMo decodes BPE.
Without a boundary token a word ends with its last phone, and flashlight's search, back at
the trie root, could not hold that phone over several frames; so, as for word pieces
(:func:`asr.decode.lm_files.search_spellings`, explained in :mod:`asr.decode.decoding`), each word is also
spelled with its last phone doubled ("K AE T T"): a repeat without a blank cannot enter a
trie node but can complete a word there.

With several LM weights / word scores, each grid point decodes MANIFEST and is scored
(corpus WER against the manifest's text); ``DIR/hyps.jsonl`` ({"id", "text"}, one line per
utterance, for ``asr evaluate --hyps``) holds the best point's hypotheses, ``DIR/summary.json``
the grid, checkpoint and lexicon counts, ``DIR/lexicon.txt`` the decoding lexicon.
``--emissions FILE`` caches the network's outputs (phone and character log-probs), so a
second run with another grid skips the forward pass.

``--combine`` also joins the two heads: the character beam's n-best (LM weight / word score
as ``asr lm tune`` found them for the character model) and the phone beam's n-best (its best
grid point) are pooled per utterance, and each distinct text is scored
``(1 - w) * char CTC log-lik + w * phone CTC log-lik + a * log10 P_LM(text) + b * words``;
a grid over w, a, b picks the best on MANIFEST (``DIR/combined/``). Since that tunes three
weights on the set it scores, a 2-fold cross-validation by speaker is printed too, for w free
and for w = 0 (the same rescoring without the phone head: the fair control).

This script is the experiment bench behind ``asr``'s ``--phone-weight`` decoding
(:mod:`asr.decode.phones`, which holds the decoders and the rescoring used here): it reads
checkpoints rather than packages, tunes every weight on a grid, and reports the
cross-validated and phone-only numbers. Users decode with ``asr evaluate / transcribe
MODEL --decoder beam --lm LM --phone-weight W`` on a package exported from such a run.

Exit status: 0 done; 2 unusable input (a checkpoint without a phone head, a missing file), as
one ``error: ...`` line; 1 when some utterances' audio could not be read (decoded as "").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from asr.audio import AudioError, load_audio
from asr.data.lexicon import Coverage, LexiconError, PhoneMap, read_lexicon
from asr.data.manifest import ManifestError, Utterance, read_manifest
from asr.data.sampler import plan_batches
from asr.decode.decoding import DecoderError, DecodingOptions
from asr.decode.lm import decode_texts
from asr.decode.phones import (
    BLANK,
    PhoneDecoder,
    candidates,
    combine,
    write_search_lexicon,
)
from asr.features import LogMel
from asr.files import atomic_write_text
from asr.model import AcousticModel
from asr.text import Tokenizer, normalize_text
from asr.train.checkpoint import (
    CheckpointError,
    average_state_dicts,
    best_checkpoints,
    check_compatible,
    read_lightning_checkpoint,
)


class UsageError(ValueError):
    """Unusable input; the message is printed as one ``error:`` line (exit 2)."""


# --------------------------------------------------------------------------------------------
# decoding lexicon and decoder (no model needed: unit-tested on hand-built log-probs)


@dataclass(frozen=True)
class DecodingLexicon:
    prons: dict[str, tuple[str, ...]]  # training word -> phones (stress stripped)
    coverage: Coverage  # training utterances whose words all have a pronunciation
    missing: list[str]  # training words LEXICON lacks (cannot be decoded)
    foreign_phones: list[str]  # training words whose phones the head does not have (left out)


def decoding_lexicon(lexicon: dict[str, tuple[str, ...]], train_texts: Sequence[str],
                     phones: Sequence[str]) -> DecodingLexicon:
    """The pronunciations of the training transcripts' words, nothing else (see module doc)."""
    phone_map, cov = PhoneMap.build(lexicon, train_texts)
    known = set(phones)
    foreign = sorted(w for w, ps in phone_map.prons.items() if not set(ps) <= known)
    prons = {w: ps for w, ps in phone_map.prons.items() if w not in set(foreign)}
    return DecodingLexicon(prons, cov, sorted(cov.missing_words), foreign)


# --------------------------------------------------------------------------------------------
# the network: character and phone log-probs of a manifest


@dataclass
class PhoneNetwork:
    model: AcousticModel
    head: torch.nn.Linear
    featurizer: LogMel
    tokenizer: Tokenizer
    phones: tuple[str, ...]
    paths: tuple[Path, ...]  # the checkpoints averaged (one: not averaged)

    @property
    def ident(self) -> str:
        """What the emissions cache and summary.json record: the checkpoints, resolved."""
        return ",".join(str(p.resolve()) for p in self.paths)

    @torch.inference_mode()
    def forward(self, waves: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """[(char log-probs (T', V), phone log-probs (T', 1 + P))] of a batch of waveforms."""
        lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
        feats, feat_lens = self.featurizer(pad_sequence([w.float() for w in waves], batch_first=True), lengths)
        out = self.model.forward_outputs(feats, feat_lens, tap=self.model.phone_layer)
        phone_lp = self.head(out.tapped).float().log_softmax(dim=-1)
        return [(out.log_probs[i, :n].clone(), phone_lp[i, :n].clone()) for i, n in enumerate(out.lens.tolist())]


def load_network(ckpts: Sequence[Path]) -> PhoneNetwork:
    """The checkpoints' network and phone head (eval mode, CPU); refuses one without a head.

    An experiment directory stands for its best checkpoint by dev WER. Several checkpoints
    (of one run: :func:`asr.train.checkpoint.check_compatible`) are averaged, network and phone
    head alike, as ``asr export --average`` averages the network.
    """
    paths = [best_checkpoints(p, 1)[0] if p.is_dir() else p for p in ckpts]
    if not paths:
        raise UsageError("no checkpoint given")
    loaded = [read_lightning_checkpoint(p) for p in paths]
    for c in loaded:
        if not c.phones or not c.phone_head:
            raise UsageError(f"{c.path}: checkpoint has no phone CTC head (train with model.phone_ctc_weight > 0 "
                             "and data.lexicon)")
        if c.phones != loaded[0].phones:
            raise UsageError(f"{c.path}: other phones than {loaded[0].path}")
    c = loaded[0]
    state, head_state = c.state_dict, c.phone_head
    if len(loaded) > 1:
        check_compatible(loaded)
        names = [str(x.path) for x in loaded]
        state = average_state_dicts([x.state_dict for x in loaded], names)
        head_state = average_state_dicts([x.phone_head for x in loaded], names)
    tokenizer = Tokenizer.from_dict(c.tokenizer)
    model = AcousticModel(c.config.model, c.config.features.n_mels, tokenizer.vocab_size)
    model.load_state_dict(state, strict=True)
    head = torch.nn.Linear(model.layer_dim, len(c.phones) + 1)
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as e:
        raise UsageError(f"{c.path}: phone head does not fit the model: {e}") from None
    return PhoneNetwork(model.eval(), head.eval(), LogMel(c.config.features).eval(), tokenizer, c.phones,
                        tuple(paths))


def manifest_emissions(net: PhoneNetwork, utts: Sequence[Utterance], failed: dict[str, str],
                       batch_size: int = 16, max_batch_seconds: float = 200.0) -> tuple[list[Tensor], list[Tensor]]:
    """Character and phone log-probs of every utterance (in order); unreadable audio -> (0, V)."""
    sr = net.featurizer.cfg.sample_rate
    chars: list[Tensor | None] = [None] * len(utts)
    phones: list[Tensor | None] = [None] * len(utts)
    batches = plan_batches([u.duration for u in utts], batch_size, max_batch_seconds)
    for k, batch in enumerate(batches):
        good, waves = [], []
        for i in batch:
            u = utts[i]
            try:
                waves.append(load_audio(u.audio, sr, offset=u.offset, duration=u.duration))
                good.append(i)
            except AudioError as e:
                failed[u.id] = str(e)
                chars[i] = torch.zeros(0, net.tokenizer.vocab_size)
                phones[i] = torch.zeros(0, len(net.phones) + 1)
        if waves:
            for i, (c, p) in zip(good, net.forward(waves)):
                chars[i], phones[i] = c, p
        print(f"forward: batch {k + 1}/{len(batches)}", file=sys.stderr, flush=True)
    return chars, phones  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# combination: both heads' n-best lists, rescored by both heads' CTC log-likelihoods + the LM


_PHONE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
_COMBINE_LM_WEIGHTS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)  # KenLM log10 sentence scores
_COMBINE_WORD_SCORES = (-1.0, 0.0, 1.0, 2.0, 3.0)


def cross_validated_wer(grid: Sequence[tuple[dict[str, float], list[str]]], refs: Sequence[str],
                        speakers: Sequence[str], keep) -> float | None:
    """Corpus WER when each half of the speakers (alternate ones, sorted) is decoded with the
    grid point (among those ``keep`` accepts) that is best on the other half: a tuned-on-dev
    number that does not score the utterances it was tuned on. None with a single speaker
    (no held-out half; None, not NaN, so that summary.json stays strict JSON)."""
    from asr.metrics import score_corpus

    order = sorted(set(speakers))
    if len(order) < 2:
        return None  # one speaker: no held-out half
    fold = [order.index(s) % 2 for s in speakers]
    hyps, ref_out = [], []
    for f in (0, 1):
        tune = [i for i, x in enumerate(fold) if x != f]
        test = [i for i, x in enumerate(fold) if x == f]
        points = [(g, t) for g, t in grid if keep(g)]
        _, texts = min(points, key=lambda gt: score_corpus([refs[i] for i in tune], [gt[1][i] for i in tune]).wer)
        hyps += [texts[i] for i in test]
        ref_out += [refs[i] for i in test]
    return score_corpus(ref_out, hyps).wer


# --------------------------------------------------------------------------------------------
# command line


def _floats(s: str) -> list[float]:
    try:
        vals = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not vals or not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers, got {s!r}")
    return vals


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, nargs="+",
                    help="Lightning checkpoint(s) with a phone head (several: averaged), or an exp dir")
    ap.add_argument("manifest", type=Path, help="manifest to decode (its text scores the grid)")
    ap.add_argument("--train", type=Path, required=True, help="training manifest: its words form the lexicon")
    ap.add_argument("--lexicon", type=Path, required=True, help="pronunciation lexicon (WORD PH PH ...)")
    ap.add_argument("--lm", type=Path, help="word KenLM (ARPA or binary); none: lexicon only")
    ap.add_argument("--lm-weights", type=_floats, default=[1.0], help="comma-separated (default 1)")
    ap.add_argument("--word-scores", type=_floats, default=[0.0], help="comma-separated (default 0)")
    ap.add_argument("--beam-size", type=int, default=DecodingOptions.beam_size)
    ap.add_argument("--emissions", type=Path, help="cache of the network's outputs (read if present, else written)")
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--combine", action="store_true",
                    help="also rescore both heads' n-best lists with both heads + the LM (DIR/combined/)")
    ap.add_argument("--char-lm-weight", type=float, default=2.0, help="character beam (--combine); default 2")
    ap.add_argument("--char-word-score", type=float, default=1.0, help="character beam (--combine); default 1")
    ap.add_argument("--nbest", type=int, default=10, help="hypotheses of each beam (--combine); default 10")
    return ap.parse_args(argv)


def _load_emissions(args: argparse.Namespace, utts: list[Utterance], failed: dict[str, str]):
    net = load_network(args.checkpoint)
    if args.emissions and args.emissions.is_file():
        try:
            cached = torch.load(args.emissions, weights_only=True)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
            raise UsageError(f"{args.emissions}: unreadable emissions cache ({type(e).__name__}); "
                             "delete it to recompute") from None
        keys = {"checkpoint", "ids", "failed", "chars", "phones"}
        if not isinstance(cached, dict) or not keys <= cached.keys():
            raise UsageError(f"{args.emissions}: not an emissions cache of this script; delete it to recompute")
        if cached["checkpoint"] != net.ident or cached["ids"] != [u.id for u in utts]:
            raise UsageError(f"{args.emissions}: cached emissions of another checkpoint or manifest")
        failed.update(cached["failed"])
        return net, cached["chars"], cached["phones"]
    torch.set_num_threads(1)
    chars, phones = manifest_emissions(net, utts, failed)
    if args.emissions:
        torch.save({"checkpoint": net.ident, "ids": [u.id for u in utts], "failed": failed,
                    "chars": chars, "phones": phones, "tokens": net.tokenizer.tokens,
                    "phone_tokens": [BLANK, *net.phones]}, args.emissions)
    return net, chars, phones


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except (UsageError, CheckpointError, ManifestError, LexiconError, DecoderError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from asr.metrics import score_corpus

    for p in (args.manifest, args.train, args.lexicon, *([args.lm] if args.lm else [])):
        if not p.is_file():
            raise UsageError(f"{p}: no such file")
    utts = read_manifest(args.manifest)
    train_texts = [u.text for u in read_manifest(args.train)]
    failed: dict[str, str] = {}
    net, char_em, phone_em = _load_emissions(args, utts, failed)
    lex = decoding_lexicon(read_lexicon(args.lexicon), train_texts, net.phones)

    words = {w for t in train_texts for w in t.casefold().split()}
    what = str(net.paths[0]) if len(net.paths) == 1 else f"average of {', '.join(map(str, net.paths))}"
    print(f"checkpoint: {what} ({len(net.phones)} phones, head on layer {net.model.phone_layer + 1})")
    print(f"decoding lexicon: {len(lex.prons)} of {len(words)} training words; {len(lex.missing)} without a "
          f"pronunciation{': ' + ', '.join(lex.missing[:20]) if lex.missing else ''}; "
          f"{len(lex.foreign_phones)} with phones the head lacks")
    args.out.mkdir(parents=True, exist_ok=True)
    write_search_lexicon(lex.prons, args.out / "lexicon.txt")
    refs = [normalize_text(u.text) for u in utts]
    grid: list[dict[str, float]] = []
    best_texts: list[str] = []
    for w in args.lm_weights:
        for s in args.word_scores:
            dec = PhoneDecoder(net.phones, lex.prons, lm=str(args.lm) if args.lm else None, lm_weight=w,
                               word_score=s, beam_size=args.beam_size)
            texts = decode_texts(dec, phone_em)
            wer = score_corpus(refs, texts).wer
            grid.append({"lm_weight": w, "word_score": s, "wer": wer})
            print(f"lm_weight {w:g}  word_score {s:g}  WER {100 * wer:.2f}%", flush=True)
            if len(grid) == 1 or wer < min(g["wer"] for g in grid[:-1]):
                best_texts = texts  # the first of equal WERs, as `asr lm tune` picks
    best = min(grid, key=lambda g: g["wer"])
    atomic_write_text(args.out / "hyps.jsonl", "".join(json.dumps({"id": u.id, "text": t}) + "\n"
                                                       for u, t in zip(utts, best_texts)))
    summary = {"checkpoint": net.ident, "manifest": str(args.manifest), "lm": str(args.lm),
               "beam_size": args.beam_size, "best": best, "grid": grid, "phones": list(net.phones),
               "lexicon_words": len(lex.prons), "training_words": len(words),
               "training_words_without_pronunciation": lex.missing,
               "training_words_with_unknown_phones": lex.foreign_phones,
               "training_utterances_covered": f"{lex.coverage.covered} of {lex.coverage.utterances}",
               "failed_utterances": failed}
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"best: lm_weight {best['lm_weight']:g} word_score {best['word_score']:g} WER {100 * best['wer']:.2f}% "
          f"-> {args.out / 'hyps.jsonl'}")
    if args.combine:
        run_combination(args, net, lex.prons, utts, refs, char_em, phone_em, best)
    for uid, why in failed.items():
        print(f"error: utterance {uid}: {why} (decoded as empty)", file=sys.stderr)
    return 1 if failed else 0


def run_combination(args: argparse.Namespace, net: PhoneNetwork, prons: dict[str, tuple[str, ...]],
                    utts: Sequence[Utterance], refs: Sequence[str], char_em: Sequence[Tensor],
                    phone_em: Sequence[Tensor], phone_best: dict[str, float]) -> None:
    """Union of the character beam's and the phone beam's n-best; grid over the combination."""
    import kenlm

    from asr.decode.beam import BeamSearchDecoder
    from asr.metrics import score_corpus

    char_dec = BeamSearchDecoder(net.tokenizer, lm=str(args.lm), lm_weight=args.char_lm_weight,
                                 word_score=args.char_word_score, nbest=args.nbest, beam_size=args.beam_size)
    phone_dec = PhoneDecoder(net.phones, prons, lm=str(args.lm), lm_weight=phone_best["lm_weight"],
                             word_score=phone_best["word_score"], beam_size=args.beam_size, nbest=args.nbest)
    lm = kenlm.Model(str(args.lm))
    cands, char_top = [], []
    for c, p in zip(char_em, phone_em):
        n = torch.tensor([c.shape[0]])
        ch = [h.text for h in char_dec(c[None], n)[0]]
        ph = [t for t, _ in phone_dec(p[None], n)[0]]
        char_top.append(ch[0])
        cands.append(candidates(ch + ph, c, p, net.tokenizer, prons, net.phones, lm))
    unscored = sum(math.isinf(c.phone_ll) for cs in cands for c in cs)
    print(f"{sum(map(len, cands))} candidates, {unscored} without a phone score (a word without a pronunciation)")
    print(f"character beam (lm_weight {args.char_lm_weight:g}, word_score {args.char_word_score:g}): "
          f"WER {100 * score_corpus(refs, char_top).wer:.2f}%")
    grid = []
    for w in _PHONE_WEIGHTS:
        for lw in _COMBINE_LM_WEIGHTS:
            for ws in _COMBINE_WORD_SCORES:
                texts = [combine(cs, w, lw, ws) for cs in cands]
                grid.append(({"phone_weight": w, "lm_weight": lw, "word_score": ws,
                              "wer": score_corpus(refs, texts).wer}, texts))
    best, texts = min(grid, key=lambda g: g[0]["wer"])
    held_out = {name: cross_validated_wer(grid, refs, [u.speaker for u in utts], keep)
                for name, keep in (("with phone head", lambda g: True),
                                   ("character head only (phone_weight 0)", lambda g: g["phone_weight"] == 0.0))}
    print("2-fold cross-validation by speaker (weights tuned on one half of the speakers, scored on the other): "
          + "; ".join(f"{k}: {'n/a (one speaker)' if v is None else f'{100 * v:.2f}%'}" for k, v in held_out.items()))
    out = args.out / "combined"
    out.mkdir(exist_ok=True)
    atomic_write_text(out / "hyps.jsonl", "".join(json.dumps({"id": u.id, "text": t}) + "\n"
                                                  for u, t in zip(utts, texts)))
    per_weight = {w: min(g["wer"] for g, _ in grid if g["phone_weight"] == w) for w in _PHONE_WEIGHTS}
    atomic_write_text(out / "summary.json", json.dumps({
        "char_beam": {"lm_weight": args.char_lm_weight, "word_score": args.char_word_score,
                      "wer": score_corpus(refs, char_top).wer},
        "phone_beam": phone_best, "nbest": args.nbest, "candidates": sum(map(len, cands)),
        "candidates_without_phone_score": unscored, "best": best, "cross_validated_wer": held_out,
        "best_by_phone_weight": per_weight, "grid": [g for g, _ in grid]}, indent=2) + "\n")
    print("combined, best WER by phone weight: "
          + ", ".join(f"{w:g}: {100 * v:.2f}%" for w, v in per_weight.items()))
    print(f"combined best: {best} -> {out / 'hyps.jsonl'}")


if __name__ == "__main__":
    sys.exit(main())
