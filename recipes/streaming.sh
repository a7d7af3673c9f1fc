#!/usr/bin/env bash
# Streaming models (latency-controlled BiLSTMs, model.chunk_frames) fine-tuned from a recipe's
# full-context model, and the live-transcription benchmark beside it.
#
#   recipes/streaming.sh CORPUS [NC:NR ...]       e.g. recipes/streaming.sh an4 2:2 4:4 2:8 8:8
#
# Needs the corpus recipe run through stage 3 (manifests in data/CORPUS, exp/CORPUS/model.asr
# and its LM exp/CORPUS/lm/3gram.bin). For each chunk NC and right context NR (output frames,
# 40 ms each with 4x subsampling) into $STREAM_EXP/lcNC-NR:
#   1. asr train conf/CORPUS.yaml model.chunk_frames=NC model.right_context_frames=NR
#      model.cmvn=causal (lower LR, EPOCHS epochs) --init-from the full-context package;
#   2. asr export --average 3;
#   3. LM=3gram (default): the corpus LM copied beside it; LM=char6: a character 6-gram of the
#      training transcripts (lexicon-free search, any word can be spelled), built beside it and
#      beside the full-context package; its weights tuned on dev for each model;
# then benchmarks/bench_streaming.py on $SPLIT (WER, emission latency, RTF, and a 1-hour
# stream through the first model), table in $STREAM_EXP/bench-$SPLIT.md.
# Finished steps are skipped on a rerun; an interrupted training resumes.
#
# Environment: BASE (full-context package; default exp/CORPUS/model.asr), STREAM_EXP
# (default exp/CORPUS-stream), EPOCHS (10), LR (5e-4), SPLIT (test if data/CORPUS has it,
# else dev), HOUR (seconds of the long stream, 3600; 0 = none), THREADS (1), BENCH (1; 0 = train,
# export and tune only, e.g. to train several latencies side by side), LM (3gram or char6),
# COMMIT (seconds, e.g. "0.1 0.4": beam + LM rows with words fixed that long after their end).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
  exit $([[ $# -lt 1 ]] && echo 2 || echo 0)
fi
corpus=$1
shift
latencies=("$@")
[[ ${#latencies[@]} -gt 0 ]] || latencies=(2:2 4:4 8:8)
ASR="${ASR:-$(command -v asr || echo "$ROOT/.venv/bin/asr")}"
PYTHON="${PYTHON:-$(dirname "$ASR")/python}"
data=data/$corpus
base=${BASE:-exp/$corpus/model.asr}
lm_kind=${LM:-3gram}
case $lm_kind in
  3gram) lm=$(dirname "$base")/lm/3gram.bin ;;
  char6) lm=$(dirname "$base")/lm/char6.bin ;;
  *) echo "error: LM=$lm_kind: 3gram or char6" >&2; exit 2 ;;
esac
out=${STREAM_EXP:-exp/$corpus-stream}
split=${SPLIT:-$([[ -e $data/test.jsonl ]] && echo test || echo dev)}
for need in "conf/$corpus.yaml" "$data/train.jsonl" "$data/dev.jsonl" "$base"; do
  [[ -e "$need" ]] || { echo "error: $need: missing (run recipes/$corpus/run.sh through stage 3 first)" >&2; exit 2; }
done
# A character 6-gram of the training transcripts for PACKAGE, at OUT, its weights tuned on dev
# (the grid of the AN4 recipe's stage 8).
char_lm() {
  [[ -e $2 ]] || "$ASR" lm build "$data/train.jsonl" --tokens "$1" --order 6 --out "$2"
  [[ -e $2.tune.json ]] || "$ASR" lm tune "$1" "$data/dev.jsonl" --lm "$2" --lm-weights 0.5,1,1.5,2,2.5,3 \
    "--word-scores=-4,-3,-2,-1,0,1" --phone-weights 0
}
[[ $lm_kind == char6 ]] && { mkdir -p "$(dirname "$lm")"; char_lm "$base" "$lm"; }
specs=()
for lat in "${latencies[@]}"; do
  if [[ ! "$lat" =~ ^([0-9]+):([0-9]+)$ ]]; then
    echo "error: $lat: a latency is NC:NR (chunk and right-context frames), e.g. 4:4" >&2
    exit 2
  fi
  nc=${BASH_REMATCH[1]} nr=${BASH_REMATCH[2]}
  exp=$out/lc$nc-$nr
  echo "== $corpus: chunk $nc + right context $nr frames -> $exp"
  if [[ ! -e $exp/train_summary.json ]]; then
    resume=()
    [[ -d $exp/checkpoints ]] && resume=(--resume)
    "$ASR" train "conf/$corpus.yaml" "exp_dir=$exp" "data.train_manifest=$data/train.jsonl" \
      "data.dev_manifest=$data/dev.jsonl" "model.chunk_frames=$nc" "model.right_context_frames=$nr" \
      model.cmvn=causal "optim.lr=${LR:-5e-4}" optim.warmup_steps=100 "trainer.max_epochs=${EPOCHS:-10}" \
      "trainer.threads=${THREADS:-1}" --init-from "$base" ${resume[@]+"${resume[@]}"}
  fi
  [[ -e $exp/model.asr ]] || "$ASR" export "$exp" --average 3 --out "$exp/model.asr"
  spec="$nc-$nr=$exp/model.asr"
  if [[ $lm_kind == char6 ]]; then
    mkdir -p "$exp/lm"
    char_lm "$exp/model.asr" "$exp/lm/char6.bin"
    spec="$spec:$exp/lm/char6.bin"
  elif [[ -e $lm ]]; then
    mkdir -p "$exp/lm"
    # The LM with its side files (the .vocab word list the lexicon is written from); its tuned
    # weights are this model's own.
    [[ -e $exp/lm/3gram.bin ]] || cp "$lm" "$lm.vocab" "$exp/lm/"
    [[ -e $exp/lm/3gram.bin.tune.json ]] || "$ASR" lm tune "$exp/model.asr" "$data/dev.jsonl" --lm "$exp/lm/3gram.bin" \
      --lm-weights 0.5,1,1.5,2,3 --word-scores=-1,0,1,2
    spec="$spec:$exp/lm/3gram.bin"
  fi
  specs+=("$spec")
done
[[ "${BENCH:-1}" == 0 ]] && exit 0
full="$base"
[[ -e $lm ]] && full="$base:$lm"
echo "== benchmark on $data/$split.jsonl"
# shellcheck disable=SC2086  # COMMIT is a list of seconds: split on purpose
OMP_NUM_THREADS=1 "$PYTHON" benchmarks/bench_streaming.py --manifest "$data/$split.jsonl" --full "$full" \
  --stream "${specs[@]}" --hour "${HOUR:-3600}" ${COMMIT:+--commit $COMMIT} --json "$out/bench-$split${LM:+-$LM}.json" | tee "$out/bench-$split${LM:+-$LM}.md"
