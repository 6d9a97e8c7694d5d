"""SGLang's router (`sglang-router`, cache-aware policy) in front of two RaaS servers: multi-turn reasoning chats
keep landing on the worker that served their first turn and hit its radix cache (the pinned prompt pages), while
every worker evicts reasoning pages. Marked slow (~2 min on 2 cores): `make test-slow`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import STRICT_ENV, serve_all
from raas_helpers import flush
from raas_sglang.dev.launch import start_router

CHATS, TURNS, PAGE = 8, 3, 16
WORKER_ARGS = ("--kv-policy", "raas", "--raas-budget", "64", "--enable-cache-report", "--max-total-tokens", "16384")
# NOTE: the router (sglang-router 0.3.2) sends a request to the worker whose tree of earlier request texts matches
# more than --cache-threshold (0.3) of it, else to the least loaded worker. A later turn starts with its chat's
# previous request (a long problem statement: about half of the next turn's text); chats differ from their first
# characters on and start together, so new chats spread over the workers by load and later turns stick.
ROUTER_ARGS = ("--policy", "cache_aware", "--cache-threshold", "0.3")
PROBLEM = ("A train leaves the station at {h} o'clock going {v} km/h; a second train leaves {d} minutes later on the "
           "same track going {w} km/h. The line is {n} km long with a stop of {s} minutes half way for the first "
           "train only. Which train arrives first, by how many minutes, and where does the second pass the first? "
           "Reason step by step and check every number.")


@pytest.fixture(scope="module")
def fleet(model_dir, tmp_path_factory):
    specs = {f"w{i}": (WORKER_ARGS, tmp_path_factory.mktemp(f"worker{i}"), STRICT_ENV) for i in range(2)}
    workers = serve_all(model_dir, specs)
    try:
        router = start_router([w.url for w in workers.values()], ROUTER_ARGS,
                              log_path=tmp_path_factory.mktemp("router") / "router.log")
    except Exception:
        for w in workers.values():
            w.stop()
        raise
    yield router, list(workers.values())
    router.stop()
    for w in workers.values():
        w.stop()


def _admitted(workers) -> list[int]:
    return [w.get("/get_server_info")["internal_states"][0]["raas"]["admitted_raas_total"] for w in workers]


def _chat(router, c: int) -> list[dict]:
    """One chat's TURNS turns, in order; returns each turn's `usage`."""
    messages = [{"role": "system", "content": f"{c}: you are reasoner number {c}."},
                {"role": "user", "content": PROBLEM.format(h=c + 1, v=40 + 10 * c, d=5 * c, w=90 - c, n=100 + 7 * c,
                                                           s=c + 2)}]
    usage = []
    for _ in range(TURNS):
        out = router.post("/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 120,
                                                   "temperature": 0, "ignore_eos": True})
        usage.append(out["usage"])
        messages += [{"role": "assistant", "content": out["choices"][0]["message"]["content"]},
                     {"role": "user", "content": "Check each step once more."}]
    return usage


@pytest.mark.slow
def test_chats_stick_to_their_worker_and_hit_its_cache(fleet):
    """8 chats at once (each its turns in order). A later turn's cached prefix covers its previous turn's whole
    prompt (all but the last page, whose tokens may merge differently once the answer follows), hundreds of
    tokens; chats share under one page with each other, so only the worker that served the chat's earlier turns,
    and by induction its first, holds that prefix: every later turn landed there and hit its radix cache. Both
    workers served chats and evicted reasoning pages; both pools are leak-free afterwards."""
    router, workers = fleet
    before = _admitted(workers)
    with ThreadPoolExecutor(CHATS) as pool:
        usages = list(pool.map(lambda c: _chat(router, c), range(CHATS)))
    for c, usage in enumerate(usages):
        for turn in range(1, TURNS):
            cached = usage[turn]["prompt_tokens_details"]["cached_tokens"]
            floor = (usage[turn - 1]["prompt_tokens"] // PAGE - 1) * PAGE
            assert cached >= floor > PAGE, f"chat {c} turn {turn}: cached {cached} < {floor}"
    served = [b - a for a, b in zip(before, _admitted(workers))]
    assert sum(served) == CHATS * TURNS and min(served) >= TURNS, served  # each worker holds at least one chat
    for w in workers:
        flush(w)
        raas = w.get("/get_server_info")["internal_states"][0]["raas"]
        assert raas["evicted_pages_total"] > 0  # every worker evicted reasoning pages
        assert raas["free_tokens"] + raas["evictable_tokens"] == raas["pool_tokens"]
