"""Seam: radix-tree inserts, row frees and pool accounting that know about evicted pages (holes).

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache.checkpoint_into_tree(self, req, *, up_to)`,
  BEFORE: the one insert path for finish, running abort (it finishes with checkpoint=True) and chunked-prefill /
  prefill-end checkpoints. Caps `up_to` at the first hole (the tree page-floors it), so the tree never adopts an
  evicted slot nor frees one as a duplicate (I2), and at the first position computed under a prompt window or a
  page selection, so a later request (dense included) never reuses KV dense attention would not have produced. For an unfinished RaaS request it also caps at the prompt, so
  a retracted request's re-prefilled output stays private and can be trimmed back to its budget.
- `sglang.srt.mem_cache.base_prefix_cache.BasePrefixCache.free_kv_row(self, kv, ranges)`, AROUND: the only row
  free of every release path (finish, abort, discard, retraction). Cuts the holes out of each range, so an
  evicted page is never freed twice (I1). Holes are whole pages: the pieces stay page-aligned.
- `sglang.srt.mem_cache.common.release_kv_cache(req, tree_cache, *, checkpoint)`, AROUND: after the release,
  record the request's RaaS figures for its response and drop its row state.
- `sglang.srt.managers.scheduler_components.pool_stats_observer.kv_private_tokens(kv, page_size)`, AFTER: a row
  with holes holds `page_size` fewer tokens per hole, which keeps SGLang's strict busy check exact (I3).
"""

from __future__ import annotations

from raas_sglang.config import EVICTING
from raas_sglang.patches import reports, runtime
from raas_sglang.patches.requests import request_policy


def tree_cap(rt: runtime.Runtime, req, up_to: int) -> int:
    """How far the tree may take `req`'s KV: `up_to`, capped at its dense prefix (the first hole, or the first
    position computed under a window or a page selection: only KV dense attention would have produced is shared),
    and at the prompt while an evicting request is unfinished."""
    cap = up_to
    info = rt.row_of(req)
    if info is not None and info.raas and rt.state is not None:
        cap = min(cap, rt.state.dense_prefix(req.kv.req_pool_idx, up_to))
    if not req.finished() and request_policy(req, rt.config)[0] in EVICTING:
        cap = min(cap, max(len(req.origin_input_ids), req.kv.cache_protected_len))
    return cap


def checkpoint_into_tree(self, req, *args, up_to, **kwargs):
    rt = runtime.get()
    if rt is None:
        return None
    cap = tree_cap(rt, req, up_to)
    if cap == up_to:
        return None
    return (self, req, *args), {**kwargs, "up_to": cap}


def _cut(ranges, holes, ps):
    """Remove hole pages [p*ps, (p+1)*ps) from ascending half-open ranges."""
    out = []
    for start, end in ranges:
        cur = start
        for p in holes:
            lo, hi = p * ps, p * ps + ps
            if hi <= cur or lo >= end:
                continue
            if lo > cur:
                out.append((cur, lo))
            cur = max(cur, hi)
        if cur < end:
            out.append((cur, end))
    return out


def free_kv_row(orig, self, kv, ranges):
    rt = runtime.get()
    if rt is None or rt.row_of_kv(kv) is None:
        return orig(self, kv, ranges)
    holes = rt.holes(kv.req_pool_idx, max((end for _, end in ranges), default=0))
    if holes:
        ranges = _cut(list(ranges), holes, rt.config.page_size)
    return orig(self, kv, ranges)


def release_kv_cache(orig, req, tree_cache, *a, **kw):
    rt = runtime.get()
    row = req.kv.req_pool_idx
    info = rt.row_of(req) if rt is not None else None
    out = orig(req, tree_cache, *a, **kw)
    if info is not None:
        req.raas_report = reports.request_report(rt, row, info)  # read by the output streamer (patches/api.py)
        if not req.kv.holds_kv:
            from raas_sglang.patches import disaggregation, reprefill

            # NOTE: a request with input embeddings loses its output on retraction (SGLang): nothing to resume. A PD
            # decode server resumes from a host copy of the KV (patches/disaggregation.py), whatever its backend.
            from_host = disaggregation.decode_server()
            keep = not req.finished() and req.input_embeds is None and (from_host or reprefill.supported(rt))
            released = rt.release(row, keep=keep, always=from_host)
            # a retracted request comes back (re-prefill) as a new row: carry its figures over
            req.raas_carry = None if req.finished() else released
    return out


def kv_private_tokens(result, kv, page_size):
    rt = runtime.get()
    if rt is None or rt.row_of_kv(kv) is None:
        return result
    if kv.req_pool_idx in rt.reprefilling:  # restored holes may lie past what the re-prefill has allocated yet
        return result - len(rt.holes(kv.req_pool_idx, kv.kv_allocated_len)) * page_size
    return result - int(rt.state.host.evicted[kv.req_pool_idx]) * page_size


HOOKS = (
    (
        "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache.checkpoint_into_tree",
        checkpoint_into_tree,
        "BEFORE",
    ),
    ("sglang.srt.mem_cache.base_prefix_cache.BasePrefixCache.free_kv_row", free_kv_row, "AROUND"),
    ("sglang.srt.mem_cache.common.release_kv_cache", release_kv_cache, "AROUND"),
    (
        "sglang.srt.managers.scheduler_components.pool_stats_observer.kv_private_tokens",
        kv_private_tokens,
        "AFTER",
    ),
)
