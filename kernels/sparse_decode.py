"""Kernel (c): decode attention over a compacted per-request list of resident KV slots, also emitting each
resident page's attention mass (exact page scores from the attention pass, no extra KV read), with a torch
reference.

Inputs (SGLang's ragged layout):
  q          [bs, q_heads, head_dim]          this step's queries (RoPE applied)
  k_buf      [num_slots, kv_heads, head_dim]  the KV pool of one layer; v_buf likewise
  kv_indptr  [bs + 1] int64                   row b attends to kv_indices[kv_indptr[b]:kv_indptr[b+1]]
  kv_indices [nnz] int64                      resident KV slots, ascending logical position, page by page
Outputs:
  out        [bs, q_heads, head_dim]          softmax(q K^T * sm_scale) V over the resident slots
  page_mass  [bs, max_pages] float32          mean over query heads of the probability mass of each resident
                                              page; page j of row b = its list entries [j*ps, (j+1)*ps)
NOTE: the resident list of a row is whole pages except possibly the last one (pinned prompt pages, resident
decode pages, the partial page being written), so list index // page_size is the page ordinal.

Kernel A (grid bs x q_heads) runs the online-softmax decode and saves each logit and the row's (max, sum);
kernel B (grid bs x max_pages) turns saved logits into page mass — it reads logits, never K or V.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def sparse_decode_ref(q, k_buf, v_buf, kv_indptr, kv_indices, sm_scale: float, page_size: int):
    bs, q_heads, d = q.shape
    kv_heads = k_buf.shape[1]
    g = q_heads // kv_heads
    lens = (kv_indptr[1:] - kv_indptr[:-1]).tolist()
    max_pages = max([-(-n // page_size) for n in lens] + [0])
    out = torch.zeros_like(q, dtype=torch.float32)
    mass = torch.zeros((bs, max_pages), dtype=torch.float32, device=q.device)
    for b in range(bs):
        idx = kv_indices[kv_indptr[b] : kv_indptr[b + 1]]
        if idx.numel() == 0:
            continue
        k = k_buf[idx].float().repeat_interleave(g, dim=1)  # [n, q_heads, d]
        v = v_buf[idx].float().repeat_interleave(g, dim=1)
        p = torch.softmax(torch.einsum("hd,nhd->hn", q[b].float(), k) * sm_scale, dim=-1)  # [q_heads, n]
        out[b] = torch.einsum("hn,nhd->hd", p, v)
        n = idx.numel()
        pages = torch.arange(n, device=q.device) // page_size
        mass[b, : pages[-1] + 1] = torch.zeros(int(pages[-1]) + 1, device=q.device).index_add_(0, pages, p.mean(0))
    return out, mass


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, indptr_ptr, indices_ptr, out_ptr, logit_ptr, m_ptr, l_ptr, sm_scale, max_len,
    Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    hq = tl.program_id(1)
    h = hq // (Q_HEADS // KV_HEADS)
    start = tl.load(indptr_ptr + b)
    n = tl.load(indptr_ptr + b + 1) - start
    offs_d = tl.arange(0, D)
    qv = tl.load(q_ptr + (b * Q_HEADS + hq) * D + offs_d).to(tl.float32)
    m = float("-inf")
    l = 0.0
    acc = tl.zeros([D], tl.float32)
    for s0 in range(0, n, BLOCK_N):
        offs = s0 + tl.arange(0, BLOCK_N)
        mask = offs < n
        slot = tl.load(indices_ptr + start + offs, mask=mask, other=0)
        kv_off = (slot[:, None] * KV_HEADS + h) * D + offs_d[None, :]
        k = tl.load(k_ptr + kv_off, mask=mask[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * qv[None, :], axis=1) * sm_scale
        s = tl.where(mask, s, float("-inf"))
        tl.store(logit_ptr + (b * Q_HEADS + hq) * max_len + offs, s, mask=mask)
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new)
        v = tl.load(v_ptr + kv_off, mask=mask[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        l = l * alpha + tl.sum(p, axis=0)
        m = m_new
    safe_l = tl.where(l > 0, l, 1.0)
    tl.store(out_ptr + (b * Q_HEADS + hq) * D + offs_d, acc / safe_l)
    tl.store(m_ptr + b * Q_HEADS + hq, m)
    tl.store(l_ptr + b * Q_HEADS + hq, safe_l)


@triton.jit
def _page_mass_kernel(
    logit_ptr, m_ptr, l_ptr, indptr_ptr, mass_ptr, max_len, max_pages, page_size,
    Q_HEADS: tl.constexpr, BLOCK_PS: tl.constexpr,
):
    b = tl.program_id(0)
    j = tl.program_id(1)
    n = tl.load(indptr_ptr + b + 1) - tl.load(indptr_ptr + b)
    offs = j * page_size + tl.arange(0, BLOCK_PS)
    mask = (tl.arange(0, BLOCK_PS) < page_size) & (offs < n)
    total = 0.0
    for hq in range(Q_HEADS):
        s = tl.load(logit_ptr + (b * Q_HEADS + hq) * max_len + offs, mask=mask, other=float("-inf"))
        m = tl.load(m_ptr + b * Q_HEADS + hq)
        l = tl.load(l_ptr + b * Q_HEADS + hq)
        total += tl.sum(tl.where(mask, tl.exp(s - m), 0.0), axis=0) / l
    tl.store(mass_ptr + b * max_pages + j, total / Q_HEADS)


def sparse_decode(q, k_buf, v_buf, kv_indptr, kv_indices, sm_scale: float, page_size: int, block_n: int = 32):
    """Triton version of `sparse_decode_ref` (same arguments, same results)."""
    bs, q_heads, d = q.shape
    kv_heads = k_buf.shape[1]
    lens = kv_indptr[1:] - kv_indptr[:-1]
    max_len = int(lens.max()) if bs else 0
    max_pages = -(-max_len // page_size)
    out = torch.empty((bs, q_heads, d), dtype=torch.float32, device=q.device)
    mass = torch.zeros((bs, max_pages), dtype=torch.float32, device=q.device)
    if bs == 0 or max_len == 0:
        return out.zero_(), mass
    logits = torch.empty((bs, q_heads, max_len), dtype=torch.float32, device=q.device)
    m = torch.empty((bs, q_heads), dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    _decode_kernel[(bs, q_heads)](
        q.contiguous(), k_buf, v_buf, kv_indptr, kv_indices, out, logits, m, l, sm_scale, max_len,
        Q_HEADS=q_heads, KV_HEADS=kv_heads, D=d, BLOCK_N=block_n,
    )
    _page_mass_kernel[(bs, max_pages)](
        logits, m, l, kv_indptr, mass, max_len, max_pages, page_size,
        Q_HEADS=q_heads, BLOCK_PS=triton.next_power_of_2(page_size),
    )
    return out, mass


__all__ = ["sparse_decode", "sparse_decode_ref"]
