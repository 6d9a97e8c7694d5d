"""Helpers shared by the RaaS server tests: requests, the bound I4, and the masked Hugging Face reference (I5)."""

from __future__ import annotations

import torch

def gen(server, ids, n, **custom):
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True, "custom_params": custom},
        "return_logprob": True,
    }
    return server.post("/generate", body)


def bound(prompt_len: int, budget: int, ps: int = 16) -> int:
    """I4: ceil(prompt / ps) * ps + budget (the budget a whole number of pages; the page being written counts)."""
    return -(-prompt_len // ps) * ps + budget


def flush(server, timeout: float = 60) -> None:
    """`/flush_cache` once the server is idle (SGLang answers 400 and flushes nothing while requests run)."""
    import time
    import urllib.error

    deadline = time.monotonic() + timeout
    while True:
        try:
            if "Cache flushed" in str(server.post("/flush_cache", {})):
                return
        except urllib.error.HTTPError as err:
            if err.code != 400:
                raise
        assert time.monotonic() < deadline, "the server did not go idle"
        time.sleep(0.2)


def hf_logprobs(model, ids: list[int], allowed: torch.Tensor) -> torch.Tensor:
    """log-softmax over the vocabulary at every position, with `allowed` [T, T] bool as the attention mask."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]), attention_mask=allowed[None, None]).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def kept_mask(total: int, trace: list, window: tuple[int, int, int] | None = None) -> torch.Tensor:
    """[T, T] bool: query i sees key j iff j <= i and j was not evicted at or before the step writing i.

    `window` = (prompt_end, sink, window_tokens) for the streaming policy: the query at position i >= prompt_end
    also skips pinned positions [sink, i + 1 - window_tokens) (its prompt falls out of the recent window).
    """
    mask = torch.tril(torch.ones(total, total, dtype=torch.bool))
    for pos, lo, hi in trace:
        mask[pos:, lo:hi] = False
    if window is not None:
        prompt_end, sink, width = window
        for i in range(prompt_end, total):
            mask[i, sink : max(sink, min(prompt_end, i + 1 - width))] = False
    return mask



def masked_reference_error(model, prompt: list[int], out: dict, dense: bool = False, window=None) -> float:
    """Max |server log-prob - reference log-prob| over the output tokens; the reference attends to exactly the
    positions the server kept (from `meta_info.raas.trace`, and `window`: see `kept_mask`), or to everything with
    `dense`."""
    ids = prompt + out["output_ids"]
    trace = [] if dense else out["meta_info"]["raas"]["trace"]
    lp = hf_logprobs(model, ids, kept_mask(len(ids), trace, None if dense else window))
    ref = lp[len(prompt) - 1 : -1].gather(1, torch.tensor(out["output_ids"])[:, None]).squeeze(1)
    got = torch.tensor([x[0] for x in out["meta_info"]["output_token_logprobs"]])
    return (got - ref).abs().max().item()


def policy_state(num_rows: int, budget_pages: int, page_size: int, ratio: float = 0.5, threshold: float | None = None,
                 reserve: float = 0.0):
    """A `RaasState` whose raas policy runs the given refresh rule and reserve (the paper's rule by default:
    ratio 0.5, no threshold, no reserve); the other policies with their defaults."""
    from raas_sglang.core import RaasState
    from raas_sglang.policies import REGISTRY, PolicySet
    from raas_sglang.policies.raas import Raas

    raas = Raas(refresh_ratio=ratio, refresh_threshold=threshold or 0.0, reserve=reserve)
    others = [cls() if cls.__name__ != "RaasQuest" else cls(ratio, threshold or 0.0, reserve)
              for name, cls in REGISTRY.items() if name != "raas"]
    return RaasState(num_rows, budget_pages, page_size, policies=PolicySet([raas, *others]))
