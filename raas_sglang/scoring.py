"""Quest-style page scores for RaaS: per-layer, per-physical-page key min/max and the upper-bound estimate.

Pure torch, no SGLang. Shapes use SGLang's layout: a KV slot `s` belongs to physical page `s // page_size`
(the paged allocator hands out whole, aligned pages), keys are `[tokens, kv_heads, head_dim]`.

The reduction (documented choice; step 4 compares alternatives):
1. per KV head h and page p: u[h, p] = max over the query heads g of h's group of
   sum_d max(q_g,d * kmin_p,h,d, q_g,d * kmax_p,h,d) * sm_scale — an upper bound of any of those heads' logits on
   any key of page p;
2. per head, softmax of u over the request's resident decode pages — an estimate of how the head's attention
   is shared among them (scale-free, so layers and heads are comparable);
3. mean over KV heads and over layers -> one score per resident decode page per request per step.
"""

from __future__ import annotations

import torch


class PageKeyBounds:
    """Per-layer min/max of the keys written into each physical page.

    kmin[layer], kmax[layer]  [num_pages, kv_heads, head_dim] float32
    """

    def __init__(self, num_layers: int, num_slots: int, page_size: int, kv_heads: int, head_dim: int, device="cpu"):
        self.page_size = page_size
        num_pages = -(-num_slots // page_size) + 1
        shape = (num_pages, kv_heads, head_dim)
        self.kmin = [torch.full(shape, float("inf"), device=device) for _ in range(num_layers)]
        self.kmax = [torch.full(shape, float("-inf"), device=device) for _ in range(num_layers)]

    def update(self, layer: int, slots: torch.Tensor, k: torch.Tensor) -> None:
        """Fold newly written keys into their pages' bounds.

        slots [n] int64 KV slots just written; k [n, kv_heads, head_dim] their keys.
        NOTE: a token at page offset 0 starts a page, so its page's old bounds (from a freed, reused page) are reset
        first; the paged allocator always fills a page from offset 0.
        """
        if slots.numel() == 0:
            return
        page = slots // self.page_size  # [n]
        kmin, kmax = self.kmin[layer], self.kmax[layer]
        fresh = page[slots % self.page_size == 0]
        kmin[fresh] = float("inf")
        kmax[fresh] = float("-inf")
        idx = page[:, None, None].expand_as(k)
        kf = k.to(kmin.dtype)
        kmin.scatter_reduce_(0, idx, kf, reduce="amin", include_self=True)
        kmax.scatter_reduce_(0, idx, kf, reduce="amax", include_self=True)

    def head_scores(self, layer: int, q: torch.Tensor, pages: torch.Tensor, sm_scale: float) -> torch.Tensor:
        """Per-KV-head upper bounds u (step 1 above).

        q [bs, q_heads, head_dim]; pages [bs, P] int64 physical page ids (any valid id where masked later).
        Returns [bs, kv_heads, P] float32.
        """
        bs, P = pages.shape
        q_heads, d = q.shape[1], q.shape[2]
        kv_heads = self.kmin[layer].shape[1]
        flat = pages.reshape(-1)
        # [bs, h, P, d] views of the gathered bounds (index_select of whole rows is the cheap gather on CPU)
        hi = self.kmax[layer].index_select(0, flat).view(bs, P, kv_heads, d).transpose(1, 2)
        lo = self.kmin[layer].index_select(0, flat).view(bs, P, kv_heads, d).transpose(1, 2)
        qg = q.to(hi.dtype).view(bs, kv_heads, q_heads // kv_heads, d)  # [bs, h, g, d]
        # max(q*lo, q*hi) per dim = q*hi where q >= 0 else q*lo: split q by sign, two batched matmuls
        u = qg.clamp(min=0) @ hi.transpose(-1, -2) + qg.clamp(max=0) @ lo.transpose(-1, -2)  # [bs, h, g, P]
        return u.amax(dim=2) * sm_scale  # [bs, h, P]


def page_shares(u: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Steps 2-3 for one layer: softmax over valid pages per head, mean over heads.

    u [bs, kv_heads, P] float; valid [bs, P] bool. Returns [bs, P] float32 (0 where not valid; rows with no valid
    page are all 0).
    """
    masked = u.masked_fill(~valid[:, None, :], float("-inf"))
    probs = torch.softmax(masked, dim=-1).nan_to_num(0.0)  # [bs, h, P]
    return probs.mean(dim=1)
