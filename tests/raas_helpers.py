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


def assert_raas_equals_dense(server, ids, n: int, label: str = "") -> dict:
    """budget >= output: a raas request (budget 256) and a dense one in one batch give the same tokens, nothing
    evicted; returns the raas response."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:  # one batch
        raas, dense = ex.map(lambda c: gen(server, ids, n, **c),
                             ({"kv_policy": "raas", "raas_budget": 256}, {"kv_policy": "dense"}))
    assert raas["meta_info"]["raas"]["evicted_pages"] == 0, label
    assert raas["output_ids"] == dense["output_ids"], label
    return raas


def gen_policies(server, ids, n, policies, budget: int) -> list[dict]:
    """One traced request per policy, all at once (one decode batch), each with `budget` tokens."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(policies)) as pool:
        return list(pool.map(lambda p: gen(server, ids, n, kv_policy=p, raas_budget=budget, raas_trace=True),
                             policies))


def assert_policies_bounded_and_exact(server, hf, prompt, n: int, policies, budget: int, min_evicted: int,
                                      triton: bool = False) -> list[dict]:
    """One batch of traced requests, one per policy (none of them streaming): each evicts at least `min_evicted`
    pages, peaks exactly at the bound, and equals the HF model masked to what it kept; returns the responses."""
    outs = gen_policies(server, prompt, n, policies, budget)
    for out in outs:
        raas = out["meta_info"]["raas"]
        assert raas["evicted_pages"] >= min_evicted and raas["peak_kv_tokens"] == bound(len(prompt), budget), raas
        assert masked_reference_error(hf, prompt, out, triton=triton) < 1e-3, raas["policy"]
    return outs


def streaming_window(prompt_len: int, budget: int, policy: str, ps: int = 16):
    """`masked_reference_error`'s `window` for a request of `policy`: streaming's (sink page, recent window of
    `budget` tokens, pinned through the end of the partial prompt page); None for any other policy."""
    return (-(-prompt_len // ps) * ps, ps, budget) if policy == "streaming" else None


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


def hf_logprobs(model, ids: list[int], allowed: torch.Tensor, short: torch.Tensor | None = None) -> torch.Tensor:
    """log-softmax over the vocabulary at every position, with `allowed` [T, T] bool as the attention mask; a
    model with sliding-window layers (Gemma 3, gpt-oss) gets its window on top of it in those layers (query i sees
    keys j > i - sliding_window), full layers `allowed` alone. `short` [T] bool: the queries that see one key less
    in a window layer (j > i - sliding_window + 1): those SGLang's triton backend decoded (its decode window is one
    token shorter than its extend's and torch_native's). A model whose attention adds the mask (gpt-oss: eager,
    with sinks) gets it as 0 / -inf."""
    mask = allowed[None, None]  # [1, 1, T, T]
    types = getattr(model.config, "layer_types", None) or []
    if "sliding_attention" in types:
        i = torch.arange(len(ids))
        width = torch.full((len(ids),), model.config.sliding_window)  # [T] keys a query sees in the window
        if short is not None:
            width -= short.long()
        band = i[None, :] > i[:, None] - width[:, None]  # [T, T]
        mask = {"full_attention": mask, "sliding_attention": (allowed & band)[None, None]}
    if model.config._attn_implementation == "eager":
        additive = lambda m: torch.zeros(m.shape).masked_fill(~m, float("-inf"))  # noqa: E731
        mask = {k: additive(m) for k, m in mask.items()} if isinstance(mask, dict) else additive(mask)
    with torch.no_grad():
        logits = model(torch.tensor([ids]), attention_mask=mask).logits[0]
    return torch.log_softmax(logits.float(), dim=-1)


def kept_mask(total: int, trace: list, window: tuple[int, int, int] | None = None, epoch: tuple[int, int] = (0, 0)
              ) -> torch.Tensor:
    """[T, T] bool: query i sees key j iff j <= i and j was not evicted at or before the step writing i.

    `window` = (prompt_end, sink, window_tokens) for the streaming policy: the query at position i >= prompt_end
    also skips pinned positions [sink, i + 1 - window_tokens) (its prompt falls out of the recent window).
    `epoch` = (start, k) after a retraction (`meta_info.raas.reprefills`): the first k trace entries are holes for
    every row (the re-prefill skipped them), and the window applies only from `start` on (re-prefilled rows see
    the whole prompt).
    """
    start, k = epoch
    mask = torch.tril(torch.ones(total, total, dtype=torch.bool))
    for n, (pos, lo, hi) in enumerate(trace):
        mask[0 if n < k else pos :, lo:hi] = False
    if window is not None:
        prompt_end, sink, width = window
        for i in range(max(prompt_end, start), total):
            mask[i, sink : max(sink, min(prompt_end, i + 1 - width))] = False
    return mask


def masked_reference_error(model, prompt: list[int], out: dict, dense: bool = False, window=None,
                           triton: bool = False, decoded: tuple[int, int] | None = None) -> float:
    """Max |server log-prob - reference log-prob| over the output tokens; the reference attends to exactly the
    positions the server kept (from `meta_info.raas.trace`, and `window`: see `kept_mask`), or to everything with
    `dense`. A request resumed after retractions (`meta_info.raas.reprefills`) is checked one epoch at a time: the
    tokens decoded after each resumption against a forward that replays that re-prefill's masks. `triton`: the
    server decodes on triton, whose decode window is one token shorter (`hf_logprobs`' `short`: each epoch's
    decoded positions, and `decoded` = (lo, hi), the prompt positions an earlier turn decoded, reused from the
    tree)."""
    ids = prompt + out["output_ids"]
    raas = {} if dense else out["meta_info"]["raas"]
    trace = raas.get("trace", [])
    epochs = [(len(prompt), 0), *[tuple(e) for e in raas.get("reprefills", [])]]
    got = torch.tensor([x[0] for x in out["meta_info"]["output_token_logprobs"]])
    tokens = torch.tensor(out["output_ids"])
    err = 0.0
    for e, (start, k) in enumerate(epochs):
        end = epochs[e + 1][0] if e + 1 < len(epochs) else len(ids)
        short = None
        if triton:
            short = torch.zeros(len(ids), dtype=torch.bool)
            short[start:] = True
            if decoded is not None:
                short[decoded[0]:decoded[1]] = True
        lp = hf_logprobs(model, ids, kept_mask(len(ids), trace, None if dense else window, (start, k)), short)
        a, b = start - len(prompt), end - len(prompt)  # output tokens of this epoch
        ref = lp[start - 1 : end - 1].gather(1, tokens[a:b, None]).squeeze(1)
        err = max(err, (got[a:b] - ref).abs().max().item())
    return err


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
