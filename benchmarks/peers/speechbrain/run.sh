#!/usr/bin/env bash
# SpeechBrain peer on our speechocean762 split: makes its own venv, then trains and decodes.
#   bash benchmarks/peers/speechbrain/run.sh [--train M] [--dev M] [--out DIR]
#        [--budget-min 80] [--threads 1] [--smoke] [--limit-train N] [--set KEY=VALUE ...]
# Paths are relative to the repository root (run from anywhere).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="$here/.venv"
SPEECHBRAIN_VERSION=1.1.2

train=data/speechocean762/train.jsonl
dev=data/speechocean762/dev.jsonl
out=exp/peer-speechbrain
budget=80
threads=1
smoke=()
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --train) train="$2"; shift 2 ;;
    --dev) dev="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --budget-min) budget="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --smoke) smoke=(--smoke); shift ;;
    --set|--limit-train) extra+=("$1" "$2"); shift 2 ;;
    *) echo "error: run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
cd "$root"
for m in "$train" "$dev"; do
  [[ -f "$m" ]] || { echo "error: $m: no such manifest" >&2; exit 2; }
done

if ! "$venv/bin/python" -c "import speechbrain, soundfile, torch" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "torch==2.14.1" "torchaudio==2.11.0" \
    "speechbrain==$SPEECHBRAIN_VERSION" soundfile
fi

export OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
exec "$venv/bin/python" "$here/train.py" --train "$train" --dev "$dev" --out "$out" \
  --budget-min "$budget" --threads "$threads" "${smoke[@]}" "${extra[@]}"
