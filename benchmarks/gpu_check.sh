#!/usr/bin/env bash
# Issue 14: set up a fresh GPU machine that has only this repository, then run gpu_check.py.
#
#   benchmarks/gpu_check.sh                       # writes benchmarks/results/gpu.json
#   OUT=/tmp/gpu.json benchmarks/gpu_check.sh --sections train_step bf16
#
# Creates a virtual environment ($VENV, default .venv-gpu), `pip install -e .` from the package
# index (the only network needed), then runs benchmarks/gpu_check.py --device cuda under
# `timeout`, so the whole script stays within $TOTAL seconds (default 570 s, under 10 minutes).
# If the system Python already has a CUDA-enabled torch, the venv reuses it
# (--system-site-packages) instead of downloading one. gpu_check.py writes its JSON after every
# section, so a run cut short by the timeout keeps what it measured ("complete": false).
# Extra arguments go to gpu_check.py.
set -euo pipefail

cd "$(dirname "$0")/.."
START=$(date +%s)
TOTAL=${TOTAL:-570}
CHECK_LIMIT=${CHECK_LIMIT:-480}  # issue 14: the check itself under 8 minutes
VENV=${VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results/gpu.json}

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi not found"
"$PYTHON" --version

echo "== environment ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
        echo "reusing the system's CUDA torch (--system-site-packages)"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e .
"$VENV/bin/python" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    raise SystemExit("no CUDA device visible to torch: gpu_check needs one (or run --device cpu --tiny)")
print(f"device: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")
EOF

LEFT=$(( TOTAL - ($(date +%s) - START) ))
LIMIT=$(( LEFT < CHECK_LIMIT ? LEFT : CHECK_LIMIT ))
if [ "$LIMIT" -lt 60 ]; then
    echo "set-up took $(( $(date +%s) - START )) s: under 60 s left for the check" >&2
    exit 1
fi
echo "== gpu_check (at most ${LIMIT} s)"
status=0
timeout --signal=INT --kill-after=20 "$LIMIT" \
    "$VENV/bin/python" benchmarks/gpu_check.py --device cuda --out "$OUT" "$@" || status=$?
echo "== done in $(( $(date +%s) - START )) s (gpu_check exit status $status); results: $OUT"
exit "$status"
