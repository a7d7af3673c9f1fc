#!/usr/bin/env bash
# yesno (OpenSLR 1): 60 recordings of 8 "yes"/"no" words each, one speaker, 8 kHz.
# Train on the first 30 files (5 carved out as dev), test on the last 30. Under a minute
# on one CPU thread. Results and the commands behind them: recipes/yesno/README.md.
#
#   recipes/yesno/run.sh [--stage N] [--stop-stage M] [--force] [--data DIR] [key=value ...]
#   recipes/yesno/run.sh --help
# shellcheck source=recipes/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_recipe_args yesno "$@"

if stage 0 "prepare yesno from $DATA -> $MANIFESTS"; then
  step "$MANIFESTS/summary.json" "$ASR" prepare yesno --src "$DATA" --out "$MANIFESTS"
fi
if stage 1 "train conf/yesno.yaml -> $EXP"; then
  train_stage conf/yesno.yaml
fi
if stage 2 "export the average of the $AVERAGE best checkpoints -> $EXP/model.asr"; then
  export_stage
fi
if stage 3 "word 3-gram LM on the training transcripts, weights tuned on dev"; then
  lm_stage
fi
if stage 4 "evaluate greedy, beam, beam+LM on dev and test"; then
  evaluate_stage dev test
fi
if stage 5 "transcribe three test files (txt, json, srt, vtt)"; then
  transcribe_stage 3
fi
if stage 6 "results table -> $EXP/results.md"; then
  results_stage "yesno"
fi
