#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes on one H200): the gpu-marked kernel tests against their torch references
# (full matrix) and bench.kernels. Needs only Python with torch and triton (no SGLang, no FlashInfer).
#   bash bench/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
"$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$out/env.txt"
python_has_pytest=$("$py" -c "import pytest" 2>/dev/null && echo yes || echo no)
[ "$python_has_pytest" = yes ] || "$py" -m pip install -q pytest >/dev/null 2>&1 || true
RAAS_KERNELS_ONLY=1 timeout 300 "$py" -m pytest -q -m gpu tests/test_kernels.py -p no:cacheprovider \
  2>&1 | tee "$out/gpu_tests.log"
tests=${PIPESTATUS[0]}
timeout 240 "$py" -m bench.kernels --json "$out/kernels.json" 2>&1 | tee "$out/kernels.log"
bench=${PIPESTATUS[0]}
echo "gpu tests rc=$tests, bench.kernels rc=$bench" | tee "$out/summary.txt"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
