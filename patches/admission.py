"""Seam: prefill admission counts a RaaS request as needing at most its prompt + L pages + one page.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/managers/schedule_policy.py`, `PrefillAdder`):
- `_get_running_request_total_token_offset(self, req)`, AROUND: what each running request still reserves
  (stock: `min(max_new - out, 4096) * ratio`). A RaaS request can add at most its remaining decode allowance,
  `L*ps + ps` minus the decode tokens it holds now.
- `_select_prefill_admission(self, req, *, total_tokens, ...)`, AROUND: a new request's reservation
  (stock: its whole `max_new_tokens`, clipped at 4096). A RaaS request reserves at most `L*ps + ps` of decode.
  A retracted request resuming from a snapshot gets its first chunk cut at its first run (`reprefill.admission`).

This is where the capacity gain comes from: more long reasoning decodes fit in the same pool. The decode-side
memory check (`new_tokens_required_next_decode`) is in `patches/schedule.py`.
NOTE: the `ignore_eos` path with the radix cache disabled (`add_one_req_ignore_eos`) and the last chunk of a
chunked prefill still reserve the stock amount (conservative, never unsafe).
"""

from __future__ import annotations

import dataclasses

from raas_sglang.config import EVICTING
from raas_sglang.patches import reprefill, runtime
from raas_sglang.patches.requests import request_policy


def _decode_allowance(rt: runtime.Runtime, req) -> int | None:
    """Decode tokens a RaaS request may hold at most (L pages + one page of slack); None for dense."""
    policy, pages, _ = request_policy(req, rt.config)
    return (pages + 1) * rt.config.page_size if policy in EVICTING else None


def _decode_held(rt: runtime.Runtime, req) -> int:
    """Decode tokens the running request holds now (whole pages past the pinned prompt, minus evicted pages)."""
    ps = rt.config.page_size
    pin_len = len(req.origin_input_ids)
    row = req.kv.req_pool_idx
    admitted = rt.row_of(req) is not None
    if admitted:
        pin_len = int(rt.state.host.pin_len[row])  # may exceed the prompt after a re-prefill matched past it
    held = -(-req.kv.kv_committed_len // ps) * ps - -(-pin_len // ps) * ps
    if admitted:
        held -= int(rt.state.host.evicted[row]) * ps
    return max(0, held)


def running_offset(orig, self, req):
    reserved = orig(self, req)
    rt = runtime.get()
    allowance = _decode_allowance(rt, req) if rt is not None else None
    if allowance is None:
        return reserved
    return min(reserved, max(0, allowance - _decode_held(rt, req)))


def select_admission(orig, self, req, *args, total_tokens, **kwargs):
    rt = runtime.get()
    allowance = _decode_allowance(rt, req) if rt is not None else None
    if allowance is None:
        result = orig(self, req, *args, total_tokens=total_tokens, **kwargs)
        return result if rt is None else reprefill.admission(self, req, result, kwargs.get("has_chunked_req", False))
    from sglang.srt.managers.schedule_policy import CLIP_MAX_NEW_TOKENS, _PrefillAdmission

    max_new = min(max(req.sampling_params.max_new_tokens - len(req.output_ids), 0), CLIP_MAX_NEW_TOKENS)
    capped = min(max_new, allowance)
    skipped = reprefill.skipped_tokens(rt, req)  # a resuming request does not recompute its holes
    result = orig(self, req, *args, total_tokens=total_tokens - (max_new - capped) - skipped, **kwargs)
    if isinstance(result, _PrefillAdmission) and result.max_new_tokens > capped:
        result = dataclasses.replace(result, max_new_tokens=capped)
    return reprefill.admission(self, req, result, kwargs.get("has_chunked_req", False))


_P = "sglang.srt.managers.schedule_policy.PrefillAdder."
HOOKS = (
    (_P + "_get_running_request_total_token_offset", running_offset, "AROUND"),
    (_P + "_select_prefill_admission", select_admission, "AROUND"),
)
