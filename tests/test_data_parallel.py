"""RaaS under data parallel: a real `--dp-size 2` SGLang server on the CPU engine (SGLang's DP controller, two
replicas, each its own scheduler, allocator, radix tree and RaaS state), under SGLang's strict KV checks."""

from __future__ import annotations

import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import RAAS_SERVER_ARGS, STRICT_ENV, serve
from raas_helpers import flush

N = 16


@pytest.fixture(scope="module")
def dp2(model_dir, tmp_path_factory):
    # NOTE: SGLang's warmup request costs a DP launch ~14 s on 2 cores; the test's own requests warm it
    srv = serve(model_dir, *RAAS_SERVER_ARGS, "--dp-size", "2", "--enable-metrics", "--skip-server-warmup",
                tmp=tmp_path_factory.mktemp("dp2"), env=STRICT_ENV)
    yield srv
    srv.stop()


def _replicas(server) -> list[dict]:
    return [s["raas"] for s in server.get("/get_server_info")["internal_states"]]


def _run(server) -> list[dict]:
    def one(i):
        body = {"input_ids": [1] + list(range(30 + i, 60 + 2 * i)),
                "sampling_params": {"max_new_tokens": 96, "temperature": 0, "ignore_eos": True,
                                    "custom_params": {"raas_budget": 48, "raas_trace": True}}}
        return server.post("/generate", body)

    with ThreadPoolExecutor(N) as pool:
        return list(pool.map(one, range(N)))


def test_replicas_serve_evicting_requests(dp2, raas_server):
    """16 concurrent evicting requests spread over both replicas; each output and eviction trace equals the single
    server's (each replica runs its own RaaS state); after a flush both replicas' pools are leak-free; server
    info and the metrics show each replica."""
    before = [r["admitted_raas_total"] for r in _replicas(dp2)]
    ours, ref = _run(dp2), _run(raas_server)
    for a, b in zip(ours, ref):
        assert a["meta_info"]["raas"]["evicted_pages"] >= 2
        assert a["output_ids"] == b["output_ids"]
        assert a["meta_info"]["raas"]["trace"] == b["meta_info"]["raas"]["trace"]
    flush(dp2)
    replicas = _replicas(dp2)
    assert len(replicas) == 2
    served = [r["admitted_raas_total"] - n for r, n in zip(replicas, before)]
    assert sum(served) == N and min(served) > 0, served
    for r in replicas:
        assert r["evicted_pages_total"] > 0 and r["running_requests"] == 0
        assert r["free_tokens"] + r["evictable_tokens"] == r["pool_tokens"]
    with urllib.request.urlopen(dp2.url + "/metrics", timeout=30) as resp:
        metrics = resp.read().decode()
    lines = [line for line in metrics.splitlines() if line.startswith("sglang:raas_evicted_pages_total{")]
    by_replica = {int(line.split('dp_rank="')[1].split('"')[0]): float(line.split()[-1]) for line in lines}
    assert by_replica == {r["dp_rank"]: r["evicted_pages_total"] for r in replicas} and set(by_replica) == {0, 1}
    assert "Scheduler hit an exception" not in dp2.log_text()
