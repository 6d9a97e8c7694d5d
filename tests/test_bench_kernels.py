"""bench/gpu_check.sh runs end to end before a GPU is lent: its CPU smoke mode (Triton interpreter, the gpu
tests skipped, `bench.kernels --smoke`) writes every file and JSON field the GPU run will, and the RaaS kernel it
times agrees with the torch reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raas_sglang.cpu_env import has_cuda

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(has_cuda(), reason="the smoke mode is for CPU-only machines")
def test_gpu_check_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(GPU_CHECK_SMOKE="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in tmp_path.iterdir()} == {"env.txt", "gpu_tests.log", "kernels.json", "kernels.log",
                                                   "summary.txt"}
    result = json.loads((tmp_path / "kernels.json").read_text())
    assert result["smoke"] is True and result["rows"]
    for row in result["rows"]:
        for field in ("n", "budget", "dense_us", "raas_us", "dense_over_budget_us"):
            assert row[field] > 0, (field, row)
        assert row["max_abs_err"] < 1e-4 and row["max_mass_err"] < 1e-5
