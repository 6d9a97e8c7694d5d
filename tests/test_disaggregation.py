"""Prefill/decode (PD) disaggregation: a RaaS decode server behind a dense prefill server and SGLang's router.

The deployment: `--disaggregation-mode prefill` (dense, page 16) and `--disaggregation-mode decode --kv-policy raas`,
KV moved by mooncake over loopback TCP (`--disaggregation-transfer-backend mooncake_tcp`, PyPI's non-CUDA
transfer engine; `make setup`), requests sent through `python -m sglang_router.launch_router --pd-disaggregation`.
The decode server pins each transferred prompt and evicts decode pages as a single server does; SGLang forces
retractions on it (`SGLANG_TEST_RETRACT`), and a retracted request resumes from its host copy
(`--disaggregation-decode-retraction-backup cpu_tensor`) with only its pinned and kept pages
(patches/disaggregation.py). Every SGLang strict KV check is on in both servers. MLA (a tiny DeepSeek-V2, its latent
pages moved and resumed the same way) is `slow`.
"""

from __future__ import annotations

import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest
from conftest import REPO, STRICT_ENV, serve_all
from raas_helpers import bound, flush, gen, masked_reference_error

from raas_sglang.dev.launch import Server, free_port, start_pd_router

PD_LIBS = REPO / ".venv" / "pd-libs"  # Debian's libibverbs1 and libnl, unpacked by `make setup` when missing
BUDGET = 256  # the decode server's (and the shared single server's) budget
PROMPT = [1] + [(i * 37) % 480 + 20 for i in range(99)]
# (prompt, output tokens, custom_params): two evict (budgets 32 and 48), one does not (budget >= output)
JOBS = [
    ([1] + list(range(60, 100)), 320, {"raas_budget": 32, "raas_trace": True}),
    ([1] + list(range(300, 330)), 200, {"raas_budget": 256, "raas_trace": True}),
    ([1] + list(range(120, 150)), 300, {"raas_budget": 48, "raas_trace": True}),
]


class PD(NamedTuple):
    router: Server
    prefill: Server
    decode: Server
    bootstrap_port: int


def pd_gen(pd: PD, ids: list[int], n: int, **custom) -> dict:
    """What the router does, by hand (its PD mode drops `sampling_params.custom_params`: see the last test): the
    same request to both servers with one bootstrap room; the decode server's answer."""
    body = {"input_ids": ids, "return_logprob": True, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": pd.bootstrap_port, "bootstrap_room": random.getrandbits(62),
            "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True, "custom_params": custom}}
    with ThreadPoolExecutor(2) as pool:
        prefill = pool.submit(pd.prefill.post, "/generate", body)
        out = pool.submit(pd.decode.post, "/generate", body).result()
        prefill.result()
    return out


def pd_env(**extra: str) -> dict[str, str]:
    """Strict KV checks, mooncake and the bootstrap server on loopback, and the unpacked libraries if any."""
    env = {**STRICT_ENV, "SGLANG_HOST_IP": "127.0.0.1", **extra}
    dirs = [str(d) for d in (PD_LIBS / "usr/lib/x86_64-linux-gnu", PD_LIBS / "lib/x86_64-linux-gnu") if d.is_dir()]
    if dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*dirs, os.environ.get("LD_LIBRARY_PATH", "")])
    return env


@pytest.fixture(scope="module")
def pd(model_dir, tmp_path_factory):
    boot = free_port()
    transfer = ("--disaggregation-transfer-backend", "mooncake_tcp")
    servers = serve_all(model_dir, {
        "prefill": ((*transfer, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(boot),
                     "--page-size", "16"), tmp_path_factory.mktemp("pd_prefill"), pd_env()),
        "decode": ((*transfer, "--disaggregation-mode", "decode", "--kv-policy", "raas", "--raas-budget", str(BUDGET),
                    "--disaggregation-decode-retraction-backup", "cpu_tensor"), tmp_path_factory.mktemp("pd_decode"),
                   pd_env(SGLANG_TEST_RETRACT="1", SGLANG_TEST_RETRACT_INTERVAL="37")),
    })
    try:
        router = start_pd_router(servers["prefill"].url, boot, servers["decode"].url,
                                 log_path=tmp_path_factory.mktemp("pd_router") / "router.log")
    except BaseException:
        for srv in servers.values():
            srv.stop()
        raise
    yield PD(router, servers["prefill"], servers["decode"], boot)
    for srv in (router, *servers.values()):
        srv.stop()


