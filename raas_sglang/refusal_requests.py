"""The request rows of the refusal registry (`raas_sglang/refusals.py`): a request's RaaS fields (`Request`),
checked in order on the tokenizer side (HTTP 400) and again in the scheduler (the request is aborted with the
message); the first matching row refuses. A row may assume the rows above it passed."""

from __future__ import annotations

from typing import Any, Mapping

from raas_sglang import config as cfg
from raas_sglang.config import ConfigError, RaasConfig
from raas_sglang.policies import DENSE
from raas_sglang.refusal_context import Refusal, Request

REQUEST = (
    Refusal("request.custom-params.type", "`custom_params` is not a JSON object",
            "custom_params: must be a JSON object, got {params_type}",
            lambda r: r.raw is not None and not isinstance(r.raw, Mapping)),
    Refusal("request.beam-search", "`beam_width` above 1 on a budgeted server",
            "beam_width: beam search is not supported with --kv-policy raas yet; use a dense server",
            lambda r: r.server.enabled and r.beam_width > 1),
    Refusal("request.kv-policy", "`custom_params.kv_policy` names no known policy",
            "custom_params.kv_policy: must be one of {policies}, got {policy!r}",
            lambda r: not isinstance(r.policy, str) or r.policy not in cfg.POLICIES),
    Refusal("request.kv-policy.dense-server", "a budgeted `custom_params.kv_policy` on a dense server",
            "custom_params.kv_policy: {policy!r} needs a server started with a budgeted --kv-policy "
            "({budgeted}); this one is dense",
            lambda r: r.policy != DENSE and not r.server.enabled),
    Refusal("request.kv-policy.exact-kernel",
            "a selecting `custom_params.kv_policy` on a triton server with `--raas-score exact`",
            "custom_params.kv_policy: {policy!r} is not available on this server (--raas-score exact on the "
            "triton backend selects no pages); use raas, streaming, h2o or dense here",
            lambda r: r.server.exact_kernel and r.policy in cfg.SELECTING),
    Refusal("request.kv-policy.tp", "a selecting `custom_params.kv_policy` on a server with `--tp-size` above 1",
            "custom_params.kv_policy: {policy!r} is not available under tensor parallel (--tp-size {tp}: Quest "
            "page selection would pick pages per rank); use raas, streaming, h2o or dense here",
            lambda r: r.server.tp_size > 1 and r.policy in cfg.SELECTING),
    Refusal("request.kv-policy.bounds", "a selecting `custom_params.kv_policy` on a server without page key bounds",
            "custom_params.kv_policy: {policy!r} needs page key bounds, kept only by servers started with "
            "--kv-policy quest or raas+quest, or with --raas-score quest",
            lambda r: r.policy in cfg.SELECTING and not r.server.keeps_bounds),
    Refusal("request.kv-policy.selection-backend",
            "a selecting `custom_params.kv_policy` on a server whose decode backend is not torch_native",
            "custom_params.kv_policy: {policy!r} is not available on this server (Quest page selection runs on "
            "the torch_native decode backend only); use raas, streaming, h2o or dense here",
            lambda r: r.policy in cfg.SELECTING and r.server.decode_backend != "torch_native"),
    Refusal("request.raas-budget.above-server", "`custom_params.raas_budget` above the server's `--raas-budget`",
            "custom_params.raas_budget: must be at most the server's --raas-budget ({server_budget} tokens), got "
            "{budget_shown}",
            lambda r: r.budget_is_integer and r.budget > r.server_budget),
    Refusal("request.raas-budget.type", "`custom_params.raas_budget` is not a positive JSON integer",
            "custom_params.raas_budget: must be a positive integer number of tokens, got {budget!r}",
            lambda r: r.budget is not None and (isinstance(r.budget, bool) or not isinstance(r.budget, int)
                                                or r.budget <= 0)),
    Refusal("request.raas-budget.min-pages", "`custom_params.raas_budget` rounds up to fewer than {min_pages} pages",
            "custom_params.raas_budget: must be at least {min_pages} pages = {min_tokens} tokens at page size "
            "{page_size}, got {budget!r}",
            lambda r: r.budget is not None and -(-r.budget // r.page_size) < cfg.MIN_BUDGET_PAGES),
    Refusal("request.raas-trace", "`custom_params.raas_trace` is not true or false",
            "custom_params.raas_trace: must be true or false, got {trace!r}",
            lambda r: not isinstance(r.trace, bool)),
)


def request_refusal(params: Mapping[str, Any] | None, server: RaasConfig,
                    beam_width: int | None = None) -> tuple[Refusal, str] | None:
    """The first request row that refuses this request, and its message; None when it may run."""
    context = Request(params, server, beam_width)
    for row in REQUEST:
        if row.refuses(context):
            return row, row.text(context)
    return None


def refuse_request(params: Mapping[str, Any] | None, server: RaasConfig, beam_width: int | None = None) -> None:
    """Raise `ConfigError` with the message of the first request row that refuses this request."""
    found = request_refusal(params, server, beam_width)
    if found is not None:
        raise ConfigError(found[1])
