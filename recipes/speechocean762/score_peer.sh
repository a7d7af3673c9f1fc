#!/usr/bin/env bash
# The SpeechBrain peer scored the way our model is: greedy through `asr evaluate --hyps`, then
# our beam search + the recipe's 3-gram over its log-probs with the LM weight and word score
# tuned on dev on the same grid as ours, then `asr compare` (A = peer, B = ours). Needs
# run.sh's stages (EXP/eval/{greedy,beam-lm}/dev, EXP/lm/3gram.bin) and the peer's outputs
# (benchmarks/peers/speechbrain/run.sh). Called by levers.sh; on its own:
#
#   recipes/speechocean762/score_peer.sh EXP PEER_OUT
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-${PY:-}}  # PY=... still names the Python, as before
# shellcheck source=recipes/common.sh
source recipes/common.sh
EXP=${1:?usage: score_peer.sh EXP PEER_OUT}
PEER=${2:?usage: score_peer.sh EXP PEER_OUT}
DEV=data/speechocean762/dev.jsonl
WEIGHTS=${WEIGHTS:-0,0.5,1,1.5,2}
SCORES=${SCORES:--1,0,1,2}
say() { printf '\n== %s\n' "$*"; }
for f in "$PEER/hyps.jsonl" "$PEER/logprobs.pt" "$EXP/lm/3gram.bin" "$EXP/eval/greedy/dev/summary.json"; do
  [[ -f "$f" ]] || { echo "error: $f: missing (run the recipe and the peer first)" >&2; exit 2; }
done

say "SpeechBrain peer: greedy, and our beam search + the recipe's 3-gram over its log-probs"
"$ASR" evaluate --hyps "$PEER/hyps.jsonl" "$DEV" --out "$PEER/eval/greedy" -q >/dev/null
scores=$(summary_field "$PEER/eval/greedy" wer cer)
echo "$PEER/eval/greedy $scores"
best=""
mkdir -p "$PEER/eval/grid"
IFS=, read -ra ws <<< "$WEIGHTS"; IFS=, read -ra ss <<< "$SCORES"
for w in "${ws[@]}"; do for s in "${ss[@]}"; do
  out="$PEER/eval/grid/w${w}_s${s}"
  if ! PYTHONPATH=. "$PYTHON" benchmarks/peers/speechbrain/decode_lm.py --peer "$PEER" --lm "$EXP/lm/3gram.bin" \
      --lm-weight "$w" --word-score "$s" --out "$out.hyps.jsonl" >"$out.log" 2>&1; then
    echo "error: decode_lm.py failed at lm weight $w, word score $s (log: $out.log):" >&2
    tail -n 3 "$out.log" >&2
    exit 1
  fi
  "$ASR" evaluate --hyps "$out.hyps.jsonl" "$DEV" --out "$out" -q >/dev/null
  wer=$(summary_field "$out" wer)
  echo "peer beam+LM w=$w s=$s: $wer"
  if [[ -z "$best" ]] || awk -v a="$wer" -v b="${best%% *}" 'BEGIN { exit !(a < b) }'; then
    best="$wer $out"
  fi
done; done
rm -rf "$PEER/eval/beam-lm"; cp -r "${best#* }" "$PEER/eval/beam-lm"
echo "peer beam+LM best: $best"

say "ours vs the peer (paired bootstrap; A = peer, B = ours)"
"$ASR" compare "$PEER/eval/greedy" "$EXP/eval/greedy/dev" --out "$EXP/compare/$(basename "$PEER")-greedy"
"$ASR" compare "$PEER/eval/beam-lm" "$EXP/eval/beam-lm/dev" --out "$EXP/compare/$(basename "$PEER")-beam-lm"
