"""`python -m bench.kernels --json k.json` (GPU): decode attention time per step, dense vs the RaaS kernels.

Batch 8, 32 query / 8 KV heads, head_dim 128, bf16 (../shared/measure.md):
- `dense_us`: torch SDPA (flash backend) over N tokens per request;
- `dense_over_budget_us`: the same over `budget` tokens (the physical floor of reading the budget);
- `raas_us`: the project's kernels over the resident pages — building the ragged index list from resident page
  ids, page scores (Quest bounds) and the sparse decode with per-page attention mass — all included.
Needs only torch and triton (no SGLang, no FlashInfer).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

BATCH, Q_HEADS, KV_HEADS, HEAD_DIM, PS = 8, 32, 8, 128, 16


def cuda_us(fn, iters: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def sdpa_us(n: int) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(BATCH, Q_HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(BATCH, KV_HEADS, n, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)

    def run():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    return cuda_us(run)


def raas_us(n: int, budget: int) -> float:
    from raas_sglang.kernels.page_scores import page_scores
    from raas_sglang.kernels.sparse_decode import sparse_decode

    slots = BATCH * (n + PS)
    k_buf = torch.randn(slots, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v_buf = torch.randn_like(k_buf)
    kmin = torch.randn(slots // PS + 1, KV_HEADS, HEAD_DIM, device="cuda")
    kmax = kmin + 1
    pages_per_row = budget // PS
    # resident pages of each row: scattered over the pool, ascending
    pages = torch.stack([torch.randperm(slots // PS - 1, device="cuda")[:pages_per_row].sort().values + 1
                         for _ in range(BATCH)])  # [bs, P]
    q = torch.randn(BATCH, Q_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    offs = torch.arange(PS, device="cuda")
    indptr = torch.arange(BATCH + 1, device="cuda") * budget

    def run():
        page_scores(q, kmin, kmax, pages, HEAD_DIM**-0.5)
        indices = (pages[:, :, None] * PS + offs).flatten()  # index building
        sparse_decode(q, k_buf, v_buf, indptr, indices, HEAD_DIM**-0.5, PS)

    return cuda_us(run)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--n", default="4096,16384,32768,131072")
    ap.add_argument("--budget", default="1024,2048,4096")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.kernels needs a CUDA device", file=sys.stderr)
        return 2
    rows = []
    for n in map(int, args.n.split(",")):
        dense = sdpa_us(n)
        for budget in map(int, args.budget.split(",")):
            row = {"n": n, "budget": budget, "dense_us": round(dense, 2),
                   "raas_us": round(raas_us(n, budget), 2), "dense_over_budget_us": round(sdpa_us(budget), 2)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