def pool_info(server: Server) -> dict:
    return server.get("/get_server_info")["internal_states"][0]["raas"]


def test_decode_server_equals_a_single_server_through_retractions(pd, raas_server, hf):
    """Three concurrent requests, retracted on the decode server every 37 steps: each gives the
    same output ids and eviction trace as on a single RaaS server (which never retracts them), stays within its
    bound, and counts each eviction once; a retracted request with evictions resumed from its host copy with only
    its kept pages (no recompute: no bounded re-prefill, and its log-probs equal the masked reference); the decode
    allocator's low water never exceeds the requests' bounds together."""
    flush(pd.decode)
    before = pool_info(pd.decode)
    with ThreadPoolExecutor(len(JOBS)) as pool:
        outs = list(pool.map(lambda j: pd_gen(pd, j[0], j[1], **j[2]), JOBS))
    singles = [gen(raas_server, ids, n, **custom) for ids, n, custom in JOBS]
    for (ids, n, custom), out, single in zip(JOBS, outs, singles):
        raas = out["meta_info"]["raas"]
        assert out["meta_info"]["completion_tokens"] == n
        assert out["output_ids"] == single["output_ids"]
        assert raas["trace"] == single["meta_info"]["raas"]["trace"]
        assert raas["peak_kv_tokens"] <= bound(len(ids), custom["raas_budget"])
        pages = -(-(len(ids) + n - 1) // 16) - -(-len(ids) // 16)
        assert raas["evicted_pages"] == max(0, pages - custom["raas_budget"] // 16) == len(raas["trace"])
        assert raas["bounded_reprefills"] == 0  # the KV came back from the host copy, nothing was recomputed
    resumed = [(j, o) for j, o in zip(JOBS, outs) if o["meta_info"]["num_retractions"] and o["meta_info"]["raas"]["evicted_pages"]]
    assert resumed, [o["meta_info"]["num_retractions"] for o in outs]
    for (ids, _, _), out in resumed:
        assert masked_reference_error(hf, ids, out) < 1e-3
    resumes = re.findall(r"from its host copy: (\d+) of (\d+) pages allocated \((\d+) evicted before\)",
                         pd.decode.log_text())
    assert any(int(evicted) > 0 and int(kept) + int(evicted) == int(total) for kept, total, evicted in resumes)
    info = pool_info(pd.decode)
    held = before["free_tokens"] - info["kv_free_low_water_tokens"]
    assert held <= sum(bound(len(ids), c["raas_budget"]) for ids, _, c in JOBS), (held, info)


@pytest.mark.parametrize("budget", [32, 64])
def test_bound_is_exact_on_the_decode_servers_allocator(pd, budget):
    """One request alone after a flush: the decode server's allocator, right after each decode step's allocation,
    holds exactly the transferred prompt's pages + the budget (a dense request on the same server: everything)."""
    flush(pd.decode)
    pool = pool_info(pd.decode)
    assert pool["free_tokens"] == pool["pool_tokens"] and pool["kv_free_low_water_tokens"] is None
    out = pd_gen(pd, PROMPT, 300, raas_budget=budget)
    assert out["meta_info"]["raas"]["evicted_pages"] > 0
    assert pool["free_tokens"] - pool_info(pd.decode)["kv_free_low_water_tokens"] == bound(len(PROMPT), budget)
    flush(pd.decode)
    pd_gen(pd, PROMPT, 300, kv_policy="dense")
    low = pool_info(pd.decode)["kv_free_low_water_tokens"]
    assert pool["free_tokens"] - low == -(-(len(PROMPT) + 299) // 16) * 16


def test_router_serves_with_the_decode_servers_settings_and_both_sides_end_leak_free(pd):
    """Through SGLang's router (`--pd-disaggregation`): `/generate` and the OpenAI chat endpoint are served and the
    decode server evicts under its own `--raas-budget`. NOTE: sglang-router 0.3.2 in PD mode does not forward
    `sampling_params.custom_params`, so per-request RaaS settings do not reach the decode server through it (they
    do when the request is sent to both servers directly, as `pd_gen` does); this test fails once a router
    forwards them. Afterwards both servers flush clean: the decode allocator's free count is back to the pool,
    and the prefill server, whose strict idle check compares SGLang's free + cached counts with its pool, still
    serves."""
    flush(pd.decode)
    out = gen(pd.router, PROMPT, 400, raas_budget=32, raas_trace=True)
    raas = out["meta_info"]["raas"]
    assert (raas["budget_tokens"], "trace" in raas) == (BUDGET, False)  # the server's budget: custom_params dropped
    assert raas["evicted_pages"] == -(-(len(PROMPT) + 399) // 16) - -(-len(PROMPT) // 16) - BUDGET // 16
    chat = pd.router.post("/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "Think about prime numbers for a while."}],
        "max_tokens": 300, "temperature": 0, "ignore_eos": True})
    assert chat["usage"]["completion_tokens"] == 300
    flush(pd.decode)
    info = pool_info(pd.decode)
    assert info["free_tokens"] == info["pool_tokens"] and info["running_requests"] == 0
    assert info["evicted_pages_total"] > 0
    flush(pd.prefill)
    assert len(pd_gen(pd, PROMPT[:20], 8)["output_ids"]) == 8


@pytest.mark.slow
def test_mla_decode_server_resumes_bounded_and_exact(tmp_path):
    """MLA under PD disaggregation: a tiny DeepSeek-V2 prefilled by a dense triton server (under the interpreter)
    and decoded by a RaaS server on torch_native, the latent pages moved by mooncake (the decode server runs no
    extend: a resumed request comes back from its host copy).
    Three requests, retracted on the decode server every 37 steps: each stays within its bound, a retracted one with
    evictions resumes from its host copy with only its kept latent pages (nothing recomputed), and every output
    equals the Hugging Face model masked to what was kept; the decode pool is leak-free afterwards."""
    import torch
    from transformers import AutoModelForCausalLM

    from raas_sglang.dev import family_models

    path = family_models.build("deepseek-v2")
    for side in ("prefill", "decode"):
        (tmp_path / side).mkdir()
    boot = free_port()
    transfer = ("--disaggregation-transfer-backend", "mooncake_tcp")
    servers = serve_all(path, {
        "prefill": ((*transfer, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(boot),
                     "--page-size", "16", "--attention-backend", "triton"), tmp_path / "prefill",
                    pd_env(TRITON_INTERPRET="1")),
        "decode": ((*transfer, "--disaggregation-mode", "decode", "--kv-policy", "raas", "--raas-budget", str(BUDGET),
                    "--attention-backend", "torch_native", "--disaggregation-decode-retraction-backup", "cpu_tensor"),
                   tmp_path / "decode", pd_env(SGLANG_TEST_RETRACT="1", SGLANG_TEST_RETRACT_INTERVAL="37")),
    })
    try:
        pd = PD(None, servers["prefill"], servers["decode"], boot)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        prompt = [1] + list(range(30, 70))  # 41 tokens: 3 pinned pages
        budgets = (32, 48, 256)
        with ThreadPoolExecutor(len(budgets)) as pool:
            outs = list(pool.map(lambda b: pd_gen(pd, prompt, 120, raas_budget=b, raas_trace=True), budgets))
        for budget, out in zip(budgets, outs):
            raas = out["meta_info"]["raas"]
            pages = -(-(len(prompt) + 119) // 16) - -(-len(prompt) // 16)
            assert raas["evicted_pages"] == max(0, pages - budget // 16) == len(raas["trace"]), raas
            assert raas["peak_kv_tokens"] <= bound(len(prompt), budget) and raas["bounded_reprefills"] == 0, raas
            assert masked_reference_error(hf, prompt, out) < 1e-3, budget
        assert any(o["meta_info"]["num_retractions"] and o["meta_info"]["raas"]["evicted_pages"] for o in outs)
        resumes = re.findall(r"from its host copy: (\d+) of (\d+) pages allocated \((\d+) evicted before\)",
                             pd.decode.log_text())
        assert any(int(evicted) > 0 and int(kept) + int(evicted) == int(total) for kept, total, evicted in resumes)
        flush(pd.decode)
        info = pool_info(pd.decode)
        assert info["free_tokens"] == info["pool_tokens"] and info["evicted_pages_total"] > 0, info
    finally:
        for srv in servers.values():
            srv.stop()
