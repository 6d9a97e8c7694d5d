"""Seam: per-request RaaS control through SGLang's `custom_params`, validated again where the scheduler takes the
request.

`{"kv_policy": "dense"|"raas"|..., "raas_budget": N, "raas_trace": bool}` in `sampling_params.custom_params`
(`/generate`) or `extra_body={"custom_params": {...}}` (OpenAI endpoints). The rows are the request rows of the
refusal registry (`raas_sglang/refusal_requests.py`); the tokenizer side answers HTTP 400 with them
(`patches/api.py` `verify`), and this module checks them again in the scheduler, for requests that reached it by
any other path (another front end, a future SGLang route): never served under a setting the registry refuses.

Upstream symbols hooked (sglang 0.5.23): `sglang.srt.managers.scheduler.Scheduler._add_request_to_queue(self,
req, is_retracted=False)`, BEFORE, on every server: every new generation request passes here (SGLang's own
validation aborts through it too; a request SGLang already aborted keeps its message). A request whose
`custom_params` or `sampling_params.beam_width` fail a row (a budgeted policy on a dense server included) is
finished with `Req.set_finish_with_abort(message)` (HTTP 400 to its client; the server serves on; SGLang prefills
one token of it before it finishes, as dense); a valid one carries its `RequestOverrides` as `req.raas_request`,
read by every later hook (`request_policy`).
"""

from __future__ import annotations

from raas_sglang.config import RaasConfig, RequestOverrides, request_overrides
from raas_sglang.patches import runtime
from raas_sglang.patches.server_args import config_of
from raas_sglang.policies import DENSE
from raas_sglang.refusals import request_refusal

ATTR = "raas_request"


def custom_params_of(req) -> dict | None:
    sp = getattr(req, "sampling_params", None)
    params = getattr(sp, "custom_params", None)
    return params if isinstance(params, dict) else None


def _beam_width(req) -> int | None:
    return getattr(req.sampling_params, "beam_width", None)


def request_policy(req, config: RaasConfig) -> tuple[str, int, bool]:
    """(policy name, budget pages, trace evictions?) for a scheduler `Req` on a budgeted-policy server: what was
    validated when the scheduler took it. NOTE: a request that never passed that check is validated here, and a
    bad one raises (`ConfigError`) rather than running under the server's settings."""
    found = getattr(req, ATTR, None)
    if not isinstance(found, RequestOverrides):
        found = request_overrides(custom_params_of(req), config)
        setattr(req, ATTR, found)  # NOTE: once per request (admission asks for every running request each pass)
    return found.policy, found.budget_pages, found.trace


def add_request_to_queue(self, req, *args, is_retracted: bool = False, **kwargs):
    """BEFORE hook on `Scheduler._add_request_to_queue` (on every server, dense included: a dense server refuses
    budgeted per-request policies)."""
    if is_retracted or (args and args[0]):
        return None
    rt = runtime.get()
    config = rt.config if rt is not None else config_of(self.server_args)
    if req.finished() or req.to_finish is not None:  # already aborted by SGLang: its own message stands
        setattr(req, ATTR, RequestOverrides(DENSE, config.budget_pages, False))
        return None
    raw = getattr(req.sampling_params, "custom_params", None)
    if raw is None and (_beam_width(req) or 1) <= 1:
        return None  # nothing to check (and no overrides: the server's settings apply)
    refused = request_refusal(raw, config, _beam_width(req))
    if refused is not None:
        # NOTE: SGLang still prefills an aborted request (one token) before it finishes it: it runs as dense
        req.set_finish_with_abort(refused[1])
        setattr(req, ATTR, RequestOverrides(DENSE, config.budget_pages, False))
        return None
    if rt is not None:
        setattr(req, ATTR, request_overrides(raw, config))
    return None


HOOKS = (("sglang.srt.managers.scheduler.Scheduler._add_request_to_queue", add_request_to_queue, "BEFORE"),)
