#!/usr/bin/env bash
# LibriSpeech (OpenSLR 12): train on train-clean-100 (100 h), select on dev-clean, score
# dev-clean and test-clean. Meant for one or more GPUs (conf/librispeech100.yaml: bf16, 5x512
# BiLSTM, BPE 256); on a CPU-only machine stage 1 fails fast unless you pass
# trainer.accelerator=cpu trainer.precision=32-true (which would take weeks).
#
#   recipes/librispeech/run.sh [--subsets A,B,...] [--nj N] [common options] [key=value ...]
#   recipes/librispeech/run.sh --data /path/to/LibriSpeech trainer.devices=4 trainer.strategy=ddp
#   recipes/librispeech/run.sh --help
#
# --subsets  LibriSpeech subsets to prepare (default train-clean-100,dev-clean,test-clean);
#            train-*/dev-*/test-* map to the train/dev/test manifests
# --nj N     processes that decode audio while preparing (default 8)
# --download fetch the subsets from openslr.org into --data first (about 6.9 GB for the default)
# shellcheck source=recipes/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE_HELP="
LibriSpeech options:
  --subsets A,B    subsets to prepare (default train-clean-100,dev-clean,test-clean);
                   train-*/dev-*/test-* go to the train/dev/test manifests
  --nj N           processes decoding audio while preparing (default 8)
  --download       fetch the subsets from openslr.org into --data first"
SUBSETS=train-clean-100,dev-clean,test-clean
NJ=8
DOWNLOAD=()
rest=()
while (($#)); do
  case "$1" in
    --subsets) SUBSETS=${2:?--subsets needs a comma-separated list}; shift 2 ;;
    --nj) NJ=${2:?--nj needs a number}; shift 2 ;;
    --download) DOWNLOAD=(--download); shift ;;
    *) rest+=("$1"); shift ;;
  esac
done
parse_recipe_args librispeech ${rest[@]+"${rest[@]}"}

if stage 0 "prepare LibriSpeech ($SUBSETS) from $DATA -> $MANIFESTS"; then
  step "$MANIFESTS/summary.json" "$ASR" prepare librispeech --src "$DATA" --out "$MANIFESTS" \
    --subsets "$SUBSETS" --workers "$NJ" ${DOWNLOAD[@]+"${DOWNLOAD[@]}"}
fi
if stage 1 "train conf/librispeech100.yaml -> $EXP"; then
  train_stage conf/librispeech100.yaml
fi
# A coarser LM-tuning grid than the default: each point decodes all of dev-clean (2703 utterances).
LM_TUNE_ARGS=(--lm-weights "0.5,1.0,1.5" --word-scores "0,1")
model_stages "LibriSpeech train-clean-100"
