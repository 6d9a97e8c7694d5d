"""RaaS without a radix tree (`--disable-radix-cache`, on the allow-list of `raas_sglang/refusals.py`): evicting
requests stay within their bound, attend exactly what they kept, and leave the pool leak-free; nothing is cached."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import STRICT_ENV, serve
from raas_helpers import bound, gen, masked_reference_error

PROMPT = [1] + list(range(30, 70))  # 41 tokens


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = serve(model_dir, "--kv-policy", "raas", "--raas-budget", "64", "--disable-radix-cache",
                tmp=tmp_path_factory.mktemp("no_radix"), env=STRICT_ENV)
    yield srv
    srv.stop()


def test_evicting_without_radix_cache(server, hf):
    jobs = [(PROMPT, 300, 32), ([1] + list(range(100, 140)), 250, 48), (PROMPT, 200, 64)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(lambda j: gen(server, j[0], j[1], raas_budget=j[2], raas_trace=True), jobs))
    for (prompt, _, budget), out in zip(jobs, outs):
        raas = out["meta_info"]["raas"]
        assert raas["evicted_pages"] >= 3
        assert raas["peak_kv_tokens"] <= bound(len(prompt), budget)
        assert masked_reference_error(hf, prompt, out) < 1e-3
        assert out["meta_info"]["cached_tokens"] == 0  # no tree: nothing is ever matched
    info = server.get("/get_server_info")
    assert info["disable_radix_cache"] is True
    state = info["internal_states"][0]["raas"]
    assert state["running_requests"] == 0 and state["evictable_tokens"] == 0
    assert state["free_tokens"] == state["pool_tokens"]
