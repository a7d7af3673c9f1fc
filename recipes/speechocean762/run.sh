#!/usr/bin/env bash
# speechocean762 (OpenSLR 101): read English by 125 Mandarin-L1 speakers (children and adults),
# 16 kHz. The shared copy has the train split only (2500 utterances, 2.9 h): dev = 13 of its
# speakers (no speaker in both), so every dev number is on speakers the model never heard.
# When --data also holds the publisher's test/ directory, test.jsonl is prepared and scored.
# Results and the commands behind them: recipes/speechocean762/README.md.
#
#   recipes/speechocean762/run.sh [--stage N] [--stop-stage M] [--force] [--data DIR] [key=value ...]
#   recipes/speechocean762/run.sh --help
# shellcheck source=recipes/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
parse_recipe_args speechocean762 "$@"

if stage 0 "prepare speechocean762 from $DATA -> $MANIFESTS"; then
  step "$MANIFESTS/summary.json" "$ASR" prepare speechocean762 --src "$DATA" --out "$MANIFESTS"
fi
if stage 1 "train conf/speechocean762.yaml -> $EXP"; then
  # The auxiliary phone CTC head (README.md, "What we tried": -3.0 WER greedy, -2.7 with
  # the LM at 32 epochs, p = 0.001), from the publisher's pronunciation lexicon.
  phone_head_overrides "$DATA/resource/lexicon.txt"
  train_stage conf/speechocean762.yaml
fi
model_stages "speechocean762"
