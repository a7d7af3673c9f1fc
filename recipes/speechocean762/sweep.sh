#!/usr/bin/env bash
# The quick tuning proxy behind the "Tuning the peer" table of benchmarks/peers/speechbrain/README.md:
# the SpeechBrain peer on the first 800 training utterances, 6 wall minutes per variant, one
# thread, the full dev set; variants run one after another (never two at once: they share the
# budget clock). Outputs in exp/peer-tune/<variant>/; a failed variant is reported and the
# sweep goes on.
#   bash recipes/speechocean762/sweep.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
# shellcheck source=recipes/common.sh
source recipes/common.sh
PEER_RUN=benchmarks/peers/speechbrain/run.sh
run() { local name=$1 rc=0; shift
  rm -rf "exp/peer-tune/$name"; mkdir -p exp/peer-tune
  bash "$PEER_RUN" --budget-min 6 --threads 1 --limit-train 800 --out "exp/peer-tune/$name" \
    "$@" > "exp/peer-tune/$name.log" 2>&1 || rc=$?
  echo "$name: rc=$rc $(tail -n 1 "exp/peer-tune/$name/train_log.jsonl" 2>/dev/null)"
}
run base
run noaug --set augment=false
run random-ln --set sorting=random --set dnn_norm=layer
run lr3 --set lr=3e-3
run noaug-lr3 --set augment=false --set lr=3e-3
run augp05-lr3 --set augment_prob=0.5 --set lr=3e-3
