"""Kernel (a): fold newly written keys into their pages' key min/max (Quest metadata), with a torch reference.

Shapes: kmin, kmax [num_pages, kv_heads, head_dim] float32; slots [n] int64 (KV slots just written; page of a
slot = slot // page_size); k [n, kv_heads, head_dim]. A token at page offset 0 starts its page, so that page's
bounds are reset first (a freed page is reused by another request; the paged allocator fills from offset 0).
Two launches (reset, then fold with atomics) so tokens of one page written in the same batch (prefill) never
race with the reset.
"""

from __future__ import annotations

import triton
import triton.language as tl


def page_bounds_update_ref(kmin, kmax, slots, k, page_size: int) -> None:
    if slots.numel() == 0:
        return
    page = slots // page_size
    fresh = page[slots % page_size == 0]
    kmin[fresh] = float("inf")
    kmax[fresh] = float("-inf")
    idx = page[:, None, None].expand_as(k)
    kmin.scatter_reduce_(0, idx, k.to(kmin.dtype), reduce="amin", include_self=True)
    kmax.scatter_reduce_(0, idx, k.to(kmax.dtype), reduce="amax", include_self=True)


@triton.jit
def _reset_kernel(kmin_ptr, kmax_ptr, slots_ptr, page_size, row: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    slot = tl.load(slots_ptr + i)
    offs = tl.arange(0, BLOCK)
    mask = (offs < row) & (slot % page_size == 0)
    base = (slot // page_size) * row
    tl.store(kmin_ptr + base + offs, tl.full([BLOCK], float("inf"), tl.float32), mask=mask)
    tl.store(kmax_ptr + base + offs, tl.full([BLOCK], float("-inf"), tl.float32), mask=mask)


@triton.jit
def _fold_kernel(kmin_ptr, kmax_ptr, slots_ptr, k_ptr, page_size, row: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    slot = tl.load(slots_ptr + i)
    offs = tl.arange(0, BLOCK)
    mask = offs < row
    key = tl.load(k_ptr + i * row + offs, mask=mask, other=0.0).to(tl.float32)
    base = (slot // page_size) * row
    tl.atomic_min(kmin_ptr + base + offs, key, mask=mask)
    tl.atomic_max(kmax_ptr + base + offs, key, mask=mask)


def page_bounds_update(kmin, kmax, slots, k, page_size: int) -> None:
    """Triton version of `page_bounds_update_ref` (same arguments, same result)."""
    n = slots.numel()
    if n == 0:
        return
    row = kmin.shape[1] * kmin.shape[2]
    block = triton.next_power_of_2(row)
    slots = slots.contiguous()
    k = k.reshape(n, row).contiguous()
    _reset_kernel[(n,)](kmin, kmax, slots, page_size, row=row, BLOCK=block)
    _fold_kernel[(n,)](kmin, kmax, slots, k, page_size, row=row, BLOCK=block)


__all__ = ["page_bounds_update", "page_bounds_update_ref"]

