#!/usr/bin/env bash
# One-shot GPU check (benchmarks/gpu_check.py): training throughput of flip / packed / plain
# padded nn.LSTM in fp32 and bf16, their agreement, a real `asr train` run on speechocean762
# with bf16 on the GPU, and the DataLoader rate; writes OUT/gpu_check.md, OUT/gpu_check.json,
# OUT/cli.log (and this wrapper's own log, OUT/gpu_check.log). At most ~8 min (--budget 480).
#
#   bash benchmarks/gpu_check.sh OUT [--dry-run] [--data DIR] [--work DIR] [--budget S] [--train-seconds S]
#
# For a GPU machine without network access whose python3 (e.g. 3.12 with a CUDA torch) has
# torch, torchaudio, pytorch-lightning, torchmetrics, sentencepiece, safetensors, rich, pyyaml,
# tensorboard and matplotlib but not soundfile or jiwer, prepare once in the root of the
# checkout you copy there (both folders git-ignored, ~45 MB together):
#   echo /.whl/ >> .git/info/exclude; echo /.gpu_data/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 jiwer==4.0.0 rapidfuzz==3.14.6
#   python3 benchmarks/gpu_check.py --pack-speechocean ../shared/data/speechocean762 .gpu_data/speechocean762 --max-mb 40
# (a 40 MB subset of whole speakers, ~590 utterances, instead of the whole 177 MB corpus), then
# run there, from the repository root:
#   bash benchmarks/gpu_check.sh OUT --data .gpu_data/speechocean762 --work /tmp/gpu_check
# --work outside OUT keeps OUT to the 4 report files (gpu_check.md, gpu_check.json,
# gpu_check.log, cli.log). Exit status 0 = every section ran (targets may FAIL).
#
# Python: $PYTHON, else the repo's .venv/bin/python, else python3. Where it lacks soundfile or
# jiwer, the wheels in the repo's .whl/ are installed into /tmp/gpu_check_site (no index, no
# network) and put on PYTHONPATH; asr is imported from this checkout (PYTHONPATH), not from an
# installed copy.
set -uo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    sed -n '2,/^set -uo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2
fi
OUT=$1
shift
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)

if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then
    PY=$REPO/.venv/bin/python
else
    PY=python3
fi

EXTRA=""
if ! "$PY" -c "import soundfile, jiwer" 2>/dev/null && compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    SITE=/tmp/gpu_check_site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$REPO"/.whl/*.whl || echo "warning: installing $REPO/.whl/*.whl failed"
    EXTRA=$SITE
fi
export PYTHONPATH="$REPO${EXTRA:+:$EXTRA}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

echo "gpu_check: python $PY; PYTHONPATH $PYTHONPATH; $(date)" | tee "$OUT/gpu_check.log"
# Fails early and visibly where the wheels are missing (torch is reported by the script).
"$PY" -c "import soundfile, jiwer" 2>&1 | tee -a "$OUT/gpu_check.log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    2>&1 | tee -a "$OUT/gpu_check.log"

"$PY" "$REPO/benchmarks/gpu_check.py" "$OUT" "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
