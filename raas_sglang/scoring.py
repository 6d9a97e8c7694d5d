"""Quest-style page scores for RaaS: per-layer, per-physical-page key min/max and the upper-bound estimate.

Pure torch, no SGLang. Shapes use SGLang's layout: a KV slot `s` belongs to physical page `s // page_size`
(the paged allocator hands out whole, aligned pages), keys are `[tokens, kv_heads, head_dim]`.

The reduction (documented choice; step 4 compares alternatives):
1. per KV head h and page p: u[h, p] = max over the query heads g of h's group of
   sum_d max(q_g,d * kmin_p,h,d, q_g,d * kmax_p,h,d) * sm_scale — an upper bound of any of those heads' logits on
   any key of page p;
2. per head, softmax of u over the request's resident decode pages — an estimate of how the head's attention
   is shared among them (scale-free, so layers and heads are comparable);
3. mean over KV heads, summed over layers (or max, `--raas-reduce`) -> one score per resident decode page per
   request per step.
"""

from __future__ import annotations

import torch


class PageKeyBounds:
    """Per-layer max and min of the keys written into each physical page, packed for one-matmul scoring.

    kb[layer]  [num_pages, kv_heads, 2 * head_dim] float32: `[..., :d]` = max of the page's keys, `[..., d:]` =
    -(min of the keys). Both halves fold new keys with one `amax`, and the Quest bound of step 1 becomes one dot
    product: sum_d max(q*kmin, q*kmax) = relu(q) . kmax + relu(-q) . (-kmin).
    """

    def __init__(
        self, num_layers: int, num_slots: int, page_size: int, kv_heads: int, head_dim: int, device="cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.page_size = page_size
        self.head_dim = head_dim
        num_pages = -(-num_slots // page_size) + 1
        shape = (num_pages, kv_heads, 2 * head_dim)
        self.kb = [torch.full(shape, float("-inf"), device=device, dtype=dtype) for _ in range(num_layers)]
        self._buf: dict[str, torch.Tensor] = {}  # scratch reused across steps (no large allocation per layer)

    @property
    def kmax(self) -> list[torch.Tensor]:
        """[num_pages, kv_heads, head_dim] views per layer (+inf/-inf for never-written pages)."""
        return [kb[..., : self.head_dim] for kb in self.kb]

    @property
    def kmin(self) -> list[torch.Tensor]:
        """[num_pages, kv_heads, head_dim] per layer (copies)."""
        return [-kb[..., self.head_dim :] for kb in self.kb]

    def update(self, layer: int, slots: torch.Tensor, k: torch.Tensor) -> None:
        """Fold newly written keys into their pages' bounds.

        slots [n] int64 KV slots just written; k [n, kv_heads, head_dim] their keys.
        NOTE: a token at page offset 0 starts a page, so its page's old bounds (from a freed, reused page) are reset
        first; the paged allocator always fills a page from offset 0.
        """
        if slots.numel() == 0:
            return
        page = slots // self.page_size  # [n]
        kb = self.kb[layer]
        # NOTE: tokens that start no page reset the padding page 0 instead (no boolean mask: no sync); page 0 is
        # never a request's page, so its bounds are never read
        kb[torch.where(slots % self.page_size == 0, page, torch.zeros_like(page))] = float("-inf")
        kf = k.to(kb.dtype)
        both = torch.cat([kf, -kf], dim=-1)  # [n, kv_heads, 2d]
        kb.scatter_reduce_(0, page[:, None, None].expand_as(both), both, reduce="amax", include_self=True)

    def _scratch(self, name: str, shape: tuple, dtype=torch.float32) -> torch.Tensor:
        n = 1
        for x in shape:
            n *= x
        buf = self._buf.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = torch.empty(max(n, 1), dtype=dtype, device=self.kb[0].device)
            self._buf[name] = buf
        return buf[:n].view(shape)

    def head_scores(self, layer: int, q: torch.Tensor, pages: torch.Tensor, sm_scale: float) -> torch.Tensor:
        """Per-KV-head upper bounds u (step 1 above).

        q [bs, q_heads, head_dim]; pages [bs, P] int64 physical page ids (any valid id where masked later).
        Returns [bs, kv_heads, P] float32.
        """
        bs, P = pages.shape
        kb = self.kb[layer]
        kv_heads, d2 = kb.shape[1], kb.shape[2]
        g = q.shape[1] // kv_heads
        # gather each (row, head, page)'s packed bounds straight into [bs, h, P, 2d] order: one copy, no permute
        idx = (pages[:, None, :] * kv_heads + torch.arange(kv_heads, device=pages.device)[None, :, None]).reshape(-1)
        bounds = self._scratch("bounds", (bs * kv_heads, P, d2), kb.dtype)
        torch.index_select(kb.view(-1, d2), 0, idx, out=bounds.view(-1, d2))
        qf = q.to(kb.dtype).view(bs, kv_heads, g, -1)
        q2 = torch.cat([qf.clamp(min=0), (-qf).clamp(min=0)], dim=-1).view(bs * kv_heads, g, d2)  # [bs*h, g, 2d]
        u = torch.bmm(bounds, q2.transpose(1, 2))  # [bs*h, P, g]
        return u.view(bs, kv_heads, P, g).amax(dim=3).float() * sm_scale  # [bs, h, P] float32


def page_shares(u: torch.Tensor, valid: torch.Tensor, heads: str = "mean") -> torch.Tensor:
    """Steps 2-3 for one layer: softmax over valid pages per head, then mean (or `heads="max"`) over heads.

    u [bs, kv_heads, P] float; valid [bs, P] bool. Returns [bs, P] float32 (0 where not valid; rows with no valid
    page are all 0).
    """
    masked = u.masked_fill(~valid[:, None, :], float("-inf"))
    probs = torch.softmax(masked, dim=-1).nan_to_num(0.0)  # [bs, h, P]
    return probs.amax(dim=1) if heads == "max" else probs.mean(dim=1)
