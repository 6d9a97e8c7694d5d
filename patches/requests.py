"""Per-request RaaS control through SGLang's `custom_params`.

`{"kv_policy": "dense"|"raas"|"streaming"|"h2o", "raas_budget": N, "raas_trace": bool}` in `sampling_params.custom_params`
(`/generate`) or `extra_body={"custom_params": {...}}` (OpenAI endpoints). Validation lives in
`raas_sglang.config.request_overrides` (pure); this module applies it to a scheduler `Req`.

Hooks upstream: none here (see `patches/api.py` for where bad values become HTTP 400).
"""

from __future__ import annotations

from raas_sglang.config import RaasConfig, request_overrides


def custom_params_of(req) -> dict | None:
    sp = getattr(req, "sampling_params", None)
    params = getattr(sp, "custom_params", None)
    return params if isinstance(params, dict) else None


def request_policy(req, config: RaasConfig) -> tuple[str, int, bool]:
    """(policy name, budget pages, trace evictions?) for a scheduler `Req` on a budgeted-policy server.

    NOTE: values were validated on the tokenizer side (HTTP 400 there); a value that still fails here falls back
    to the server's settings rather than failing the step.
    """
    try:
        o = request_overrides(custom_params_of(req), config)
    except ValueError:
        return config.policy, config.budget_pages, False
    return o.policy, o.budget_pages, o.trace
