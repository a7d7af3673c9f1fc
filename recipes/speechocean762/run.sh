#!/usr/bin/env bash
# speechocean762 recipe: prepare -> train -> export (average) -> LM -> evaluate greedy / beam /
# beam+LM -> transcribe examples -> results table. Stages are numbered and re-runnable: each
# skips work whose output exists (use --force to redo).
#
#   bash recipes/speechocean762/run.sh [--stage N] [--stop-stage M] [--data DIR] [--exp DIR]
#                                     [--force] [key=value training overrides ...]
#
# --data defaults to ../shared/data/speechocean762 (the publisher's Kaldi layout: train/text,
# wav.scp, utt2spk, WAVE/). dev = 13 of the 125 training speakers (no speaker in both).
# When --data also holds the publisher's test/ directory (125 other speakers), test.jsonl is
# prepared and every model is also scored on it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
stage=0; stop_stage=100; force=0
data="$ROOT/../shared/data/speechocean762"; exp="exp/speechocean762"
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
man="data/speechocean762"
run_stage() { [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]; }
needed() { [ "$force" = 1 ] || [ ! -e "$1" ]; }  # true when output $1 must be (re)made
say() { echo "== stage $*"; }

if run_stage 0 && needed "$man/train.jsonl"; then
  say "0: prepare $data -> $man"
  asr prepare speechocean762 --src "$data" --out "$man"
fi

if run_stage 1 && needed "$exp/train_summary.json"; then
  say "1: train conf/speechocean762.yaml -> $exp"
  resume=(); [ -e "$exp/checkpoints/last.ckpt" ] && [ "$force" = 0 ] && resume=(--resume)
  asr train conf/speechocean762.yaml "exp_dir=$exp" "data.train_manifest=$man/train.jsonl" \
    "data.dev_manifest=$man/dev.jsonl" trainer.progress_bar=false "${overrides[@]}" "${resume[@]}"
fi

if run_stage 2 && needed "$exp/model.asr"; then
  say "2: export the average of the 3 best checkpoints -> $exp/model.asr"
  asr export "$exp" --average 3 --out "$exp/model.asr"
fi

lm="$exp/lm/3gram.bin"
if run_stage 3 && needed "$lm.tune.json"; then
  say "3: word 3-gram LM on the training transcripts, weights tuned on dev"
  mkdir -p "$exp/lm"
  asr lm build "$man/train.jsonl" --order 3 --out "$lm"
  asr lm tune "$exp/model.asr" "$man/dev.jsonl" --lm "$lm" --lm-weights 0.5,1.0,1.5,2.0 --word-scores=-1,0,1,2
fi

sets=(dev); [ -e "$man/test.jsonl" ] && sets+=(test)
if run_stage 4; then
  for set in "${sets[@]}"; do
    for dec in greedy beam beam_lm; do
      out="$exp/eval/$set-$dec"
      needed "$out/summary.json" || continue
      say "4: evaluate $set with $dec -> $out"
      case $dec in
        greedy) asr evaluate "$exp/model.asr" "$man/$set.jsonl" --out "$out" ;;
        beam) asr evaluate "$exp/model.asr" "$man/$set.jsonl" --out "$out" --decoder beam ;;
        beam_lm) asr evaluate "$exp/model.asr" "$man/$set.jsonl" --out "$out" --decoder beam --lm "$lm" ;;
      esac
    done
  done
fi

if run_stage 5 && needed "$exp/transcripts"; then
  say "5: transcribe three dev utterances with timestamps -> $exp/transcripts"
  mapfile -t files < <(head -3 "$man/dev.jsonl" | python -c "import json,sys; [print(json.loads(l)['audio']) for l in sys.stdin]")
  asr transcribe "$exp/model.asr" "${files[@]}" --decoder beam --lm "$lm" --format all --out "$exp/transcripts"
fi

if run_stage 6; then
  say "6: results table -> $exp/results.md"
  python "$ROOT/scripts/results_table.py" "$exp" > "$exp/results.md"
  cat "$exp/results.md"
fi
