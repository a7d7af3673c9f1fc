#!/usr/bin/env bash
# The low-resource levers that need no retraining, and the SpeechBrain peer scored the way our
# model is, for the tables of recipes/speechocean762/README.md. Run after run.sh (stages 0-4)
# and benchmarks/peers/speechbrain/run.sh:
#
#   recipes/speechocean762/levers.sh [EXP] [PEER_OUT]     # defaults exp/speechocean762 exp/peer-speechbrain
#
# Every row is on dev (13 speakers no model heard); LM weights are tuned on dev, for the peer
# as for us, with the same grid. External text: the `fortunes` Debian package (apt-get install
# fortunes fortunes-min), 52k lines of general English; any text files work the same way.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-${PY:-}}  # PY=... still names the Python, as before
# shellcheck source=recipes/common.sh
source recipes/common.sh
EXP=${1:-exp/speechocean762}
PEER=${2:-exp/peer-speechbrain}
DEV=data/speechocean762/dev.jsonl
TRAIN=data/speechocean762/train.jsonl
WEIGHTS=${WEIGHTS:-0,0.5,1,1.5,2}
SCORES=${SCORES:--1,0,1,2}

say() { printf '\n== %s\n' "$*"; }
evaluate() {  # evaluate OUT_DIR MODEL [decoding options...]
  local out=$1 model=$2 scores; shift 2
  "$ASR" evaluate "$model" "$DEV" --out "$out" -q "$@" >/dev/null
  scores=$(summary_field "$out" wer cer)
  echo "$out $scores"
}

say "checkpoint averaging (greedy)"
"$ASR" export "$EXP" --out "$EXP/model-best1.asr" -q
evaluate "$EXP/eval/avg-best1/dev" "$EXP/model-best1.asr" --decoder greedy
for n in 5 10; do
  "$ASR" export "$EXP" --average "$n" --out "$EXP/model-avg$n.asr" -q
  evaluate "$EXP/eval/avg$n/dev" "$EXP/model-avg$n.asr" --decoder greedy
done
# SWA's weight averaging over the tail of the schedule: the last N epochs whatever their dev
# WER. Needs a run trained with trainer.keep_last >= N (or trainer.save_top_k=-1).
for n in 5 10 15; do
  if "$ASR" export "$EXP" --average-last "$n" --out "$EXP/model-last$n.asr" -q; then
    evaluate "$EXP/eval/last$n/dev" "$EXP/model-last$n.asr" --decoder greedy
  else
    echo "(no row for --average-last $n: see the line above)"
  fi
done

say "language models (beam 50 + LM, weights tuned on dev)"
mkdir -p "$EXP/lm"
mapfile -t FORTUNES < <(ls /usr/share/games/fortunes/* 2>/dev/null | grep -v '\.' || true)
build() {  # build NAME [lm build args...]
  local name=$1; shift
  "$ASR" lm build "$@" --out "$EXP/lm/$name.bin" -q
}
build train4 "$TRAIN" --order 4
if ((${#FORTUNES[@]})); then
  build fort3 "$TRAIN" "${FORTUNES[@]}" --order 3
  build fort3-v20k "$TRAIN" "${FORTUNES[@]}" --order 3 --vocab-size 20000
  # The training transcripts five times over: in-domain counts outweigh the general text,
  # and every training word survives the vocabulary cap.
  build fort3-in5-v20k "$TRAIN" "$TRAIN" "$TRAIN" "$TRAIN" "$TRAIN" "${FORTUNES[@]}" --order 3 --vocab-size 20000
else
  echo "no /usr/share/games/fortunes: skipping the external-text LMs (apt-get install fortunes fortunes-min)"
fi
for lm in "$EXP"/lm/train4.bin "$EXP"/lm/fort3*.bin; do
  [[ -f "$lm" ]] || continue
  name=$(basename "$lm" .bin)
  "$ASR" lm tune "$EXP/model.asr" "$DEV" --lm "$lm" --lm-weights "$WEIGHTS" --word-scores="$SCORES" -q >/dev/null
  evaluate "$EXP/eval/lm-$name/dev" "$EXP/model.asr" --decoder beam --lm "$lm"
done

if [[ -f "$PEER/hyps.jsonl" ]]; then
  WEIGHTS=$WEIGHTS SCORES=$SCORES bash recipes/speechocean762/score_peer.sh "$EXP" "$PEER"
fi
