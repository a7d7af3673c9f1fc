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
# headline; the open-vocabulary rows (stage 3: a word 3-gram of the training transcripts;
# stage 8: a character 6-gram of the same transcripts, searched without a lexicon; stage 9:
# the word 3-gram with an English number and date word list added to its text) are.
# shellcheck source=recipes/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
RECIPE_HELP="  stage 7 (run by default, after 6): beam + the task's closed-vocabulary LM, a uniform
           unigram over etc/an4.dic's words (it lists test-only words: never the headline)
  stage 8: beam + a character 6-gram of the training transcripts, lexicon-free (open
           vocabulary that can also spell words the transcripts never had)
  stage 9: beam + a word 3-gram of the training transcripts and external text: the English
           number and date words of recipes/an4/numbers_dates.txt"
RECIPE_LAST_STAGE=9
parse_recipe_args an4 "$@"
# On AN4's dev set the best LM weight sat at the default grid's edge (2.0): a wider grid.
LM_TUNE_ARGS=(--lm-weights "0.5,1,1.5,2,2.5,3,4" "--word-scores=-1,0,1,2,3")

# lm_row NAME LM [asr lm tune options]: LM's weights tuned on dev for this model, then beam + LM
# on dev and test into $EXP/eval/NAME, and the results table (stages 7-9).
lm_row() {
  local name=$1 lm=$2 split out
  shift 2
  step --after "$EXP/model.asr" --after "$lm" "$lm.tune.json" "$ASR" lm tune "$EXP/model.asr" \
    "$MANIFESTS/dev.jsonl" --lm "$lm" ${BEAM_SIZE:+--beam-size "$BEAM_SIZE"} "$@"
  for split in dev test; do
    out=$EXP/eval/$name/$split
    step --after "$EXP/model.asr" --after "$lm" --after "$lm.tune.json" "$out/summary.json" \
      "$ASR" evaluate "$EXP/model.asr" "$MANIFESTS/$split.jsonl" --out "$out" --decoder beam \
      ${BEAM_SIZE:+--beam-size "$BEAM_SIZE"} --lm "$lm"
  done
  results_stage "AN4"
}

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
  lm_row beam-closed-vocab-lm "$closed"
fi
if stage 8 "beam + a character 6-gram of the training transcripts (lexicon-free) on dev and test"; then
  # The word 3-gram's lexicon can only output training words; the character LM scores every
  # character (and the "|" between words), so it can also spell an unseen word. On dev it beat
  # the word 3-gram for each of the three seeds, on test it did not (4.36 ± 0.15 against
  # 4.27 ± 0.13, recipes/an4/README.md). 6 is the highest order KenLM loads when decoding. The phone head is not read here (two-head decoding rescored
  # lexicon n-best lists, and tied or lost on dev).
  if have_kenlm; then
    chars=$EXP/lm/char6.bin
    mkdir -p "$EXP/lm"
    step --after "$MANIFESTS/train.jsonl" --after "$EXP/model.asr" "$chars" "$ASR" lm build \
      "$MANIFESTS/train.jsonl" --tokens "$EXP/model.asr" --order 6 --out "$chars"
    lm_row beam-char-lm "$chars" --lm-weights 1,1.5,2,2.5,3 "--word-scores=-4,-3,-2,-1,0,1" --phone-weights 0
  else
    echo "   skip: KenLM tools (lmplz, build_binary) not found; run scripts/build_kenlm.sh or set KENLM_BIN"
  fi
fi
if stage 9 "beam + a word 3-gram of the training transcripts and the English number and date words on dev and test"; then
  # AN4 is spoken names, addresses, dates, numbers and spelled letters, and its 856 training
  # transcripts do not hold every number or date word: dev has two they lack (eighteen, sixth),
  # which the word 3-gram's lexicon cannot output. recipes/an4/numbers_dates.txt is external
  # text, one word a line: the English cardinals (zero to nineteen, the tens, hundred,
  # thousand, million, oh), the ordinals (first to twentieth, thirtieth), and the names of
  # the months and the weekdays; no corpus text. On dev it helped two seeds of three and
  # tied the third (recipes/an4/README.md).
  if have_kenlm; then
    words=$ASR_ROOT/recipes/an4/numbers_dates.txt
    ext=$EXP/lm/3gram-numbers.bin
    mkdir -p "$EXP/lm"
    step --after "$MANIFESTS/train.jsonl" --after "$words" "$ext" "$ASR" lm build \
      "$MANIFESTS/train.jsonl" "$words" --order 3 --out "$ext"
    lm_row beam-lm-numbers "$ext" "${LM_TUNE_ARGS[@]}"
  else
    echo "   skip: KenLM tools (lmplz, build_binary) not found; run scripts/build_kenlm.sh or set KENLM_BIN"
  fi
fi
