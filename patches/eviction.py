"""Physical eviction: the policy's victims are freed to SGLang's allocator before a decode step's allocation.

Called by `patches/schedule.py` (the `alloc_for_decode` seam) for the batch's rows whose next token opens a page,
and for a re-prefilled request's adopted decode pages. The decision itself is the core's (`RaasState.victims`,
dispatching to each row's policy).

Upstream symbols used (not hooked): `PagedTokenToKVPoolAllocator.free_page_ids(page_ids)` (sglang 0.5.23,
`mem_cache/allocator/paged.py`; a hybrid sliding-window allocator frees through `patches/swa_pool.py`) and the
request-to-token map `ReqToTokenPool.req_to_token`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch

from raas_sglang.core import EMPTY
from raas_sglang.host import HostBatch, to_device
from raas_sglang.patches import swa_pool
from raas_sglang.patches.runtime import Runtime

logger = logging.getLogger("raas_sglang")


class InvariantBroken(RuntimeError):
    """The plugin was about to corrupt SGLang's pool (e.g. free the padding page 0); nothing was freed."""


class Evicted(NamedTuple):
    """What one `evict` call did: pages handed back to the allocator, and the rows found broken (a victim whose
    slots were already gone: each such request must be aborted by the caller)."""

    pages: int
    lost_rows: list[int]


def evict(rt: Runtime, rows: torch.Tensor, positions: torch.Tensor, req_to_token: torch.Tensor,
          allocator: Any, host: HostBatch | None = None) -> Evicted:
    """Evict before the step's allocation. rows/positions [n] int64 (the position of the token about to be
    written); `host`: the same on the host (else read back).

    NOTE: each victim's slots are freed exactly once (free_page_ids does not dedupe, so a double free would show
    under SGLANG_DEBUG_MEMORY_POOL) and its row entries are pointed at the padding page 0, which the allocator
    never hands out, so no check or reader can mistake them for live KV. A victim whose first slot already lies
    in page 0 was handed back before (a broken invariant): it is never freed again, it leaves the row's state as
    a hole (so the row's release does not free it either), and its row is returned in `lost_rows`.
    NOTE: which rows evict is known on the host (`HostMirror.must_evict`); the one sync of an evicting step reads
    how many victims were found and how many were lost, together.
    """
    victims = rt.state.victims(rows, positions, host)
    if not victims.need.any():
        return Evicted(0, [])
    ps = rt.config.page_size
    idx = to_device(np.flatnonzero(victims.need), rows.device)  # [m] int64
    v_rows, v_pages = rows[idx], victims.page[idx]  # [m]
    found = v_pages != EMPTY  # [m] bool
    first_slots = req_to_token[v_rows, v_pages.clamp(min=0) * ps].to(torch.int64)  # [m]
    lost = found & (first_slots < ps)  # [m] bool: the slot is in the padding page 0
    n_found, n_lost = torch.stack([found.sum(), lost.sum()]).tolist()  # NOTE: the one sync of an evicting step
    if n_found != len(v_rows):
        raise InvariantBroken(f"raas_sglang: {len(v_rows) - n_found} rows at their page limit found no page to "
                              "evict (their policy protected every candidate)")
    lost_rows = v_rows[lost].tolist() if n_lost else []
    if lost_rows:
        logger.error("raas_sglang: request rows %s: the page chosen for eviction was already handed back to the "
                     "allocator (its slots point at the padding page); not freeing it again", lost_rows)
    if n_lost:  # the rare broken case: drop the lost rows from what is freed (boolean masks: syncs)
        v_rows, v_pages, first_slots = v_rows[~lost], v_pages[~lost], first_slots[~lost]
    if len(v_rows):
        free_pages(allocator, first_slots // ps, known_nonzero=True)
        cols = v_pages[:, None] * ps + torch.arange(ps, device=rows.device)  # [m', ps] logical positions
        req_to_token[v_rows[:, None], cols] = 0
    rt.state.evict(victims)  # NOTE: lost rows too: their page becomes a hole
    n = len(v_rows)
    rt.totals.evicted_pages += n
    if rt.metrics is not None:
        rt.metrics.raas_evicted_pages_total.labels(**rt.metrics.labels).inc(n)
    if rt.traced:
        _trace(rt, v_rows, v_pages, positions[idx][~lost] if n_lost else positions[idx])
    return Evicted(n, lost_rows)


def free_pages(allocator: Any, page_ids: torch.Tensor, known_nonzero: bool = False) -> None:
    """Hand evicted pages back to SGLang's allocator. page_ids [m] int64 physical page ids.

    NOTE: page 0 is SGLang's padding page, never owned by a request; freeing it would put it in the free list and
    hand it to a request later, so it is refused outright (fail closed: nothing is freed). `known_nonzero`: the
    caller has proven none is (`evict`: a victim in page 0 is a lost page, never freed), so the check's sync is
    skipped."""
    if not known_nonzero and bool((page_ids == 0).any()):
        raise InvariantBroken(f"raas_sglang: refusing to free the padding page 0 (pages {page_ids.tolist()})")
    if swa_pool.is_hybrid(allocator):  # NOTE: whole pages, with their live SWA twins (patches/swa_pool.py);
        # set-shaped frees there: SGLang's `free` dedupes pages (torch.unique), a sync more per evicting step
        ps = int(allocator.page_size)
        swa_pool.free_victims(allocator, page_ids * ps, ps)
    else:
        allocator.free_page_ids(page_ids)


def _trace(rt: Runtime, rows: torch.Tensor, pages: torch.Tensor, positions: torch.Tensor) -> None:
    ps = rt.config.page_size
    for row, page, pos in zip(rows.tolist(), pages.tolist(), positions.tolist()):
        info = rt.rows.get(row)
        if info is not None and info.trace:
            info.trace_steps.append([pos, page * ps, page * ps + ps])
