"""Seam: a RaaS decode server of prefill/decode (PD) disaggregation resumes a retracted request within its bound.

A decode server (`--disaggregation-mode decode`) receives each request's prompt KV (and its first token) from a
dense prefill server into a row it pre-allocates (`DecodePreallocQueue._pre_alloc`); the request then decodes
through the ordinary `alloc_for_decode`, where RaaS admits the row (the transferred prompt pinned) and evicts, as
on a single server. What differs is retraction: under memory pressure the decode server copies the row's KV to
the host (`--disaggregation-decode-retraction-backup cpu_tensor`: `Req.offload_kv_cache`, hole positions read
the padding page), frees the row (holes cut out, `patches/radix.py`), and on resume pre-allocates the whole
sequence again and loads the copy back (`restore_kv_cache`). Stock, that would hold prompt + all output and bring
the evicted positions back with padding-page KV in them. Here the release keeps a snapshot of the row's RaaS
state (`Runtime.release(..., always=True)`), and the resume's pre-allocation takes only the pinned prompt pages
and the pages the row kept, maps the hole positions to the padding page (the host copy's values for them land
there, where nothing reads), and restores the snapshot on the new row: the request goes on with exactly the KV,
stamps and scores it had (no recompute), within its bound, and counts each eviction once.

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.disaggregation.decode.DecodePreallocQueue._alloc_for_decode_prealloc(self, allocator, *, req,
  fill_len, delta_len, prefix_len, total_prefix_len, prefix_indices, uses_swa_tail, swa_tail_len,
  req_to_token_pool)`, AROUND (scheduler processes; the scheduler imports that module anyway): the
  pre-allocation of a resumed request with a snapshot; every other request passes through. It returns the slot
  of each position `[0, fill_len)`, which `_pre_alloc` writes into the row.
Read: `sglang.srt.runtime_context.get_disagg().disaggregation_mode`; `PagedTokenToKVPoolAllocator.alloc` (whole
pages); `Req.raas_carry` (set by `patches/radix.py` at the retraction).
"""

from __future__ import annotations

import logging

import torch

from raas_sglang.holes import snapshot_holes
from raas_sglang.patches import runtime
from raas_sglang.patches.eviction import InvariantBroken

logger = logging.getLogger("raas_sglang")

MODULE = "sglang.srt.disaggregation.decode"


def decode_server() -> bool:
    """Whether this process is the decode side of PD disaggregation (a retraction there resumes from a host copy
    of the KV, not by recomputing it)."""
    from sglang.srt.runtime_context import get_disagg

    return str(get_disagg().disaggregation_mode).lower().endswith("decode")


def kept_pages(snap, page_size: int, fill_len: int) -> list[int]:
    """The logical pages a resumed row holds: its pinned prompt pages and the decode pages it kept, ascending,
    below the fill; every other page up to the fill must be a hole (else the snapshot does not match)."""
    n_pages = -(-fill_len // page_size)
    pinned = set(range(min(-(-snap.pin_len // page_size), n_pages)))
    resident = {p for p in snap.pages.tolist() if p >= 0}
    holes = set(snapshot_holes(snap, page_size))
    kept = pinned | resident
    if max(resident, default=-1) >= n_pages or set(range(n_pages)) != kept | holes or kept & holes:
        raise InvariantBroken(f"raas_sglang: a resumed row's snapshot (pinned {sorted(pinned)[-1:]}, resident "
                              f"{sorted(resident)}, holes {sorted(holes)}) does not cover its {fill_len} tokens")
    return sorted(kept)


def alloc_for_decode_prealloc(orig, self, allocator, **kw):
    rt = runtime.get()
    req = kw["req"]
    carry = getattr(req, "raas_carry", None)
    snap = carry.snapshot if carry is not None else None
    if rt is None or snap is None:
        return orig(self, allocator, **kw)
    if kw["prefix_len"] or kw["total_prefix_len"] or kw["uses_swa_tail"]:  # refused at startup / load
        raise InvariantBroken("raas_sglang: a resumed decode row with a tree prefix or a window tail")
    ps, fill_len = rt.config.page_size, kw["fill_len"]
    pages = kept_pages(snap, ps, fill_len)
    slots = allocator.alloc(len(pages) * ps)  # [len(pages) * ps] int64, page by page
    if slots is None:
        return None  # SGLang asserts "KV cache is full": its admission counted the whole fill
    req.kv.kv_allocated_len = fill_len
    n_pages = -(-fill_len // ps)
    loc = torch.arange(n_pages * ps, device=slots.device, dtype=slots.dtype) % ps  # [n_pages * ps]: page 0
    idx = torch.tensor(pages, device=slots.device, dtype=torch.int64)  # [k] logical pages kept
    loc.view(n_pages, ps)[idx] = slots.view(-1, ps)
    _resume(rt, self, req, carry, snap, allocator)
    logger.info("raas_sglang: request %s resumes on the decode server from its host copy: %d of %d pages "
                "allocated (%d evicted before)", req.rid, len(pages), n_pages, n_pages - len(pages))
    return loc[:fill_len]  # [fill_len] slot of each position


def _resume(rt: runtime.Runtime, queue, req, carry, snap, allocator) -> None:
    """Admit the resumed request's new row with its snapshot (it decodes next through `alloc_for_decode`, which
    finds the row admitted)."""
    from raas_sglang.patches.requests import request_policy

    row = req.kv.req_pool_idx
    rt.ensure_state(queue.req_to_token_pool.req_to_token)
    policy, budget_pages, trace = request_policy(req, rt.config)
    rt.admit(row, req.rid, snap.pin_len, policy, budget_pages, trace, carry=carry, kv=req.kv)
    rt.state.restore(row, snap)
    carry.snapshot = None
    free = allocator.available_size()
    if rt.totals.free_low_water is None or free < rt.totals.free_low_water:
        rt.totals.free_low_water = free


HOOKS = ((f"{MODULE}.DecodePreallocQueue._alloc_for_decode_prealloc", alloc_for_decode_prealloc, "AROUND"),)
