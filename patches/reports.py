"""What the runtime reports: a finished request's `meta_info["raas"]` and the scheduler's `raas` entry in
`/get_server_info` (both JSON-safe, read from the runtime's state and SGLang's allocator and tree). Called by
`patches/radix.py` (at a request's release) and `patches/api.py`. Hooks upstream: none."""

from __future__ import annotations

from raas_sglang.patches import swa_pool
from raas_sglang.patches.rows import RowInfo
from raas_sglang.patches.runtime import Runtime


def server_summary(rt: Runtime) -> dict:
    """The scheduler's `raas` entry in `/get_server_info` (JSON-safe). `free_tokens + evictable_tokens` equals
    the pool size when no request holds KV (no leak, I3)."""
    pool = {}
    if rt.allocator is not None:
        full = swa_pool.full_counts(rt.allocator)  # a hybrid sliding-window pool: its full-layer side
        pool = {
            "free_tokens": full.free,
            "evictable_tokens": int(rt.tree_cache.evictable_size()),
            "protected_tokens": int(rt.tree_cache.protected_size()),
            "pool_tokens": full.size,
        }
        swa = swa_pool.swa_counts(rt.allocator)
        if swa is not None:  # the window-layer side, SGLang's own (RaaS frees a victim's live twin with it)
            pool.update(swa_free_tokens=swa.free, swa_evictable_tokens=int(rt.tree_cache.swa_evictable_size()),
                        swa_pool_tokens=swa.size)
    return {
        **pool,
        **rt.config.to_dict(),
        "evicted_pages_total": rt.totals.evicted_pages,
        "resident_pages": rt.resident_pages(),
        "running_requests": len(rt.rows),
        "running_raas_requests": sum(1 for i in rt.rows.values() if i.raas),
        "admitted_raas_total": rt.totals.admitted_raas,
        "admitted_dense_total": rt.totals.admitted_dense,
        "decode_steps": rt.totals.decode_steps,
        "step_seconds": rt.totals.step_seconds,
        "raas_seconds": rt.totals.raas_seconds,
        "raas_seconds_by_part": dict(rt.totals.raas_parts),
        "exact_kernel_layer_calls": rt.totals.kernel_layer_calls,
        "kv_free_low_water_tokens": rt.totals.free_low_water,
        "key_bounds_bytes": 0 if rt.bounds is None else sum(kb.numel() * kb.element_size() for kb in rt.bounds.kb),
        "pool_tokens_before_bounds": None if rt.pool_plan is None else rt.pool_plan.tokens_before,
    }

def request_report(rt: Runtime, row: int, info: RowInfo) -> dict:
    """The request's `meta_info["raas"]`: JSON-safe."""
    out = {
        "policy": info.policy,
        "budget_tokens": int(rt.state.host.limit[row]) * rt.config.page_size if info.raas else None,
        "evicted_pages": int(rt.state.host.evicted[row]),
        "peak_kv_tokens": rt.peak_of(row),
        # resumptions after a retraction that recomputed only the pinned prompt and the kept pages (I4 held)
        "bounded_reprefills": info.bounded_reprefills,
    }
    if info.trace:
        out["trace"] = info.trace_steps
        out["kv_free"] = info.kv_free
        if info.reprefills:
            out["reprefills"] = info.reprefills
    return out
