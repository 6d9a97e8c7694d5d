"""Compile a Triton kernel ahead of time for a Hopper GPU (sm_90) on a machine without one, and read what the
compiler made of it: registers, spill stack, shared memory, and which load/MMA instructions the SASS holds.

The signature is specialized from real arguments the way Triton's launcher would specialize them (pointer and
integer divisibility by 16, integers equal to 1 folded), so the code compiled here is the code a launch with
those arguments would run. Needs only triton (its bundled ptxas and cuobjdump); no CUDA device, no driver.
This is a lead, not a measurement: the GPU machine may run another Triton version.

    usage = compile_for_sm90(_split_kernel, args, constexprs, num_warps=4, num_stages=2)
    python -m raas_sglang.kernels.sm90_check     # the project's kernels at the shapes that matter, as JSON

NOTE: Triton's code generator cannot run in a process where TRITON_INTERPRET=1 was set before triton loaded
(the test process); `run_checks()` then compiles in a child process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from typing import NamedTuple

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction


class Usage(NamedTuple):
    """What ptxas made of one kernel for sm_90."""

    registers: int
    stack_bytes: int  # > 0 means spills or a local array
    shared_bytes: int  # static (cuobjdump) + Triton's dynamic shared memory
    sass: Counter  # instruction mnemonic (with modifiers) -> count, for loads/stores/MMA


def _sig_of(value) -> tuple[str, bool]:
    """(Triton type, divisible by 16) of one runtime argument, as the launcher specializes it."""
    if isinstance(value, torch.Tensor):
        name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "i32",
                torch.int64: "i64", torch.int8: "i8", torch.bool: "i1"}[value.dtype]
        return "*" + name, value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "i1", False
    if isinstance(value, int):
        return ("i64" if abs(value) >= 2**31 else "i32"), value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"unsupported argument {type(value)}")


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_for_sm90(fn, args: list, constexprs: dict, num_warps: int = 4, num_stages: int = 2) -> Usage:
    """Compile `fn` (a @triton.jit kernel) for sm_90 with runtime `args` (positional, in order, before the
    constexprs) and `constexprs` (by name). Raises whatever the compiler raises for code a GPU would reject."""
    if not isinstance(fn, JITFunction):  # under TRITON_INTERPRET=1, @triton.jit made an interpreted function
        fn = JITFunction(fn.fn)
    names = fn.arg_names
    sig, attrs, consts = {}, {}, {}
    for i, name in enumerate(names):
        if name in constexprs:
            sig[name] = "constexpr"
            consts[(i,)] = constexprs[name]
            continue
        value = args[i]
        if isinstance(value, int) and not isinstance(value, bool) and value == 1:
            sig[name] = "constexpr"  # the launcher folds integer 1 into the kernel
            consts[(i,)] = 1
            continue
        sig[name], div16 = _sig_of(value)
        if div16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True, check=True)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res.stdout)
    ops = Counter(re.findall(r"\b((?:HGMMA|HMMA|LDGSTS|LDG|STG|LDL|STL|LDS|STS|ATOMG|RED)(?:\.[A-Z0-9_]+)*)", sass.stdout))
    return Usage(int(m[1]), int(m[2]), int(m[3]) + int(getattr(kernel.metadata, "shared", 0)), ops)


def _sparse_plan(dtype, bs, q_heads, kv_heads, d, ps, L, splits, heads_reduce="mean", dv=None):
    """`dv` < d: the MLA shape (V the first dv values of each latent row)."""
    from raas_sglang.kernels import sparse_decode as sd

    dv = dv or d
    q = torch.empty(bs, q_heads, d, dtype=dtype)
    k = torch.empty(64 * ps, kv_heads, d, dtype=dtype)
    r2t = torch.empty(bs + 2, 4096, dtype=torch.int32)
    rows = torch.empty(bs, dtype=torch.int64)
    pin, pages = torch.empty(bs + 2, dtype=torch.int64), torch.empty(bs + 2, L, dtype=torch.int64)
    ws = sd.Workspace.make(bs, q_heads, dv, L, splits, "cpu")
    out = torch.empty(bs, q_heads, dv, dtype=dtype)
    return sd.plan(q, k, k[..., :dv], r2t, rows, rows, pin, pages, d**-0.5, ps, out, torch.empty(bs, L), ws,
                   accumulate=True, heads_reduce=heads_reduce, splits=splits, block_n=64, num_warps=4, num_stages=2)


def checks() -> dict[str, dict]:
    """Compile the project's kernels for sm_90 at the shapes that matter; name -> Usage as a dict. The first
    pair is bench.kernels' shape (bf16, 32 query / 8 KV heads, head_dim 128, page 16, budget 2048)."""
    plans = {
        "sparse_decode.bf16-hq32-hkv8-d128-ps16-L128": _sparse_plan(torch.bfloat16, 8, 32, 8, 128, 16, 128, 8),
        "sparse_decode.fp32-hq2-hkv2-d64-ps1-L6-max": _sparse_plan(torch.float32, 3, 2, 2, 64, 1, 6, 4, "max"),
        "sparse_decode.fp32-hq16-hkv2-d128-ps16-L6": _sparse_plan(torch.float32, 3, 16, 2, 128, 16, 6, 4),
        "sparse_decode.bf16-hq8-hkv2-d64-ps64-L6-max": _sparse_plan(torch.bfloat16, 3, 8, 2, 64, 64, 6, 4, "max"),
        # MLA as DeepSeek V3/R1 and Kimi K2 run it at tp 8: 16 query heads, one latent head of 512 + 64 rope
        "sparse_decode.bf16-mla-hq16-dk576-dv512-ps16-L128": _sparse_plan(torch.bfloat16, 8, 16, 1, 576, 16, 128,
                                                                         8, dv=512),
    }
    result = {}
    for name, (split, finish) in plans.items():
        for part, launch in (("split", split), ("finish", finish)):
            u = compile_for_sm90(launch.kernel, launch.args, launch.constexprs, **launch.options)
            result[f"{name}.{part}"] = {**u._asdict(), "sass": dict(u.sass)}
    return result


def run_checks(triton_dir: str | None = None, timeout: float = 600) -> dict[str, dict]:
    """`checks()`, in a child process when this one runs Triton interpreted or when `triton_dir` (a folder
    holding another Triton, e.g. the GPU machine's version) is given; `_triton` in the result names the version."""
    if not os.environ.get("TRITON_INTERPRET") and triton_dir is None:
        return {**checks(), "_triton": triton.__version__}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([triton_dir, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "raas_sglang.kernels.sm90_check"], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"sm90_check failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def main() -> None:
    print(json.dumps({**checks(), "_triton": triton.__version__}, indent=1))


if __name__ == "__main__":
    main()


__all__ = ["Usage", "checks", "compile_for_sm90", "run_checks"]
