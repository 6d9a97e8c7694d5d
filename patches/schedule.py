"""Seam: eviction before each decode step's KV allocation, and the decode memory check.

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.mem_cache.allocation.alloc_for_decode(batch, token_per_req)`, AROUND: called only from
  `ScheduleBatch.prepare_for_decode`, after the memory check and before the step's slots are allocated — the
  moment RaaS must evict (the freed page is reused by this very allocation). The registry rebinds the name that
  `schedule_batch` imported. Also admits new rows (prompt length, per-request policy) and opens new pages, and,
  under tensor parallel with `RAAS_CHECK_RANKS`, checks that the ranks' states agree after the step.
- `sglang.srt.managers.schedule_batch.ScheduleBatch.new_tokens_required_next_decode`, AROUND: a RaaS request at
  its page limit whose next token opens a page evicts one first, so it needs zero net pages (on one pool; on a
  hybrid sliding-window pool SGLang's count stands: the victim's window twin may be swept already).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from raas_sglang.host import HostBatch
from raas_sglang.patches import disaggregation, eviction, reprefill, runtime, swa_pool, tensor_parallel
from raas_sglang.patches.requests import request_policy

logger = logging.getLogger("raas_sglang")


def _admit_new_rows(rt: runtime.Runtime, batch) -> None:
    """Admit rows whose request changed since the last step (a Python loop over requests, not tokens)."""
    for req in batch.reqs:
        row = req.kv.req_pool_idx
        if rt.row_of(req) is not None:
            continue
        policy, budget_pages, trace = request_policy(req, rt.config)
        # NOTE: pinned = the prompt, including any radix-matched prefix (a retracted request may have matched
        # past its prompt: the tree owns those tokens, so they are pinned too).
        pin = max(len(req.origin_input_ids), req.kv.cache_protected_len)
        carry = getattr(req, "raas_carry", None)
        rt.admit(row, req.rid, pin, policy, budget_pages, trace, carry=carry, kv=req.kv)
        if carry is not None and carry.evicted_at_release == 0 and not disaggregation.decode_server():
            # NOTE: resumed by SGLang's full re-prefill before any eviction: every token recomputed with the whole
            # prompt (KV first computed under a prompt window, streaming's, was not): an epoch for the reference.
            # Not after evictions (the fallback that recomputes evicted pages too: outside I4, README) nor on a
            # decode server (it restores the KV from its host copy: nothing recomputed)
            info = rt.rows[row]
            info.reprefills = [*info.reprefills, [int(req.kv.kv_committed_len), 0]]
        if policy != "dense":
            _adopt_existing_decode_pages(rt, batch, row, req.kv.kv_committed_len)
        seq = np.array([req.kv.kv_committed_len], dtype=np.int64)
        rt.note_peaks(_one(rt, row), _one(rt, int(seq[0])), batch.req_to_token_pool.req_to_token, seq, force=True)


def _one(rt: runtime.Runtime, value: int) -> torch.Tensor:
    """[1] int64 on the state's device, filled on the device (no host-to-device copy to wait for)."""
    return torch.full((1,), value, dtype=torch.int64, device=rt.state.device)


