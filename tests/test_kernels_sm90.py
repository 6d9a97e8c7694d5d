"""The kernels compile for a Hopper GPU (sm_90) on this CPU-only machine, with the venv's Triton and with the
GPU machine's (3.6.0, installed by `make setup` in .venv/triton-3.6.0), with the code shape a fast decode
needs: no register spills, K/V tiles fetched with 16-byte asynchronous copies, tensor-core MMAs for the bf16
dots. The Triton interpreter runs kernels as numpy and checks none of this (it also accepts code the GPU
compiler rejects, such as a name bound to different types in the two branches of an `if`)."""

from __future__ import annotations

import os

import pytest

from pathlib import Path

from raas_sglang.kernels.sm90_check import _tool, run_checks

pytestmark = pytest.mark.skipif(not os.path.exists(_tool("cuobjdump")), reason="triton's bundled cuobjdump missing")
BENCH = "sparse_decode.bf16-hq32-hkv8-d128-ps16-L128"
GPU_TRITON = Path(__file__).resolve().parent.parent / ".venv" / "triton-3.6.0"


@pytest.fixture(scope="module", params=["venv", "gpu-machine"])
def usage(request):
    if request.param == "venv":
        return run_checks()
    if not (GPU_TRITON / "triton").is_dir():
        pytest.skip(f"{GPU_TRITON} missing (make setup installs it)")
    result = run_checks(str(GPU_TRITON))
    assert result.pop("_triton") == "3.6.0"
    return result


def test_every_kernel_compiles_without_spills(usage):
    usage = {k: v for k, v in usage.items() if not k.startswith("_")}
    assert len(usage) == 10  # 5 sparse_decode shapes (MLA included) x (split, finish)
    spilled = {name: u["stack_bytes"] for name, u in usage.items() if u["stack_bytes"]}
    assert not spilled, spilled


def test_bench_shape_uses_async_16_byte_copies_and_tensor_cores(usage):
    sass = usage[BENCH + ".split"]["sass"]
    assert any(op.startswith(("HMMA", "HGMMA")) for op in sass), sass
    assert any(op.startswith("LDGSTS") and op.endswith("128") for op in sass), sass  # 16-byte cp.async for K/V
    assert not any(op.startswith("LDG.E.U16") for op in sass), sass  # no scalar 2-byte K/V loads
    assert usage[BENCH + ".split"]["registers"] <= 168  # room for 3 programs of 4 warps per multiprocessor
