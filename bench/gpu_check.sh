#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H200): the gpu-marked kernel tests against their torch references
# (full matrix, float32 and bf16, a CUDA-graph replay) and bench.kernels. Needs only Python with torch and
# triton (no SGLang, no FlashInfer, nothing installed: the repo root goes on PYTHONPATH).
#   bash bench/gpu_check.sh OUTDIR
# GPU_CHECK_SMOKE=1 runs the same plumbing on a CPU (Triton interpreter; the gpu tests skip, bench.kernels
# --smoke): what tests/test_bench_kernels.py does, so the script is known to run before a GPU is lent.
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
smoke=${GPU_CHECK_SMOKE:-}
[ -n "$smoke" ] && export TRITON_INTERPRET=1
start=$SECONDS
{
  "$py" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} 2>&1 | tee "$out/env.txt"
"$py" -c "import pytest" 2>/dev/null || "$py" -m pip install -q pytest >/dev/null 2>&1 || true
xdist=()
[ -z "$smoke" ] && "$py" -c "import xdist" 2>/dev/null && xdist=(-n 8)  # parallel Triton compiles
RAAS_KERNELS_ONLY=1 timeout 300 "$py" -m pytest -q -m gpu "${xdist[@]}" tests/test_kernels.py -p no:cacheprovider \
  2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
[ -n "$smoke" ] && [ "$tests" = 5 ] && tests=0  # smoke: every gpu test deselected or skipped is the expected outcome
bench_args=(--json "$out/kernels.json")
[ -n "$smoke" ] && bench_args+=(--smoke)
timeout 240 "$py" -m bench.kernels "${bench_args[@]}" 2>&1 | tee "$out/kernels.log"
bench=${PIPESTATUS[0]}
echo "gpu tests rc=$tests, bench.kernels rc=$bench, $((SECONDS - start)) s" | tee "$out/summary.txt"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
