"""Adding a policy is one file and one test: `tests/policy_lifo.py` registers "lifo", and the shared RaaS server
(started with `RAAS_POLICY_MODULES` pointing at that file: conftest.raas_server) serves it per request, with the
same physical eviction, memory bound (I4) and exactness against the masked reference (I5) as the built-in
policies. A server whose environment lacks the file refuses the name (HTTP 400), so the policy really came from it."""

from __future__ import annotations

import urllib.error

import pytest

from raas_helpers import bound, gen, masked_reference_error

PROMPT = [1] + list(range(30, 70))  # 41 tokens: pages 0..2 pinned; decode pages from 3
PS, BUDGET = 16, 48  # 3 decode pages


def test_registered_policy_is_served_and_evicts_by_its_own_rule(raas_server, hf):
    out = gen(raas_server, PROMPT, 200, kv_policy="lifo", raas_budget=BUDGET, raas_trace=True)
    raas = out["meta_info"]["raas"]
    assert raas["policy"] == "lifo" and raas["evicted_pages"] >= 5
    # each eviction happens when a token opens page p at the limit; the newest resident page, p - 1, is never a
    # candidate, so lifo drops p - 2 (raas, by contrast, drops the oldest-stamped page)
    for pos, first, end in raas["trace"]:
        assert pos % PS == 0 and first == (pos // PS - 2) * PS and end == first + PS
    assert raas["peak_kv_tokens"] <= bound(len(PROMPT), BUDGET)
    assert masked_reference_error(hf, PROMPT, out) < 1e-3
    info = raas_server.get("/get_server_info")["internal_states"][0]["raas"]
    assert info["running_requests"] == 0 and info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"]


def test_unregistered_name_is_refused_elsewhere(raas_server):
    """Control: the same request with a name no file registers is a 400, and the server keeps serving."""
    with pytest.raises(urllib.error.HTTPError) as err:
        gen(raas_server, PROMPT, 4, kv_policy="fifo")
    assert err.value.code == 400 and "custom_params.kv_policy: must be one of" in err.value.read().decode()
    assert gen(raas_server, PROMPT, 4, kv_policy="lifo")["meta_info"]["raas"]["policy"] == "lifo"
