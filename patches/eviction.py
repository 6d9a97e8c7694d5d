"""Physical eviction: the policy's victims are freed to SGLang's allocator before a decode step's allocation.

Called by `patches/schedule.py` (the `alloc_for_decode` seam) for the batch's rows whose next token opens a page,
and for a re-prefilled request's adopted decode pages. The decision itself is the core's (`RaasState.victims`,
dispatching to each row's policy).

Upstream symbols used (not hooked): `PagedTokenToKVPoolAllocator.free_page_ids(page_ids)` (sglang 0.5.23,
`mem_cache/allocator/paged.py`) and the request-to-token map `ReqToTokenPool.req_to_token`.
"""

from __future__ import annotations

from typing import Any

import torch

from raas_sglang.core import EMPTY, Victims
from raas_sglang.patches.runtime import Runtime


def evict(rt: Runtime, rows: torch.Tensor, positions: torch.Tensor, req_to_token: torch.Tensor, allocator: Any) -> int:
    """Evict before the step's allocation. rows/positions [n] int64 (the position of the token about to be
    written). Returns pages evicted.

    NOTE: each victim's slots are freed exactly once (free_page_ids does not dedupe, so a double free would show
    under SGLANG_DEBUG_MEMORY_POOL) and its row entries are pointed at the padding page 0, which the allocator
    never hands out, so no check or reader can mistake them for live KV.
    """
    victims = rt.state.victims(rows, positions)
    hit = victims.page != EMPTY  # [n] bool
    if not bool(hit.any()):
        return 0
    ps = rt.config.page_size
    v_rows, v_pages = rows[hit], victims.page[hit]  # [m]
    cols = v_pages[:, None] * ps + torch.arange(ps, device=rows.device)  # [m, ps] logical positions
    first_slots = req_to_token[v_rows, v_pages * ps].to(torch.int64)  # [m]
    free_pages(allocator, first_slots // ps)
    req_to_token[v_rows[:, None], cols] = 0
    rt.state.evict(Victims(v_rows, v_pages))
    n = int(hit.sum())
    rt.totals.evicted_pages += n
    if rt.metrics is not None:
        rt.metrics.raas_evicted_pages_total.labels(**rt.metrics.labels).inc(n)
    _trace(rt, v_rows, v_pages, positions[hit])
    return n


def free_pages(allocator: Any, page_ids: torch.Tensor) -> None:
    """Hand evicted pages back to SGLang's allocator. page_ids [m] int64 physical page ids."""
    allocator.free_page_ids(page_ids)


def _trace(rt: Runtime, rows: torch.Tensor, pages: torch.Tensor, positions: torch.Tensor) -> None:
    ps = rt.config.page_size
    for row, page, pos in zip(rows.tolist(), pages.tolist(), positions.tolist()):
        info = rt.rows.get(row)
        if info is not None and info.trace:
            info.trace_steps.append([pos, page * ps, page * ps + ps])
