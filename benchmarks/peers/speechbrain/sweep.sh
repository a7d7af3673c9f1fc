#!/usr/bin/env bash
# The quick tuning proxy behind README.md's "Tuning the peer" table: the first 800 training
# utterances, 6 wall minutes per variant, one thread, the full dev set; variants run one after
# another (never two at once: they share the budget clock). Outputs in exp/peer-tune/<variant>/.
#   bash benchmarks/peers/speechbrain/sweep.sh
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run() { name=$1; shift
  rm -rf "exp/peer-tune/$name"; mkdir -p exp/peer-tune
  bash "$here/run.sh" --budget-min 6 --threads 1 --limit-train 800 --out "exp/peer-tune/$name" \
    "$@" > "exp/peer-tune/$name.log" 2>&1
  echo "$name: rc=$? $(tail -n 1 "exp/peer-tune/$name/train_log.jsonl" 2>/dev/null)"
}
cd "$here/../../.."
run base
run noaug --set augment=false
run random-ln --set sorting=random --set dnn_norm=layer
run lr3 --set lr=3e-3
run noaug-lr3 --set augment=false --set lr=3e-3
run augp05-lr3 --set augment_prob=0.5 --set lr=3e-3
