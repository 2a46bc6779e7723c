#!/usr/bin/env bash
# The one GPU check of issue 12, for a session that has a CUDA device (about 5-8 minutes on an H200):
#   1. the capturable path on CUDA: every capturable solver is captured, replayed and equals the eager
#      result (benchmarks/gpu_capture.py; fails loudly otherwise);
#   2. the GPU tables (python -m benchmarks.gpu): graphed vs eager vs peers, implicit, batched, search step.
# Results go to ${OUT:-benchmarks/gpu_results}/ (capture.txt, gpu.json, gpu.md); copy gpu.md's tables into
# docs/gpu.md ("Measured") and the machine line into docs/benchmarks.md.
# Usage: bash benchmarks/gpu_check.sh            (PYTHON=... to pick the interpreter; SKIP=large,search)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
OUT="${OUT:-benchmarks/gpu_results}"
mkdir -p "$OUT"
export WORSTFORGET_PROGRESS=0
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
timeout 240 "$PY" -m benchmarks.gpu_capture 2>&1 | tee "$OUT/capture.txt"
timeout 420 "$PY" -m benchmarks.gpu --device cuda --out "$OUT" --rounds "${ROUNDS:-15}" --skip "${SKIP:-}" \
    2>&1 | tee "$OUT/gpu.txt"