def _adopt_existing_decode_pages(rt: runtime.Runtime, batch, row: int, seq_len: int) -> None:
    """A re-prefilled (retracted) request already holds decode pages: open them oldest first, then trim back to
    its limit, evicting the oldest (design: re-prefilled output is decode pages, not pinned)."""
    state, ps = rt.state, rt.config.page_size
    rows = _one(rt, row)
    first = int(state.host.first_decode_page(np.array([row]))[0])
    for page in range(first, -(-seq_len // ps)):
        pos, host = _one(rt, page * ps), HostBatch(np.array([row]), np.array([page * ps]))
        done = eviction.evict(rt, rows, pos, batch.req_to_token_pool.req_to_token, batch.token_to_kv_pool_allocator,
                              host)
        abort_lost(rt, batch, done.lost_rows)
        state.open_pages(rows, pos, host)


def abort_lost(rt: runtime.Runtime, batch, lost_rows: list[int]) -> None:
    """A row whose eviction victim had no KV left is corrupt: abort its request (HTTP 500 with the reason, an
    error in the log) after this step; the other requests go on. NOTE: its state already treats the page as a
    hole, so this step's allocation and the release stay within the pool's accounting."""
    if not lost_rows:
        return
    from http import HTTPStatus

    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    for req in batch.reqs:
        if req.kv.req_pool_idx in lost_rows and rt.row_of(req) is not None:
            msg = (f"raas_sglang: request {req.rid}: a KV page it still held was already freed (broken invariant); "
                   "the request is aborted, the server goes on")
            logger.error(msg)
            req.to_finish = FINISH_ABORT(msg, HTTPStatus.INTERNAL_SERVER_ERROR)


def alloc_for_decode(orig, batch, token_per_req):
    rt = runtime.get()
    if rt is None:
        return orig(batch, token_per_req)
    _count_step(rt)
    with runtime.timed(rt, "schedule"):
        req_to_token = batch.req_to_token_pool.req_to_token
        rt.ensure_state(req_to_token)
        rt.allocator, rt.tree_cache = batch.token_to_kv_pool_allocator, batch.tree_cache
        _admit_new_rows(rt, batch)
        reprefill.done_reprefilling(rt, batch)
        # NOTE: pages open (and evictions happen) only where a row's next token starts a page; the host copy of
        # seq_lens tells without touching device tensors, so 15 of 16 steps skip the policy work at page 16.
        host = rt.step_host = host_batch_of(batch)
        opening = bool((host.positions % rt.config.page_size == 0).any())
        if opening:
            rows = batch.req_pool_indices.to(torch.int64)  # [bs]
            positions = batch.seq_lens.to(torch.int64)  # [bs] logical position of this step's token
            done = eviction.evict(rt, rows, positions, req_to_token, batch.token_to_kv_pool_allocator, host)
            abort_lost(rt, batch, done.lost_rows)
    out = orig(batch, token_per_req)
    free = swa_pool.full_counts(batch.token_to_kv_pool_allocator).free  # SGLang's count, after this allocation
    if rt.totals.free_low_water is None or free < rt.totals.free_low_water:
        rt.totals.free_low_water = free
    if rt.traced:  # a traced request's memory curve, as the allocator counts it (bench.memory)
        for req in batch.reqs:
            info = rt.row_of(req)
            if info is not None and info.trace:
                info.kv_free.append(free)
    if opening:
        with runtime.timed(rt, "schedule"):
            rt.state.open_pages(rows, positions, host)
            rt.note_peaks(rows, positions + token_per_req, req_to_token, host.positions + token_per_req)
    tensor_parallel.check_ranks_agree(rt, batch)  # debug check (RAAS_CHECK_RANKS), tp > 1 only
    return out


def host_batch_of(batch) -> HostBatch:
    """The decode batch on the host: its requests' rows (the order of `req_pool_indices`) and SGLang's CPU copy of
    `seq_lens` (before this step's token: each row's position)."""
    rows = np.array([r.kv.req_pool_idx for r in batch.reqs], dtype=np.int64)
    return HostBatch(rows, batch.seq_lens_cpu.numpy().astype(np.int64))


def _count_step(rt: runtime.Runtime) -> None:
    """Wall time between consecutive decode allocations = one scheduler step (idle gaps over 1 s are dropped)."""
    now = time.perf_counter()
    gap = now - rt.totals.last_step_start
    if gap < 1.0:
        rt.totals.step_seconds += gap
        rt.totals.decode_steps += 1
    rt.totals.last_step_start = now


def new_tokens_required_next_decode(orig, self, selected_indices=None):
    tokens = orig(self, selected_indices)
    rt = runtime.get()
    if rt is None or rt.state is None or not self.spec_algorithm.is_none():
        return tokens
    if swa_pool.is_hybrid(self.token_to_kv_pool_allocator):
        return tokens  # NOTE: a victim whose SWA twin was swept frees no window page: keep SGLang's count
    reqs = self.reqs if selected_indices is None else [self.reqs[i] for i in selected_indices]
    admitted = [r for r in reqs if rt.row_of(r) is not None]
    if not admitted:
        return tokens
    rows = np.array([r.kv.req_pool_idx for r in admitted], dtype=np.int64)
    positions = np.array([r.kv.kv_committed_len for r in admitted], dtype=np.int64)
    return tokens - int(rt.state.host.must_evict(rows, positions).sum()) * rt.config.page_size


HOOKS = (
    ("sglang.srt.mem_cache.allocation.alloc_for_decode", alloc_for_decode, "AROUND"),
    (
        "sglang.srt.managers.schedule_batch.ScheduleBatch.new_tokens_required_next_decode",
        new_tokens_required_next_decode,
        "AROUND",
    ),
)
