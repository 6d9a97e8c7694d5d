"""RaaS at page sizes 1 and 64 (16 is covered by test_raas_eviction): exact without eviction, bounded and equal to
the masked reference with eviction, no leak."""

from __future__ import annotations

import pytest

from conftest import STRICT_ENV, serve
from raas_helpers import bound, gen, masked_reference_error

PROMPT = [1] + list(range(200, 250))  # 51 tokens


@pytest.fixture(scope="module", params=[1, 64])
def paged(request, model_dir, tmp_path_factory):
    ps = request.param
    srv = serve(
        model_dir,
        "--kv-policy", "raas", "--page-size", str(ps), "--raas-budget", str(4 * 64),
        tmp=tmp_path_factory.mktemp(f"raas_p{ps}"),
        env=STRICT_ENV,
    )
    yield srv, ps
    srv.stop()


def test_page_size_is_used(paged):
    server, ps = paged
    assert server.get("/get_server_info")["raas"]["page_size"] == ps


def test_exact_without_eviction(paged):
    server, ps = paged
    out = gen(server, PROMPT, 120)  # server budget 256 >= 120
    assert out["meta_info"]["raas"]["evicted_pages"] == 0
    assert gen(server, PROMPT, 120, kv_policy="dense")["output_ids"] == out["output_ids"]


def test_eviction_bounded_and_matches_masked_reference(paged, hf):
    server, ps = paged
    budget = 2 * ps if ps > 1 else 24
    out = gen(server, PROMPT, 400, raas_budget=budget, raas_trace=True)
    raas = out["meta_info"]["raas"]
    assert raas["evicted_pages"] >= 3
    assert raas["peak_kv_tokens"] <= bound(len(PROMPT), budget, ps)
    assert masked_reference_error(hf, PROMPT, out) < 1e-3


def test_no_leak(paged):
    server, _ = paged
    info = server.get("/get_server_info")["internal_states"][0]["raas"]
    assert info["running_requests"] == 0
    assert info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"]
