#!/usr/bin/env bash
# The main job end to end on a small real corpus: prepare -> train -> export -> evaluate
# (dev and test WER reports) -> transcribe an example. A few minutes on 2 CPU cores.
#   CORPUS=yesno|fsdd  DATA=/path/to/corpus  EXP=exp/demo-<corpus>  bash scripts/demo.sh [key=value ...]
# The demo trains into exp/demo-<corpus>, not exp/<corpus>: that one belongs to
# recipes/<corpus>/run.sh, whose results (averaged checkpoints, beam + LM) must not be mixed
# with, or silently replaced by, the demo's single best checkpoint, nor the other way round.
set -euo pipefail
corpus="${CORPUS:-yesno}"
src="${DATA:-../shared/data/$corpus}"
exp="${EXP:-exp/demo-$corpus}"
data="data/$corpus"

echo "== 1/5 prepare $corpus from $src -> $data"
asr prepare "$corpus" --src "$src" --out "$data"

echo "== 2/5 train (conf/$corpus.yaml) -> $exp"
# A rerun starts afresh (--overwrite): an earlier run's checkpoints would otherwise compete
# with this run's at export (`asr train` refuses to mix them without it).
# One thread, as the recipes and tests train: tiny models gain nothing from more, and torch's
# default (all cores) degrades badly when anything else runs beside it. Overrides win.
asr train "conf/$corpus.yaml" --overwrite "exp_dir=$exp" "data.train_manifest=$data/train.jsonl" \
  "data.dev_manifest=$data/dev.jsonl" trainer.threads=1 "$@"

echo "== 3/5 export the best checkpoint -> $exp/model.asr"
asr export "$exp" --out "$exp/model.asr"

echo "== 4/5 evaluate (greedy) on dev and test"
for split in dev test; do
  [ -f "$data/$split.jsonl" ] || continue
  asr evaluate "$exp/model.asr" "$data/$split.jsonl" --out "$exp/eval-$split"
done

echo "== 5/5 transcribe an example"
example=$(python -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())['audio'])" "$data/test.jsonl")
asr transcribe "$exp/model.asr" "$example" --format all --out "$exp/transcripts"

echo
echo "Done. Results:"
echo "  model package      $exp/model.asr"
echo "  training logs      $exp/csv, $exp/tb (tensorboard --logdir $exp/tb)"
for split in dev test; do
  [ -f "$exp/eval-$split/summary.json" ] && echo "  $split report        $exp/eval-$split/report.html  ($(python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"WER {100*s['wer']:.2f}%  CER {100*s['cer']:.2f}%\")" "$exp/eval-$split/summary.json"))"
done
echo "  transcripts        $exp/transcripts"
