#!/usr/bin/env bash
# Free Spoken Digit Dataset: 3000 isolated digits "zero".."nine", 6 speakers, 8 kHz.
# The publisher's test split (recordings 0-4 of every speaker and digit) is scored as is;
# dev is recordings 5-9 (seen speakers, like test) and train 10-49: see make_list.py for
# why not a held-out speaker. Results and commands: recipes/fsdd/README.md.
#
#   recipes/fsdd/run.sh [--stage N] [--stop-stage M] [--force] [--data DIR] [key=value ...]
#   recipes/fsdd/run.sh --help
# shellcheck source=recipes/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_recipe_args fsdd "$@"

if stage 0 "prepare FSDD from $DATA -> $MANIFESTS (dev = recordings 5-9)"; then
  mkdir -p "$MANIFESTS"
  step "$MANIFESTS/list.csv" "$PYTHON" recipes/fsdd/make_list.py "$DATA" "$MANIFESTS/list.csv"
  # --after: manifests left there by another preparation (e.g. `asr prepare fsdd`, whose
  # dev is a held-out speaker) are older than the new list and get replaced.
  step --after "$MANIFESTS/list.csv" "$MANIFESTS/summary.json" \
    "$ASR" prepare folder --list "$MANIFESTS/list.csv" --out "$MANIFESTS"
fi
if stage 1 "train conf/fsdd.yaml -> $EXP"; then
  train_stage conf/fsdd.yaml
fi
model_stages "FSDD"
