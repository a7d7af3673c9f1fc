#!/usr/bin/env bash
# CMU AN4 (census database, close-talking mic): 948 train utterances / 74 speakers (0.71 h),
# 130 test utterances / 10 speakers, 16 kHz. dev = 7 of the train speakers (no speaker in both);
# test = the publisher's test set, the one every published AN4 result is scored on.
# Results, the published rows beside them and the commands behind them: recipes/an4/README.md.
#
#   recipes/an4/run.sh [--stage N] [--stop-stage M] [--force] [--data DIR] [key=value ...]
#   recipes/an4/run.sh --help
#
# Stage 7 adds the closed-vocabulary row: beam search with the task's own 130-word unigram LM
# (etc/an4.lm) that Kaldi's published result used. That dictionary lists the two words that
# occur only in the test split (NOVEMBER, THIRTEEN), so the row is labelled and never the
# headline; the open-vocabulary row (stage 3: a word 3-gram of the training transcripts) is.
# shellcheck source=recipes/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RECIPE_HELP="  stage 7 (run by default, after 6): beam + the task's closed-vocabulary LM, a uniform
           unigram over etc/an4.dic's words (it lists test-only words: never the headline)"
RECIPE_LAST_STAGE=7
parse_recipe_args an4 "$@"
# On AN4's dev set the best LM weight sat at the default grid's edge (2.0): a wider grid.
LM_TUNE_ARGS=(--lm-weights "0.5,1,1.5,2,2.5,3,4" "--word-scores=-1,0,1,2,3")

if stage 0 "prepare an4 from $DATA -> $MANIFESTS"; then
  step "$MANIFESTS/summary.json" "$ASR" prepare an4 --src "$DATA" --out "$MANIFESTS"
fi
if stage 1 "train conf/an4.yaml -> $EXP"; then
  # The auxiliary phone CTC head (dev WER -0.58 greedy, -0.78 with the LM: README.md), from
  # the task dictionary; only the training words are looked up, so the two test-only words
  # it lists never reach training.
  phone_head_overrides "$DATA/etc/an4.dic"
  train_stage conf/an4.yaml
fi
model_stages "AN4"
if stage 7 "beam + the task's closed-vocabulary LM (the words of $DATA/etc/an4.dic) on dev and test"; then
  # etc/an4.lm is a uniform unigram (every word log10 p = -2.0253) whose word list lacks
  # NOVEMBER and THIRTEEN although etc/an4.dic has them; the closed-vocabulary LM is that same
  # uniform unigram over the dictionary's 101 words, so the two test-only words are in it.
  closed=$EXP/lm/an4-closed.arpa
  mkdir -p "$EXP/lm"
  step --after "$DATA/etc/an4.dic" --after "$ASR_ROOT/recipes/an4/closed_lm.py" "$closed" \
    "$PYTHON" "$ASR_ROOT/recipes/an4/closed_lm.py" \
    "$DATA/etc/an4.dic" --out "$closed"
  step --after "$EXP/model.asr" --after "$closed" "$closed.tune.json" "$ASR" lm tune "$EXP/model.asr" \
    "$MANIFESTS/dev.jsonl" --lm "$closed" ${BEAM_SIZE:+--beam-size "$BEAM_SIZE"}
  for split in dev test; do
    out=$EXP/eval/beam-closed-vocab-lm/$split
    step --after "$EXP/model.asr" --after "$closed" --after "$closed.tune.json" "$out/summary.json" \
      "$ASR" evaluate "$EXP/model.asr" "$MANIFESTS/$split.jsonl" --out "$out" --decoder beam \
      ${BEAM_SIZE:+--beam-size "$BEAM_SIZE"} --lm "$closed"
  done
  results_stage "AN4"
fi
