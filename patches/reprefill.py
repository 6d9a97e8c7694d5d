"""Seam: a retracted request that had evicted pages resumes with exactly what it held, recomputing only that.

SGLang re-prefills a retracted request's whole prompt + output, exactly when memory is short. For a row with holes,
`Runtime.release` keeps a snapshot of its state (pages, stamps, scores, holes); the request resumes by recomputing
only its pinned prompt and resident pages, at their logical positions, as extend chunks that skip the holes
(`holes.reprefill_runs`), and the snapshot is restored on its new row: it holds no more than when retracted (I4),
keeps its stamps and counts each eviction once. Each recomputed token attends to the prompt and the kept pages
before it; `meta_info.raas.reprefills` records `[seq_len, trace entries before it]` per resumption so the Hugging
Face reference can replay those masks (tests/raas_helpers.py).

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.managers.schedule_batch.Req._compute_max_prefix_len(self, input_len)`, AROUND: a resuming request
  matches the tree only inside its pinned prompt (tree KV past it would not be ours: full-causal, no holes).
- `sglang.srt.managers.schedule_policy.PrefillAdder._select_prefill_admission`: through `patches/admission.py`
  (`admission`): the first chunk ends with the first run; no second chunked request starts while one is chunked
  (SGLang tracks one).
- `sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req_ignore_eos(self, req)`, AROUND: that admission
  path (`ignore_eos`, tree disabled) cannot cut chunks: a resuming request falls back to the full re-prefill there,
  and nothing is admitted beside a re-prefill in flight.
- `sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req(self, req)`, AROUND: before each later chunk,
  step over the holes (their row entries point at the padding page 0, `prefix_len` moves past them) and cap the
  chunk at the end of the current run (`chunked_req_limit`, set inside: the scheduler overwrites it just before).
- `sglang.srt.mem_cache.allocation.alloc_for_extend(batch)`, AROUND: after the first chunk's allocation, admit
  the row with its snapshot; before the chunk that opens the last position's page, evict as a decode step would;
  after every allocation, the allocator's low-water mark and the row's peak (I4 covers re-prefills).
- the extend attention of a resuming row skips its hole entries: `patches/reprefill_attention.py`.
Other prefill backends (flashinfer) keep SGLang's full re-prefill, trimmed after it (no snapshot is kept).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from raas_sglang.holes import reprefill_runs, snapshot_holes
from raas_sglang.patches import eviction, runtime, swa_pool

logger = logging.getLogger("raas_sglang")
SUPPORTED_PREFILL = ("torch_native", "triton")


def supported(rt: runtime.Runtime) -> bool:
    """Whether this server's prefill backend can skip holes (read once from the resolved backends)."""
    if rt.reprefill_ok is None:
        from sglang.srt.runtime_context import attention_backends

        rt.reprefill_ok = attention_backends()[0] in SUPPORTED_PREFILL
    return rt.reprefill_ok


def _snapshot_of(req):
    carry = getattr(req, "raas_carry", None)
    return carry.snapshot if carry is not None else None


def _resuming(rt: runtime.Runtime, req) -> runtime.Reprefill | None:
    row = req.kv.req_pool_idx
    rp = rt.reprefilling.get(row) if row is not None else None
    return rp if rp is not None and rp.kv is req.kv else None


# -- the tree match ----------------------------------------------------------------------------------------------

def compute_max_prefix_len(orig, self, input_len):
    out = orig(self, input_len)
    snap = _snapshot_of(self)
    return out if snap is None else max(0, min(out, snap.pin_len - 1))


# -- admission -------------------------------------------------------------------------------------------------

def admission(adder, req, result, has_chunked_req: bool):
    """`_select_prefill_admission`'s result, adjusted: a resuming request's first chunk ends at its first run's end;
    and while a re-prefill is chunked, no second chunked request starts (SGLang tracks one at a time; stock never
    meets the case, because a continuing chunk takes the whole chunk budget, which a re-prefill chunk need not)."""
    from sglang.srt.managers.schedule_policy import AddReqResult, _PrefillAdmission

    if not isinstance(result, _PrefillAdmission):
        return result
    end = _first_run_end(runtime.get(), req)
    if end is not None and not (result.is_chunked and result.prefix_len + result.extend_len <= end):
        result = dataclasses.replace(result, extend_len=end - result.prefix_len, max_new_tokens=0, is_chunked=True)
    # NOTE: unconditional: stock SGLang never gets here (a continuing chunk or a first chunk leaves no budget)
    if result.is_chunked and (has_chunked_req or adder.new_chunked_req is not None):
        return AddReqResult.OTHER
    return result


