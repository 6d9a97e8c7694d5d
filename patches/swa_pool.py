"""Seam: the hybrid sliding-window KV pool (gpt-oss's default: `SWAKVPool` + `SWATokenToKVPoolAllocator`).

Full layers and window layers keep their KV in two pools; every full slot of a live token has an SWA twin, found
through `allocator.full_to_swa_index_mapping` (0: none). SGLang frees a request's SWA twins once they leave the
window (its "sweep": a per-row cursor, `req.kv.get_evicted_seqlen(SWA)`), the full slots when the row is released.
RaaS evicts a page of the full side (its policy's victim) together with its SWA twin if that twin is still live
(`free_victims`, called by `eviction.free_pages`: the twins the mapping still holds, then the full slots). From
then on the page is a hole (slot 0 in `req_to_token`), which SGLang's own sweep and release must step over.

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.mem_cache.common.free_swa_out_of_window_slots(req, pre_len, *, ..., free_segment=None)`, AROUND
  (also bound by name in `mem_cache/unified_cache/components/swa.py`; the registry rebinds it): the sweep frees
  `req_to_token[row, cursor:new)` with `free_swa_segment`, which trips `swa.peer_mapped` on a hole (its slot 0 has
  no twin). For a RaaS row it gets a `free_segment` that frees the pieces between the holes (I1); the holes are
  read only when the sweep frees something.
- `sglang.srt.managers.scheduler_components.pool_stats_observer.kv_private_swa_tokens(kv, page_size)`, AFTER: a
  hole's SWA twin was freed by RaaS unless the cursor had already passed it, so `page_size` fewer SWA tokens per
  hole outside `[swa_dead_lo, cursor)` keeps SGLang's strict busy check exact (I3).
Release (`BasePrefixCache.free_kv_row`) needs nothing more than `patches/radix.py`'s hole cut: what is left of
`[swa_dead_lo, cursor)` is freed full-side only (twins swept), the rest both sides (twins live).

Upstream symbols read: `SWATokenToKVPoolAllocator.free_swa`, `.free_full`, `.full_to_swa_index_mapping`,
`.full_available_size()`, `.size_full`, `.swa_available_size()`, `.size_swa`; `ReqKvInfo.get_evicted_seqlen`,
`.swa_dead_lo(page_size)`; `SWAKVPool.full_kv_pool`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from raas_sglang.patches import runtime


def is_hybrid(allocator: Any) -> bool:
    """Whether `allocator` is SGLang's hybrid sliding-window allocator (two pools, one mapping)."""
    return getattr(allocator, "full_to_swa_index_mapping", None) is not None


class PoolCounts(NamedTuple):
    """The full-attention side of SGLang's pool, in tokens: what RaaS bounds (on one pool, the pool itself)."""

    free: int
    size: int


def full_counts(allocator: Any) -> PoolCounts:
    """Free and total tokens of the pool RaaS manages: the full-layer pool of a hybrid allocator (its
    `available_size()` is the smaller of the two sides, the window side SGLang's own), else the pool."""
    if is_hybrid(allocator):
        return PoolCounts(int(allocator.full_available_size()), int(allocator.size_full))
    return PoolCounts(int(allocator.available_size()), int(allocator.size))


def swa_counts(allocator: Any) -> PoolCounts | None:
    """Free and total tokens of a hybrid allocator's window-layer pool (None on one pool)."""
    if not is_hybrid(allocator):
        return None
    return PoolCounts(int(allocator.swa_available_size()), int(allocator.size_swa))


