"""Kernel (b): batched Quest upper-bound scores of each request's resident decode pages (ragged), with a torch
reference.

u[b, h, p] = max over the query heads g of KV head h's group of
             sum_d max(q[b, g, d] * kmin[page, h, d], q[b, g, d] * kmax[page, h, d]) * sm_scale
for page = pages[b, p]; -inf where pages[b, p] < 0 (an empty slot: rows are ragged).

Shapes: q [bs, q_heads, head_dim]; kmin, kmax [num_pages, kv_heads, head_dim] float32; pages [bs, P] int64.
Returns u [bs, kv_heads, P] float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def page_scores_ref(q, kmin, kmax, pages, sm_scale: float) -> torch.Tensor:
    bs, q_heads, d = q.shape
    kv_heads = kmin.shape[1]
    valid = pages >= 0
    idx = pages.clamp(min=0)
    lo = kmin[idx].permute(0, 2, 1, 3)[:, :, None]  # [bs, h, 1, P, d]
    hi = kmax[idx].permute(0, 2, 1, 3)[:, :, None]
    qg = q.float().view(bs, kv_heads, q_heads // kv_heads, 1, d)
    u = torch.maximum(qg * lo, qg * hi).sum(-1).amax(dim=2) * sm_scale  # [bs, h, P]
    return u.masked_fill(~valid[:, None, :], float("-inf"))


@triton.jit
def _page_scores_kernel(
    q_ptr, kmin_ptr, kmax_ptr, pages_ptr, out_ptr, sm_scale, P,
    Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    G: tl.constexpr = Q_HEADS // KV_HEADS
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    in_row = offs_p < P
    page = tl.load(pages_ptr + b * P + offs_p, mask=in_row, other=-1)
    valid = in_row & (page >= 0)
    safe = tl.where(valid, page, 0)
    offs_d = tl.arange(0, D)
    meta = (safe[:, None] * KV_HEADS + h) * D + offs_d[None, :]  # [BLOCK_P, D]
    lo = tl.load(kmin_ptr + meta, mask=valid[:, None], other=0.0)
    hi = tl.load(kmax_ptr + meta, mask=valid[:, None], other=0.0)
    best = tl.full([BLOCK_P], float("-inf"), tl.float32)
    for g in tl.static_range(G):
        qv = tl.load(q_ptr + (b * Q_HEADS + h * G + g) * D + offs_d).to(tl.float32)  # [D]
        s = tl.sum(tl.maximum(qv[None, :] * lo, qv[None, :] * hi), axis=1)
        best = tl.maximum(best, s)
    best = tl.where(valid, best * sm_scale, float("-inf"))
    tl.store(out_ptr + (b * KV_HEADS + h) * P + offs_p, best, mask=in_row)


def page_scores(q, kmin, kmax, pages, sm_scale: float, block_p: int = 32) -> torch.Tensor:
    """Triton version of `page_scores_ref` (same arguments, same result)."""
    bs, q_heads, d = q.shape
    kv_heads = kmin.shape[1]
    P = pages.shape[1]
    out = torch.empty((bs, kv_heads, P), dtype=torch.float32, device=q.device)
    if bs == 0 or P == 0:
        return out
    grid = (bs, kv_heads, triton.cdiv(P, block_p))
    _page_scores_kernel[grid](
        q.contiguous(), kmin, kmax, pages.contiguous(), out, sm_scale, P,
        Q_HEADS=q_heads, KV_HEADS=kv_heads, D=d, BLOCK_P=block_p,
    )
    return out


__all__ = ["page_scores", "page_scores_ref"]
