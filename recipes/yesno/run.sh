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
model_stages "yesno"
