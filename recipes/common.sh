# shellcheck shell=bash
# Shared helpers for recipes/<corpus>/run.sh; sourced, not run.
#
# A recipe is a list of numbered stages. Each stage is re-runnable: every step inside it
# names the file it produces and writes OUTPUT.provenance beside it (the command line and the
# sha256 of its inputs). The output is reused only while that record matches what the step
# would run now: a file made by something else (scripts/demo.sh, a hand-run command, another
# option set), or from an input that has since changed (a retrained model is re-exported
# and re-scored), is redone with a one-line note. --force redoes everything selected. So an
# interrupted run continues where it stopped and a finished one costs nothing.
#
#   parse_recipe_args CORPUS "$@"     sets STAGE STOP_STAGE FORCE DATA MANIFESTS EXP AVERAGE
#                                     BEAM_SIZE OVERRIDES (key=value for `asr train`)
#   stage N "what"                    true when N is in [STAGE, STOP_STAGE]; prints a header
#   step [--after IN]... OUTPUT CMD...  runs CMD unless OUTPUT exists with a matching
#                                     OUTPUT.provenance (CMD and the sha256 of each IN);
#                                     echoes CMD, then writes OUTPUT.provenance
#   have_kenlm                        true when `asr lm build` can find lmplz/build_binary
#   train_stage CONFIG                stage 1 body: asr train (resumes an interrupted run)
#   export_stage, lm_stage, evaluate_stage SPLIT..., transcribe_stage N, results_stage TITLE
#   model_stages TITLE                stages 2-6 (export .. results table), the same in every recipe
#   summary_field DIR|FILE KEY...     the KEYs of a summary.json (DIR/summary.json), on one line;
#                                     how the experiment benches read results
#
# The recipe runs from the repository root whatever the caller's working directory, so
# conf/, data/ and exp/ mean the same thing everywhere; paths given as options are made
# absolute first.

set -euo pipefail

ASR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The toolkit's CLI and the Python it runs on (helpers import asr). Override with ASR=...
ASR="${ASR:-$(command -v asr || true)}"
if [[ -z "$ASR" && -x "$ASR_ROOT/.venv/bin/asr" ]]; then ASR="$ASR_ROOT/.venv/bin/asr"; fi
if [[ -z "$ASR" ]]; then
  echo "error: no 'asr' command on PATH (activate the virtualenv or run 'make setup')" >&2
  exit 2
fi
PYTHON="${PYTHON:-$(dirname "$ASR")/python}"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

_abspath() {  # _abspath PATH: absolute form of PATH as seen from the caller's directory
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$CALLER_PWD" "$1" ;;
  esac
}

recipe_usage() {
  cat <<EOF
usage: recipes/$1/run.sh [--stage N] [--stop-stage M] [--force] [--data DIR]
                         [--manifests DIR] [--exp DIR] [--average N] [--beam-size N]
                         [key=value ...]

Stages: 0 prepare, 1 train, 2 export, 3 LM (build + tune on dev), 4 evaluate
greedy / beam / beam+LM on dev and test, 5 transcribe examples, 6 results table.
A stage reuses an output only when it made it with the same command and inputs
(recorded in OUTPUT.provenance); --force redoes them all.

  --stage N        first stage to run (default 0)
  --stop-stage M   last stage to run (default ${RECIPE_LAST_STAGE:-6})
  --force          redo the selected stages even where their outputs exist
  --data DIR       corpus as published (default ${ASR_DATA_DIR:-../shared/data}/$1,
                   from the repository root)
  --manifests DIR  where prepared manifests go (default data/$1)
  --exp DIR        experiment directory (default exp/$1)
  --average N      average the N best checkpoints at export (default $AVERAGE)
  --beam-size N    beam width for the beam decoders (default: the toolkit's)
  key=value        overrides for 'asr train', e.g. trainer.max_epochs=5 trainer.threads=1
EOF
  # A recipe with options of its own describes them in RECIPE_HELP.
  if [[ -n "${RECIPE_HELP:-}" ]]; then printf '%s\n' "$RECIPE_HELP"; fi
}

# The variables set here are the recipes' interface (read by run.sh, not in this file).
# shellcheck disable=SC2034
parse_recipe_args() {  # parse_recipe_args CORPUS "$@"
  local corpus=$1
  shift
  CALLER_PWD="$PWD"
  STAGE=0
  STOP_STAGE=${RECIPE_LAST_STAGE:-6}  # a recipe with an extra stage sets RECIPE_LAST_STAGE
  FORCE=0
  DATA="${ASR_DATA_DIR:-$ASR_ROOT/../shared/data}/$corpus"
  MANIFESTS="$ASR_ROOT/data/$corpus"
  EXP="$ASR_ROOT/exp/$corpus"
  AVERAGE="${AVERAGE:-3}"
  BEAM_SIZE=""
  OVERRIDES=()
  while (($#)); do
    case "$1" in
      --stage) STAGE=${2:?--stage needs a number}; shift 2 ;;
      --stop-stage) STOP_STAGE=${2:?--stop-stage needs a number}; shift 2 ;;
      --force) FORCE=1; shift ;;
      --data) DATA=$(_abspath "${2:?--data needs a folder}"); shift 2 ;;
      --manifests) MANIFESTS=$(_abspath "${2:?--manifests needs a folder}"); shift 2 ;;
      --exp) EXP=$(_abspath "${2:?--exp needs a folder}"); shift 2 ;;
      --average) AVERAGE=${2:?--average needs a number}; shift 2 ;;
      --beam-size) BEAM_SIZE=${2:?--beam-size needs a number}; shift 2 ;;
      -h|--help) recipe_usage "$corpus"; exit 0 ;;
      *=*) OVERRIDES+=("$1"); shift ;;
      *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
  done
  local n
  for n in "$STAGE" "$STOP_STAGE" "$AVERAGE" ${BEAM_SIZE:+"$BEAM_SIZE"}; do
    if ! [[ "$n" =~ ^[0-9]+$ ]]; then
      echo "error: expected a non-negative integer, got '$n'" >&2
      exit 2
    fi
  done
  cd "$ASR_ROOT"
}

