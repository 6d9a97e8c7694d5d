"""Teacher forcing through a running server: a custom logit processor that forces given tokens one decode step at a
time and records each forced token's log-probability before forcing it.

The server needs `--enable-custom-logit-processor`. A request carries

    "custom_logit_processor": ForcedTokens.to_str(),
    "sampling_params": {"custom_params": {"force_ids": [...], ...}, "max_new_tokens": len(force_ids), ...}

and its `meta_info["forced_logprob"]` holds `log_softmax(logits)[force_ids[t]]` for every output token t, read
from the model's logits before the processor overwrote them (SGLang 0.5.23 applies custom logit processors before
it computes its own log-probs, so `output_token_logprobs` of a forced token reads about 0).

The values travel through SGLang's per-request `customized_info` channel (`Req.customized_info`, a list per key
with one entry per output token, streamed into `meta_info` by the output streamer). NOTE: the processor knows
which token to force from `len(req.output_ids)`, so it needs the overlap scheduler off (every RaaS server turns it
off); it checks that its own record agrees with that count and raises otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
from sglang.srt.sampling.custom_logit_processor import CustomLogitProcessor

KEY = "forced_logprob"


class ForcedTokens(CustomLogitProcessor):
    """Force `custom_params["force_ids"][t]` at output step t; record its log-prob under `meta_info[KEY]`."""

    def __call__(self, logits: torch.Tensor, custom_param_list: list[dict[str, Any]] | None = None) -> torch.Tensor:
        # logits [n, vocab]: the rows of the requests that use this processor
        reqs = [params["__req__"] for params in custom_param_list]
        # NOTE: a prompt's middle chunk (chunked prefill) is sampled too and its token discarded: not recorded
        live = [req.inflight_middle_chunks <= 0 for req in reqs]
        targets = []
        for req, params in zip(reqs, custom_param_list):
            force, step = params["force_ids"], len(req.output_ids)
            record = (req.customized_info or {}).get(KEY, [])
            if len(record) != step and req.inflight_middle_chunks <= 0:
                raise RuntimeError(f"ForcedTokens: request {req.rid} recorded {len(record)} forced tokens at output "
                                   f"step {step} (the overlap scheduler must be off)")
            targets.append(force[min(step, len(force) - 1)])
        tok = torch.tensor(targets, dtype=torch.int64, device=logits.device)  # [n]
        lp = torch.log_softmax(logits.float(), dim=-1).gather(1, tok[:, None]).squeeze(1)  # [n]
        for req, value, keep in zip(reqs, lp.tolist(), live):
            if not keep:
                continue
            if req.customized_info is None:
                req.customized_info = {}
            req.customized_info.setdefault(KEY, []).append(value)
        forced = torch.full_like(logits, float("-inf"))
        forced.scatter_(1, tok[:, None], 0.0)
        return forced


def request(prompt_ids: list[int], force_ids: list[int], **custom: Any) -> dict:
    """A `/generate` body that forces `force_ids` after `prompt_ids` (greedy, EOS ignored); `custom` goes into
    `custom_params` beside `force_ids` (e.g. `kv_policy`, `raas_budget`, `raas_trace`)."""
    return {
        "input_ids": prompt_ids,
        "custom_logit_processor": ForcedTokens.to_str(),
        "sampling_params": {
            "max_new_tokens": len(force_ids), "temperature": 0, "ignore_eos": True,
            "custom_params": {"force_ids": list(force_ids), **custom},
        },
    }