def free_victims(allocator: Any, first_slots: torch.Tensor, page_size: int) -> None:
    """Free whole victim pages of a hybrid allocator, their SWA twins with them. first_slots [m] int64.

    NOTE: only the twins still mapped are freed (a live victim; `free_swa` clears their mapping); a twin SGLang's
    sweep already freed reads 0 and is left alone (at page size 1 `free_swa` would hand the window pool's padding
    slot 0 back otherwise). The full slots go back after, their mapping 0 as `free_full` demands."""
    slots = (first_slots[:, None] + torch.arange(page_size, device=first_slots.device)).reshape(-1)  # [m * ps]
    live = slots[allocator.full_to_swa_index_mapping[slots] > 0]  # [<= m * ps] the slots whose twin is live
    allocator.free_swa(live)
    allocator.free_full(slots)


def window_mapping(pool: Any) -> torch.Tensor | None:
    """The full -> window slot mapping `[full slots + ps + 1]` int64 of a hybrid pool (0: no twin); None on one
    pool, whose window layers read the slots themselves."""
    return getattr(pool, "full_to_swa_index_mapping", None)


def map_padding_page(allocator: Any, page_size: int) -> None:
    """Map the padding page's last slot to the window pool's (a hybrid allocator; else nothing).

    NOTE: a re-prefill run that starts after a hole has `last_loc` = that hole's last entry, the padding slot
    ps - 1; SGLang's paged `alloc_extend` checks `(last_loc + 1) % ps == prefix_len % ps` on both sides, and the
    window side reads `mapping[ps - 1]`, 0 until now. The padding page is never allocated nor freed on either side,
    so pointing it at the other padding page changes no slot's owner."""
    if is_hybrid(allocator):
        allocator.full_to_swa_index_mapping[page_size - 1] = page_size - 1


def _cut_segment(rt: runtime.Runtime, row: int, free_segment):
    """`free_segment` for one sweep of `row`: frees the pieces of the range between the row's holes. NOTE: the holes
    are read only when the sweep frees something (about once a page), not on each step's call."""
    from raas_sglang.patches.radix import _cut

    def free_between_holes(free_index, *, start_pos):
        end = start_pos + int(free_index.numel())
        for lo, hi in _cut([(start_pos, end)], rt.holes(row, end), rt.config.page_size):
            free_segment(free_index[lo - start_pos:hi - start_pos], start_pos=lo)

    return free_between_holes


def free_swa_out_of_window_slots(orig, req, pre_len, *args, **kwargs):
    rt = runtime.get()
    if rt is None or not req.kv.holds_kv or rt.row_of_kv(req.kv) is None:
        return orig(req, pre_len, *args, **kwargs)
    base = kwargs.get("free_segment")
    if base is None:
        from sglang.srt.mem_cache.unified_cache.component_type import ComponentType  # noqa: PLC0415

        if kwargs.get("component_type", ComponentType.SWA) != ComponentType.SWA:
            return orig(req, pre_len, *args, **kwargs)  # upstream's own assertion speaks
        base = kwargs["token_to_kv_pool_allocator"].free_swa_segment
    kwargs["free_segment"] = _cut_segment(rt, req.kv.req_pool_idx, base)
    return orig(req, pre_len, *args, **kwargs)


def kv_private_swa_tokens(result, kv, page_size):
    rt = runtime.get()
    if rt is None or rt.row_of_kv(kv) is None:
        return result
    row = kv.req_pool_idx
    if row not in rt.reprefilling and not rt.state.host.evicted[row]:  # NOTE: the host mirror: no hole, no read
        return result
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType  # noqa: PLC0415

    dead_lo, cursor = kv.swa_dead_lo(page_size), kv.get_evicted_seqlen(ComponentType.SWA)
    holes = rt.holes(row, kv.kv_allocated_len)
    live = sum(1 for p in holes if not dead_lo <= p * page_size < cursor)  # twins RaaS freed itself
    return result - live * page_size


HOOKS = (
    ("sglang.srt.mem_cache.common.free_swa_out_of_window_slots", free_swa_out_of_window_slots, "AROUND"),
    (
        "sglang.srt.managers.scheduler_components.pool_stats_observer.kv_private_swa_tokens",
        kv_private_swa_tokens,
        "AFTER",
    ),
)