def _first_run_end(rt: runtime.Runtime, req) -> int | None:
    """Where a resuming request's first chunk ends; None (and the snapshot dropped: SGLang's full re-prefill and
    the trim take over) when it cannot resume from its snapshot (nothing to skip, e.g. its fill shrank)."""
    snap = _snapshot_of(req)
    if snap is None:
        return None
    ps, n = rt.config.page_size, len(req.full_untruncated_fill_ids)
    holes = snapshot_holes(snap, ps)
    end = reprefill_runs(snap.pin_len, ps, holes, n)[0][1]
    if not holes or holes[-1] * ps + ps > n or end >= n:
        req.raas_carry.snapshot = None
        return None
    return end


def skipped_tokens(rt: runtime.Runtime, req) -> int:
    """Tokens a resuming request's re-prefill will not compute (its holes): the admission budget leaves them out."""
    snap = _snapshot_of(req)
    if snap is None:
        return 0
    return rt.config.page_size * len(snapshot_holes(snap, rt.config.page_size))


def add_one_req_ignore_eos(orig, self, req, *args, **kwargs):
    """SGLang's other admission path (`ignore_eos` with the tree disabled) neither cuts chunks nor knows about a
    re-prefill in flight: a resuming request takes the full re-prefill there, and no request is chunked beside a
    re-prefill."""
    from sglang.srt.managers.schedule_policy import AddReqResult

    rt = runtime.get()
    if rt is not None and _snapshot_of(req) is not None:
        req.raas_carry.snapshot = None
    if rt is not None and rt.reprefilling:
        return AddReqResult.OTHER
    return orig(self, req, *args, **kwargs)


def add_chunked_req(orig, self, req):
    rt = runtime.get()
    rp = _resuming(rt, req) if rt is not None else None
    if rp is None:
        return orig(self, req)
    _skip_holes(rt, req, rp)
    cap = rp.runs[0][1] - req.prefix_len
    self.chunked_req_limit = cap if self.chunked_req_limit is None else min(self.chunked_req_limit, cap)
    unchunked = self.rem_chunk_tokens is None
    if unchunked:  # chunked prefill off: SGLang's continuation needs a chunk budget
        self.rem_chunk_tokens = cap
    try:
        return orig(self, req)
    finally:
        if unchunked:
            self.rem_chunk_tokens = None


def _skip_holes(rt: runtime.Runtime, req, rp: runtime.Reprefill) -> None:
    """Drop finished runs; if the next run starts past `prefix_len`, the tokens between are holes: point their row
    entries at the padding page (slots 0..ps-1, so SGLang's `last_loc` check holds) and move `prefix_len` on."""
    while rp.runs and rp.runs[0][1] <= req.prefix_len:
        rp.runs.pop(0)
    start = rp.runs[0][0]
    if start > req.prefix_len:
        ps = rt.config.page_size
        row = req.kv.req_pool_idx
        req_to_token = rt.req_to_token
        n = start - req.prefix_len
        # NOTE: holes are whole pages, so the padding slots repeat page 0 exactly
        req_to_token[row, req.prefix_len:start] = torch.arange(n, device=req_to_token.device, dtype=req_to_token.dtype) % ps
        swa_pool.map_padding_page(rt.allocator, ps)  # the window side's `last_loc` check too (a hybrid pool)
        req.prefix_len = start


# -- allocation ------------------------------------------------------------------------------------------------

