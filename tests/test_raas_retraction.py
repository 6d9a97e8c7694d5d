"""Retraction with RaaS (SGLang's SGLANG_TEST_RETRACT forces one retraction every few decode steps): a retracted
request with evictions completes, stays within its bound after the re-prefill trim and leaks nothing; one without
evictions gives the same greedy output as an uninterrupted run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import STRICT_ENV, serve
from raas_helpers import bound, gen, hf_logprobs


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    env = {**STRICT_ENV, "SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": "37"}
    srv = serve(
        model_dir, "--kv-policy", "raas", "--raas-budget", "256", "--enable-metrics",
        tmp=tmp_path_factory.mktemp("retract"), env=env,
    )
    yield srv
    srv.stop()


def test_retracted_requests_complete_bounded_and_exact(server, hf):
    jobs = [
        ([1] + list(range(60, 100)), 320, {"raas_budget": 32}),
        ([1] + list(range(300, 330)), 200, {"raas_budget": 256}),  # budget >= output: no eviction
        ([1] + list(range(120, 150)), 300, {"raas_budget": 48}),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(lambda j: gen(server, j[0], j[1], **j[2]), jobs))
    assert sum(o["meta_info"]["num_retractions"] for o in outs) >= 2
    for (ids, n, custom), out in zip(jobs, outs):
        raas = out["meta_info"]["raas"]
        assert out["meta_info"]["completion_tokens"] == n
        assert raas["peak_kv_tokens"] <= bound(len(ids), custom["raas_budget"])
        if custom["raas_budget"] >= n:
            assert raas["evicted_pages"] == 0
            full = ids + out["output_ids"]
            lp = hf_logprobs(hf, full, torch.tril(torch.ones(len(full), len(full), dtype=torch.bool)))
            assert out["output_ids"] == lp[len(ids) - 1 : -1].argmax(-1).tolist()
        else:
            assert raas["evicted_pages"] > 0
    retracted = [o for (_, _, c), o in zip(jobs, outs) if c["raas_budget"] < 256 and o["meta_info"]["num_retractions"]]
    assert retracted, "no request with evictions was retracted"
    for (ids, n, custom), out in zip(jobs, outs):
        # evictions are counted across retractions: a request holding L pages evicted every page beyond them
        pages = -(-(len(ids) + n) // 16) - -(-len(ids) // 16)
        if custom["raas_budget"] < 256:
            assert out["meta_info"]["raas"]["evicted_pages"] >= pages - custom["raas_budget"] // 16


def test_no_leak_after_retractions(server):
    info = server.get("/get_server_info")["internal_states"][0]["raas"]
    assert info["running_requests"] == 0 and info["evicted_pages_total"] > 0
    assert info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"]


def test_prometheus_metrics(server):
    import re
    import urllib.request

    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    evicted = re.search(r"^sglang:raas_evicted_pages_total\{[^}]*\} ([0-9.e+]+)$", text, re.M)
    assert evicted and float(evicted.group(1)) > 0, text[:2000]
    assert re.search(r"^sglang:raas_resident_pages\{", text, re.M)