stage() {  # stage N "what": is stage N selected? (prints its header when it is)
  if ((STAGE <= $1 && $1 <= STOP_STAGE)); then
    echo "== stage $1: $2"
    return 0
  fi
  return 1
}

_sha256() {  # _sha256 FILE: hex digest
  if command -v sha256sum >/dev/null; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

_step_parse() {  # _step_parse [--after INPUT]... OUTPUT CMD...: sets STEP_OUT STEP_CMD STEP_RECORD
  local after=() input
  while [[ "$1" == --after ]]; do
    after+=("$2")
    shift 2
  done
  STEP_OUT=$1
  shift
  STEP_CMD=("$@")
  # What the output is reused against: the exact command, and each input's content (a hash,
  # not an mtime: a touched or copied file is not a change, a rewritten one is).
  STEP_RECORD="command:$(printf ' %q' "$@")"
  for input in ${after[@]+"${after[@]}"}; do
    if [[ -f "$input" ]]; then
      STEP_RECORD+=$'\n'"input: $input sha256 $(_sha256 "$input")"
    else
      STEP_RECORD+=$'\n'"input: $input missing"
    fi
  done
}

step_is_current() {  # step_is_current [--after INPUT]... OUTPUT CMD...: would step reuse OUTPUT?
  _step_parse "$@"
  [[ "$FORCE" == 0 && -e "$STEP_OUT" && -f "$STEP_OUT.provenance" &&
     "$(<"$STEP_OUT.provenance")" == "$STEP_RECORD" ]]
}

_step_why_redo() {  # after step_is_current said no: one line on why an existing output is redone
  local out=$STEP_OUT prov=$STEP_OUT.provenance
  [[ -e "$out" && "$FORCE" == 0 ]] || return 0
  if [[ ! -f "$prov" ]]; then
    echo "   redo: ${out#"$ASR_ROOT"/} has no provenance record (not made by this step, e.g. by scripts/demo.sh)"
  elif [[ "$(head -n 1 "$prov")" != "${STEP_RECORD%%$'\n'*}" ]]; then
    echo "   redo: ${out#"$ASR_ROOT"/} was made by another command or other options"
  else
    echo "   redo: an input of ${out#"$ASR_ROOT"/} changed since it was made"
  fi
}

step() {  # step [--after INPUT]... OUTPUT CMD...: run CMD unless OUTPUT was made by this very
  # command from inputs with the same content (OUTPUT.provenance); --force reruns it
  if step_is_current "$@"; then
    echo "   skip: ${STEP_OUT#"$ASR_ROOT"/} exists (made by this step, same command and inputs)"
    return 0
  fi
  local out=$STEP_OUT prov=$STEP_OUT.provenance record=$STEP_RECORD
  local cmd=("${STEP_CMD[@]}")
  _step_why_redo
  rm -f "$prov"  # an interrupted command leaves no record, so its output is never reused
  echo "   + ${cmd[*]}"
  "${cmd[@]}"
  printf '%s\n' "$record" >"$prov"
}

summary_field() {  # summary_field DIR|FILE KEY...: values of KEYs in a summary.json, space-separated
  local file=$1
  shift
  if [[ -d "$file" ]]; then file=$file/summary.json; fi
  "$PYTHON" -c '
import json, sys
s = json.load(open(sys.argv[1], encoding="utf-8"))
missing = [k for k in sys.argv[2:] if k not in s]
if missing:
    sys.exit(f"error: {sys.argv[1]}: no {missing[0]!r}")
print(*(s[k] for k in sys.argv[2:]))
' "$file" "$@"
}

have_kenlm() {
  "$PYTHON" -c "from asr.decode.lm import find_kenlm_bin; find_kenlm_bin()" 2>/dev/null
}

TRAIN_RESUME=()  # set by train_stage for _train

_train() {  # _train ARGS...: asr train ARGS (+ --resume when train_stage found this run interrupted)
  "$ASR" train "$@" ${TRAIN_RESUME[@]+"${TRAIN_RESUME[@]}"}
}

RECIPE_OVERRIDES=()  # key=value a recipe adds to its config (e.g. paths inside --data); the user's win

phone_head_overrides() {  # phone_head_overrides LEXICON: the phone CTC head when LEXICON exists
  # The lexicon sits in the corpus folder, so a recipe turns the head on rather than conf/ (a
  # config must load without the corpus). Only the training transcripts' words are looked up.
  if [[ -f "$1" ]]; then
    RECIPE_OVERRIDES+=(model.phone_ctc_weight=0.3 "data.lexicon=$1")
  else
    echo "   note: no $1: training without the phone CTC head"
  fi
}

train_stage() {  # train_stage CONFIG: asr train with the recipe's manifests and overrides
  local config=$1 summary=$EXP/train_summary.json started=$EXP/train_started.provenance
  local data_overrides=("exp_dir=$EXP" "data.train_manifest=$MANIFESTS/train.jsonl"
                        "data.dev_manifest=$MANIFESTS/dev.jsonl"
                        ${RECIPE_OVERRIDES[@]+"${RECIPE_OVERRIDES[@]}"})
  # Overrides given on the command line come last, so they win over the recipe's.
  local args=(--after "$MANIFESTS/train.jsonl" --after "$MANIFESTS/dev.jsonl" "$summary"
              _train "$config" "${data_overrides[@]}" ${OVERRIDES[@]+"${OVERRIDES[@]}"})
  mkdir -p "$EXP"
  TRAIN_RESUME=()
  if ! step_is_current "${args[@]}"; then
    if [[ "$FORCE" == 0 && ! -e "$summary" && -e "$EXP/checkpoints/last.ckpt" && -f "$started" &&
          "$(<"$started")" == "$STEP_RECORD" ]]; then
      echo "   found $EXP/checkpoints/last.ckpt of this stage's interrupted run: resuming"
      TRAIN_RESUME=(--resume)
    elif [[ -e "$summary" || -d "$EXP/checkpoints" ]]; then
      _step_why_redo
      # Another run's top-k checkpoints would compete with the new run's at export.
      echo "   (re)training: removing $EXP/checkpoints and $summary"
      rm -rf "$EXP/checkpoints" "$summary"
    fi
    printf '%s\n' "$STEP_RECORD" >"$started"  # lets an interrupted run of the same stage resume
  fi
  step "${args[@]}"
}

export_stage() {
  step --after "$EXP/train_summary.json" "$EXP/model.asr" "$ASR" export "$EXP" --average "$AVERAGE" --out "$EXP/model.asr"
}

LM_TUNE_ARGS=()  # extra options for `asr lm tune` (e.g. a coarser grid), set by a recipe

lm_stage() {  # word 3-gram on the training transcripts, weights tuned on dev
  if ! have_kenlm; then
    echo "   skip: KenLM tools (lmplz, build_binary) not found; run scripts/build_kenlm.sh" \
      "or set KENLM_BIN. Stage 4 then evaluates greedy and beam without an LM."
    return 0
  fi
  local lm=$EXP/lm/3gram.bin
  mkdir -p "$EXP/lm"
  step --after "$MANIFESTS/train.jsonl" "$lm" "$ASR" lm build "$MANIFESTS/train.jsonl" --order 3 \
    --out "$lm"
  # Tuned weights are written beside the LM as <lm>.tune.json; decoders use them by default.
  # Tuning follows the model: a retrained model gets its weights re-tuned.
  step --after "$EXP/model.asr" --after "$lm" "$lm.tune.json" "$ASR" lm tune "$EXP/model.asr" "$MANIFESTS/dev.jsonl" --lm "$lm" \
    ${BEAM_SIZE:+--beam-size "$BEAM_SIZE"} ${LM_TUNE_ARGS[@]+"${LM_TUNE_ARGS[@]}"}
}

_evaluate() {  # _evaluate SYSTEM SPLIT DECODER-ARGS...: one evaluation into $EXP/eval/SYSTEM/SPLIT
  local system=$1 split=$2
  shift 2
  local out=$EXP/eval/$system/$split
  local cmd=("$ASR" evaluate "$EXP/model.asr" "$MANIFESTS/$split.jsonl" --out "$out" "$@")
  # Redone when the model (or, with the LM, the LM or its tuned weights) changed since.
  local inputs=(--after "$EXP/model.asr")
  if [[ "$system" == beam-lm* ]]; then
    inputs+=(--after "$EXP/lm/3gram.bin" --after "$EXP/lm/3gram.bin.tune.json")
  fi
  step "${inputs[@]}" "$out/summary.json" "${cmd[@]}"
  # The exact command goes beside the report so the results table can cite it.
  if [[ -e "$out/summary.json" && ( ! -e "$out/command.txt" || "$out/summary.json" -nt "$out/command.txt" ) ]]; then
    local rel=() arg
    for arg in "${cmd[@]}"; do rel+=("${arg#"$ASR_ROOT"/}"); done
    rel[0]=asr
    printf '%s\n' "${rel[*]}" >"$out/command.txt"
  fi
}

_has_phone_head() {  # whether $EXP/model.asr carries a phone CTC head (asr.decode.phones)
  # An unreadable package says so in one line and counts as "no head"; the stage's own
  # evaluations report it too.
  "$PYTHON" -c '
import sys
from asr.package import read_metadata
try:
    sys.exit("phones" not in read_metadata(sys.argv[1]))
except Exception as e:  # noqa: BLE001 (any unreadable file: one line, not a traceback)
    msg = str(e) if sys.argv[1] in str(e) else f"{sys.argv[1]}: {e}"
    sys.exit(f"error: {msg}")
' "$EXP/model.asr"
}

evaluate_stage() {  # evaluate_stage SPLIT...: greedy, beam, beam+LM (when stage 3 made one)
  local split beam=(--decoder beam ${BEAM_SIZE:+--beam-size "$BEAM_SIZE"})
  local lm=$EXP/lm/3gram.bin
  for split in "$@"; do
    if [[ ! -e "$MANIFESTS/$split.jsonl" ]]; then
      echo "   skip: no $MANIFESTS/$split.jsonl"
      continue
    fi
    _evaluate greedy "$split" --decoder greedy
    _evaluate beam "$split" "${beam[@]}"
    if [[ -e "$lm" ]]; then
      _evaluate beam-lm "$split" "${beam[@]}" --lm "$lm"
      # A model with a phone CTC head: beam-lm used the phone weight stage 3 tuned (both
      # heads' n-best lists rescored, when that was better on dev); this row is the
      # character beam alone, for comparison.
      if _has_phone_head; then
        _evaluate beam-lm-chars "$split" "${beam[@]}" --lm "$lm" --phone-weight 0
      fi
    else
      echo "   skip beam+LM on $split: no $lm (stage 3)"
    fi
  done
}

transcribe_stage() {  # transcribe_stage N: the first N test (else dev) files, all formats
  local n=$1 manifest=$MANIFESTS/test.jsonl
  [[ -e "$manifest" ]] || manifest=$MANIFESTS/dev.jsonl
  local files
  mapfile -t files < <("$PYTHON" -c '
import sys
from asr.data.manifest import read_manifest
for u in read_manifest(sys.argv[1])[: int(sys.argv[2])]:
    print(u.audio)
' "$manifest" "$n")
  step --after "$EXP/model.asr" "$EXP/transcripts/DONE" \
    "$ASR" transcribe "$EXP/model.asr" "${files[@]}" --format all --out "$EXP/transcripts"
  # Reached only when transcribe succeeded (set -e) or was skipped: a failed run is redone.
  printf '%s\n' "${files[@]}" >"$EXP/transcripts/DONE"
}

results_stage() {  # results_stage TITLE: Markdown table from every summary.json under $EXP/eval
  # Always rewritten: it is cheap and must reflect the evaluations present now.
  echo "   + $PYTHON recipes/results_table.py $EXP --title \"$1\" --out $EXP/results.md"
  "$PYTHON" "$ASR_ROOT/recipes/results_table.py" "$EXP" --title "$1" --out "$EXP/results.md"
  cat "$EXP/results.md"
}

model_stages() {  # model_stages TITLE: stages 2-6, shared by every recipe (LM_TUNE_ARGS may be set)
  if stage 2 "export the average of the $AVERAGE best checkpoints -> $EXP/model.asr"; then
    export_stage
  fi
  if stage 3 "word 3-gram LM on the training transcripts, weights tuned on dev"; then
    lm_stage
  fi
  if stage 4 "evaluate greedy, beam, beam+LM on dev (and test when prepared)"; then
    evaluate_stage dev test
  fi
  if stage 5 "transcribe three test (else dev) files (txt, json, srt, vtt)"; then
    transcribe_stage 3
  fi
  if stage 6 "results table -> $EXP/results.md"; then
    results_stage "$1"
  fi
}

