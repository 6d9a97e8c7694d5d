"""Batched decode attention over each request's resident KV slots, with the exact attention mass of every slot.

Pure torch (no SGLang): the CPU (torch-native) RaaS decode path. One gather of the resident K and V of the whole
batch into reused buffers, two batched matmuls and a softmax, instead of a Python loop of per-request gathers;
the softmax probabilities it computes anyway give RaaS its page scores at no extra KV read (the paper's scores).

Shapes: q [bs, q_heads, d]; k_cache / v_cache [num_slots, kv_heads, d] (one layer of SGLang's pool);
slots [bs, n_max] int64 resident KV slots per row (ascending logical position; entries past n[b] are ignored);
n [bs] int64 (>= 1).
"""

from __future__ import annotations

import torch


class ResidentDecode:
    """`plan` once per decode step (shared by all layers), then call once per layer."""

    def __init__(self):
        self._buf: dict[str, torch.Tensor] = {}
        self.gidx: torch.Tensor | None = None  # [bs * kv_heads * n_max] int64 rows of k_cache.view(-1, d)
        self.bias: torch.Tensor | None = None  # [bs, 1, n_max] float32: 0 for resident slots, -inf for padding
        self.shape = (0, 0, 0)  # (bs, kv_heads, n_max)

    def plan(self, slots: torch.Tensor, n: torch.Tensor, kv_heads: int) -> None:
        bs, n_max = slots.shape
        heads = torch.arange(kv_heads, device=slots.device)
        self.gidx = (slots[:, None, :] * kv_heads + heads[None, :, None]).reshape(-1)  # [bs * h * n_max]
        cols = torch.arange(n_max, device=slots.device)
        self.bias = torch.zeros((bs, 1, n_max), dtype=torch.float32, device=slots.device)
        self.bias.masked_fill_((cols[None, :] >= n[:, None])[:, None, :], float("-inf"))
        self.shape = (bs, kv_heads, n_max)

    def _gather(self, name: str, cache: torch.Tensor) -> torch.Tensor:
        bs, h, n_max = self.shape
        d = cache.shape[-1]
        size = bs * h * n_max * d
        buf = self._buf.get(name)
        if buf is None or buf.numel() < size or buf.dtype != cache.dtype:
            buf = torch.empty(size, dtype=cache.dtype, device=cache.device)
            self._buf[name] = buf
        out = buf[:size].view(bs * h * n_max, d)
        torch.index_select(cache.reshape(-1, d), 0, self.gidx, out=out)
        return out.view(bs * h, n_max, d)

    def __call__(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sm_scale: float,
        keep: torch.Tensor | None = None,
    ):
        """Returns (out [bs, q_heads, dv] in q's dtype, probs [bs, q_heads, n_max] float32 = each head's
        attention probability of each slot; 0 on padding). `keep` [bs, n_max] bool: this layer attends only to
        the slots it marks (Quest selection)."""
        bs, h, n_max = self.shape
        q_heads = q.shape[1]
        g = q_heads // h
        k = self._gather("k", k_cache)  # [bs*h, n_max, d]
        v = self._gather("v", v_cache)  # [bs*h, n_max, dv]
        qf = q.reshape(bs * h, g, q.shape[-1]).to(k.dtype)
        logits = torch.bmm(qf, k.transpose(1, 2)).float().view(bs, q_heads, n_max)  # [bs, hq, n_max]
        logits.mul_(sm_scale).add_(self.bias)
        if keep is not None:
            logits.masked_fill_(~keep[:, None, :], float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # [bs, hq, n_max]
        out = torch.bmm(probs.view(bs * h, g, n_max).to(v.dtype), v)  # [bs*h, g, dv]
        return out.view(bs, q_heads, -1).to(q.dtype), probs