def alloc_for_extend(orig, batch):
    rt = runtime.get()
    if rt is None or (not rt.reprefilling and not any(_snapshot_of(r) is not None for r in batch.reqs)):
        return orig(batch)
    opening = _evict_before(rt, batch)
    out = orig(batch)
    req_to_token = batch.req_to_token_pool.req_to_token
    for req in batch.reqs:
        if _snapshot_of(req) is not None and req.kv.req_pool_idx is not None:
            end = _first_run_end(rt, req)
            if end is not None and req.extend_end <= end:
                _restore(rt, batch, req)
            elif end is not None:  # the cut was not honoured: no resumption (the trim at the first decode step)
                req.raas_carry.snapshot = None
    for row, pos in opening:
        rt.state.open_pages(torch.tensor([row], device=rt.state.device), torch.tensor([pos], device=rt.state.device))
    free = swa_pool.full_counts(batch.token_to_kv_pool_allocator).free
    if rt.totals.free_low_water is None or free < rt.totals.free_low_water:
        rt.totals.free_low_water = free
    rows = [r.kv.req_pool_idx for r in batch.reqs if r.kv.req_pool_idx in rt.reprefilling]
    if rows:
        dev = rt.state.device
        ends = [r.extend_end for r in batch.reqs if r.kv.req_pool_idx in rt.reprefilling]
        rt.note_peaks(torch.tensor(rows, device=dev), torch.tensor(ends, device=dev), req_to_token,
                      np.array(ends, dtype=np.int64), force=True)
    return out


def _evict_before(rt: runtime.Runtime, batch) -> list[tuple[int, int]]:
    """A chunk that starts at a position opening a decode page evicts first, as a decode step would; returns the
    (row, position) pairs whose page opens once the chunk is allocated."""
    opening = []
    for req in batch.reqs:
        rp = _resuming(rt, req)
        if rp is None:
            continue
        row, pos = req.kv.req_pool_idx, req.prefix_len
        if pos != rp.n_tokens - 1:  # NOTE: only the last position opens a new page; runs reopen nothing
            continue
        dev = rt.state.device
        rows, positions = torch.tensor([row], device=dev), torch.tensor([pos], device=dev)
        if rt.state.host.opens_page(np.array([row]), np.array([pos]))[0]:
            from raas_sglang.patches.schedule import abort_lost

            req_to_token = batch.req_to_token_pool.req_to_token
            done = eviction.evict(rt, rows, positions, req_to_token, batch.token_to_kv_pool_allocator)
            abort_lost(rt, batch, done.lost_rows)
            opening.append((row, pos))
    return opening


def _restore(rt: runtime.Runtime, batch, req) -> None:
    """After a resuming request's first chunk got its row: admit it with its snapshot."""
    from raas_sglang.patches.requests import request_policy

    carry = req.raas_carry
    snap = carry.snapshot
    row = req.kv.req_pool_idx
    rt.ensure_state(batch.req_to_token_pool.req_to_token)
    policy, budget_pages, trace = request_policy(req, rt.config)
    rt.admit(row, req.rid, snap.pin_len, policy, budget_pages, trace, carry=carry, kv=req.kv)
    rt.state.restore(row, snap)
    n = len(req.full_untruncated_fill_ids)
    info = rt.rows[row]
    info.reprefills = [*info.reprefills, [n, len(info.trace_steps)]]
    info.bounded_reprefills += 1
    holes = rt.state.holes(row, n)
    runs = reprefill_runs(snap.pin_len, rt.config.page_size, holes, n)
    rt.reprefilling[row] = runtime.Reprefill(req.rid, req.kv, runs, n)
    carry.snapshot = None
    logger.info("raas_sglang: request %s resumes after a retraction: %d of %d tokens recomputed in %d runs "
                "(%d pages evicted before)", req.rid, sum(b - a for a, b in runs), n, len(runs), len(holes))


def done_reprefilling(rt: runtime.Runtime, batch) -> None:
    """Called at each decode step: a row that decodes has finished its re-prefill."""
    if rt.reprefilling:
        for req in batch.reqs:
            if _resuming(rt, req) is not None:
                del rt.reprefilling[req.kv.req_pool_idx]


HOOKS = (
    ("sglang.srt.managers.schedule_batch.Req._compute_max_prefix_len", compute_max_prefix_len, "AROUND"),
    ("sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req", add_chunked_req, "AROUND"),
    ("sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req_ignore_eos", add_one_req_ignore_eos, "AROUND"),
    ("sglang.srt.mem_cache.allocation.alloc_for_extend", alloc_for_extend, "AROUND"),
)
