"""Multi-turn reasoning chats with thinking stripped (`--strip-thinking-cache`) under every budgeted policy.

A reasoning chat template drops each earlier turn's thinking (everything up to `</think>`) from the history, so the
thinking KV of turn k is never reused by turn k + 1; SGLang's `--strip-thinking-cache` then gives the radix tree
only the prompt pages of a finished reasoning request and frees its decode pages. Under RaaS those decode pages
have holes (evicted pages): the free must cut them out (I1), the tree must hold only prompt pages (never a decode
page, evicted or not), and each turn must stay within its pinned prompt pages + budget as SGLang's allocator sees it.

The server: the tiny model behind a Qwen3-style template (`tests/strip_thinking_chat.jinja`: an assistant turn in
the history keeps only what follows `</think>`, and the generation prompt is the bare assistant tag, so each prompt
is a prefix of the next), `--reasoning-parser deepseek-r1` (its default counts all output as reasoning until
`</think>`, which the random-weight model never writes) and `--enable-cache-report` (`cached_tokens`).
"""

from __future__ import annotations

import time

import pytest
from conftest import REPO, STRICT_ENV, serve
from raas_helpers import bound, flush

from raas_sglang.config import EVICTING

TEMPLATE = REPO / "tests" / "strip_thinking_chat.jinja"
BUDGET, TOKENS, PS = 32, 72, 16
QUESTIONS = ("What is 17 times 23? Think it through.", "Now divide that by 7.", "Round it to an integer.")
ANSWERS = ("391", "about 55.86", "56")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = serve(model_dir, "--kv-policy", "raas", "--raas-budget", str(BUDGET), "--reasoning-parser", "deepseek-r1",
                "--strip-thinking-cache", "--chat-template", str(TEMPLATE), "--enable-cache-report",
                tmp=tmp_path_factory.mktemp("strip_thinking"), env=dict(STRICT_ENV))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt SGLang builds for `messages`, built here with transformers from the same template."""
    enc = tokenizer.apply_chat_template(messages, chat_template=TEMPLATE.read_text(), add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    return list(enc["input_ids"])


def pool_info(server) -> dict:
    return server.get("/get_server_info")["internal_states"][0]["raas"]


def idle(server, timeout: float = 60) -> dict:
    """The allocator's figures once no request runs and every used slot is in the tree (unlocked)."""
    deadline = time.monotonic() + timeout
    while True:
        info = pool_info(server)
        if info["running_requests"] == 0 and info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"]:
            return info
        assert time.monotonic() < deadline, info
        time.sleep(0.2)


def chat(server, messages: list[dict], policy: str) -> dict:
    return server.post("/v1/chat/completions", {
        "model": "tiny", "messages": messages, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True,
        "custom_params": {"kv_policy": policy, "raas_budget": BUDGET}})


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("policy", ["raas", "streaming", "h2o", "dense"])
def test_three_turns(server, tokenizer, policy):
    """Three chat turns, each history with the earlier thinking stripped by the template. Per turn, read from
    SGLang's own instruments: the prompt hits the cache exactly up to the last full page of the previous turn's
    prompt (`cached_tokens`; the thinking in between is gone from both the history and the tree); the allocator's free count never drops below pinned prompt pages +
    budget (evicting policies) or prompt + output (dense); after the turn the tree holds
    exactly the new prompt pages (no decode page: the thinking went back to the allocator with its holes cut out,
    or SGLang's strict free checks would have stopped the server). A cold rerun of the last turn answers the same.
    """
    evicting = policy in EVICTING
    flush(server)
    start = idle(server)
    pool = start["pool_tokens"]
    assert start["free_tokens"] == pool and start["kv_free_low_water_tokens"] is None
    messages: list[dict] = []
    prompts: list[list[int]] = []
    held, low = 0, pool  # tokens the tree holds; the lowest free count the allocator may show
    for question, answer in zip(QUESTIONS, ANSWERS):
        messages.append({"role": "user", "content": question})
        ids = prompt_ids(tokenizer, messages)
        before = idle(server)
        out = chat(server, messages, policy)
        usage, reply = out["usage"], out["choices"][0]["message"]
        assert usage["prompt_tokens"] == len(ids)
        assert usage["completion_tokens"] == TOKENS and usage["reasoning_tokens"] == TOKENS, usage
        assert reply["reasoning_content"] and not reply["content"], reply
        if prompts:  # the stripped history keeps the previous prompt whole: the cache covers all its full pages
            assert ids[: len(prompts[-1])] == prompts[-1]
        cached = max((shared_prefix(ids, p) for p in prompts), default=0) // PS * PS
        assert usage["prompt_tokens_details"]["cached_tokens"] == cached, (usage, len(ids))
        after = idle(server)
        peak = bound(len(ids), BUDGET) if evicting else -(-(len(ids) + TOKENS - 1) // PS) * PS
        low = min(low, before["free_tokens"] - (peak - cached))
        assert after["kv_free_low_water_tokens"] == low, (after, before, peak, cached)
        assert (after["evicted_pages_total"] > before["evicted_pages_total"]) == evicting
        held += len(ids) // PS * PS - cached
        assert after["evictable_tokens"] == held and after["free_tokens"] == pool - held, (after, held)
        prompts.append(ids)
        messages.append({"role": "assistant", "content": reply["reasoning_content"] + "</think>" + answer})
    warm = reply["reasoning_content"]
    flush(server)
    cold = chat(server, messages[:-1], policy)
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert cold["choices"][0]["message"]["reasoning_content"] == warm
    flush(server)
    assert idle(server)["free_tokens"] == pool
