"""MLA (DeepSeek V2/V3/R1, Kimi K2) under RaaS, end to end through the real launcher on tiny random-weight DeepSeek
models (`raas_sglang.dev.family_models`): SGLang's triton backend under the Triton interpreter, and torch_native
(every extend through the absorbed path, `patches/mla_torch_native.py`; stock SGLang cannot prefill MLA there),
page 16, radix on, SGLang's strict KV checks.

An MLA layer keeps one latent row per token (c_KV then the roped k_pe, `MLATokenToKVPool`); decode attends to it
with the absorbed query, so a page of latent rows is what RaaS evicts, scores (Quest bounds in latent space) and
cuts out of the tree, exactly as a page of per-head K/V. What is shown here, with SGLang's instruments:
- budget >= output => token-identical to a dense request;
- with evictions, SGLang's allocator low-water mark is exactly pinned prompt pages + budget, and the log-probs
  equal the Hugging Face model (non-absorbed attention) masked to what the server kept, for every budgeted policy
  triton serves (raas, h2o, streaming);
- a later turn hits the radix cache (`cached_tokens`) and extends over it through SGLang's absorbed-MLA extend;
- the pool is leak-free afterwards;
- with `--raas-score exact` the plugin's kernel (`kernels/sparse_decode.py`, MLA shape) decodes, and its exact
  page mass drives raas and h2o side by side, each equal to the masked reference (`slow`).

- on torch_native, all five policies in one batch on one server: exact page mass for raas / h2o / streaming,
  latent Quest bounds selecting for quest / raas+quest.

DeepSeek-V2 (dense MLP) on triton with Quest scores (~3 min) and on torch_native (~1 min) runs in `make test`;
DeepSeek-V3 (MoE, noaux_tc routing), the exact-kernel servers, tensor parallel and
retraction (each on both backends) are `slow`.
"""

from __future__ import annotations

import time
import urllib.error

import pytest
import torch

from conftest import STRICT_ENV, serve
from raas_helpers import (
    assert_policies_bounded_and_exact, assert_raas_equals_dense, bound, flush, gen, gen_policies,
    masked_reference_error, streaming_window,
)
from raas_sglang.dev import family_models

PROMPT = [1] + list(range(30, 70))  # 41 tokens: pinned pages 0..2
BUDGET = 32
PS = 16


COMMON = ("--kv-policy", "raas", "--raas-budget", "256", "--attention-backend", "triton", "--chunked-prefill-size", "128")
# torch_native: every extend through the absorbed path (patches/mla_torch_native.py); exact page mass for the
# evicting policies, and, with a selecting policy as the server's, latent Quest bounds for quest / raas+quest
TORCH_NATIVE = ("--kv-policy", "raas+quest", "--raas-budget", "256", "--attention-backend", "torch_native",
                "--chunked-prefill-size", "128")
SERVERS = {  # name -> (model, flags, env)
    "deepseek-v2": ("deepseek-v2", COMMON, {"TRITON_INTERPRET": "1"}),
    "deepseek-v2-torch-native": ("deepseek-v2", TORCH_NATIVE, {}),
    "deepseek-v3": ("deepseek-v3", COMMON, {"TRITON_INTERPRET": "1"}),
    "deepseek-v3-torch-native": ("deepseek-v3", TORCH_NATIVE, {}),
}


@pytest.fixture(scope="module", params=["deepseek-v2", "deepseek-v2-torch-native",
                                        pytest.param("deepseek-v3", marks=pytest.mark.slow),
                                        pytest.param("deepseek-v3-torch-native", marks=pytest.mark.slow)])
def mla(request, tmp_path_factory):
    """(name, server, HF model): a budgeted server for the family's tiny model, on triton (`--kv-policy raas`, Quest
    scores, the default there) or torch_native (`--kv-policy raas+quest`: exact page mass for raas, h2o and
    streaming, the default there, and latent Quest bounds for the selecting policies)."""
    from transformers import AutoModelForCausalLM

    model, flags, env = SERVERS[request.param]
    path = family_models.build(model)
    srv = serve(path, *flags, tmp=tmp_path_factory.mktemp(f"mla_{request.param}"), env={**STRICT_ENV, **env})
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield request.param, srv, hf
    srv.stop()


def _info(srv) -> dict:
    return srv.get("/get_server_info")["internal_states"][0]["raas"]


def test_mla_exact_without_eviction(mla):
    """budget >= output: token-identical to a dense request on the same server, nothing evicted."""
    name, srv, _ = mla
    assert_raas_equals_dense(srv, PROMPT, 30, name)


def test_mla_bounded_and_masked_exact(mla):
    """With evictions: the allocator's low-water mark is exactly the bound, and the log-probs equal the HF model
    masked to what the server kept (and differ from the unmasked one: eviction changed what it saw)."""
    name, srv, hf = mla
    flush(srv)
    pool = _info(srv)
    out = gen(srv, PROMPT, 88, kv_policy="raas", raas_budget=BUDGET, raas_trace=True)  # pages 3..7 open: 3 evicted
    assert out["meta_info"]["raas"]["evicted_pages"] >= 3, name
    assert pool["free_tokens"] - _info(srv)["kv_free_low_water_tokens"] == bound(len(PROMPT), BUDGET), name
    assert masked_reference_error(hf, PROMPT, out) < 1e-3, name
    assert masked_reference_error(hf, PROMPT, out, dense=True) > 1e-3, name


def test_mla_baseline_policies_in_one_batch(mla):
    """h2o and streaming decode side by side in one batch, each within its bound and equal to the reference masked
    to what it kept (streaming also drops the prompt outside its sink page and recent window)."""
    name, srv, hf = mla
    policies = ("h2o", "streaming")
    outs = gen_policies(srv, PROMPT, 64, policies, BUDGET)
    for policy, out in zip(policies, outs):
        raas = out["meta_info"]["raas"]
        assert raas["policy"] == policy and raas["evicted_pages"] >= 2, (name, policy)  # pages 3..6 open
        assert raas["peak_kv_tokens"] <= bound(len(PROMPT), BUDGET)
        window = streaming_window(len(PROMPT), BUDGET, policy)
        assert masked_reference_error(hf, PROMPT, out, window=window) < 1e-3, (name, policy)


def test_mla_second_turn_hits_the_radix_cache(mla):
    """A second turn (the first turn's prompt and answer, then more) reuses the first turn's full pages from the
    tree (`cached_tokens`) and decodes over them through the absorbed-MLA extend, exactly as the HF model."""
    name, srv, hf = mla
    flush(srv)
    first = gen(srv, PROMPT, 24, kv_policy="raas", raas_budget=256)
    history = PROMPT + first["output_ids"]  # 65 tokens: 4 full pages the tree can hold
    second = gen(srv, history + [5, 6, 7], 8, kv_policy="raas", raas_budget=256)
    assert second["meta_info"]["cached_tokens"] == (len(history) // PS) * PS, name
    assert masked_reference_error(hf, history + [5, 6, 7], second, dense=True) < 1e-3, name


def test_mla_leak_free(mla):
    """Every slot is free or in the tree once idle; a flush frees everything."""
    name, srv, _ = mla
    deadline = time.monotonic() + 60
    while (info := _info(srv))["running_raas_requests"] or info["protected_tokens"]:
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
    assert info["evicted_pages_total"] > 0
    assert info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"], info
    # the pool was sized with the latent Quest bounds counted: pool + bounds fit what the pool alone would have
    # taken (one latent row of kv_lora_rank + rope per token and layer, float32 here), to within a page
    cell, per_page = 2 * (256 + 32) * 4, 2 * 2 * (256 + 32) * 4
    before, used = info["pool_tokens_before_bounds"], info["pool_tokens"] * cell + info["key_bounds_bytes"]
    assert before * cell - (PS * cell + per_page) * 3 < used <= before * cell, (before, info["pool_tokens"])
    flush(srv)
    flushed = _info(srv)
    assert flushed["free_tokens"] == flushed["pool_tokens"] and flushed["evictable_tokens"] == 0, name


LONG_PROMPT = [1] + [(i * 37) % 480 + 20 for i in range(149)]  # 150 tokens: two prefill chunks of 128; 10 pages


def test_mla_selecting_policies(mla):
    """torch_native keeps Quest page bounds in latent space for the selecting policies next to exact page mass for
    the evicting ones, so all five policies run on one MLA server, in one batch: quest holding every page equals
    dense and with 2 pages selects (differs from dense, evicts nothing, holds O(N)); raas+quest equals raas while
    its selection covers the prompt, and differs from it once it selects 2 of a long prompt's 10 pages; raas+quest,
    h2o and streaming are bounded and equal the masked reference, and so does raas after the long prompt's chunked
    prefill (two absorbed extends, the second over the first chunk's latent rows). On triton a selecting request
    is refused (HTTP 400) and the server serves on."""
    from concurrent.futures import ThreadPoolExecutor

    name, srv, hf = mla
    if not name.endswith("torch-native"):
        with pytest.raises(urllib.error.HTTPError) as err:
            gen(srv, PROMPT, 4, kv_policy="quest", raas_budget=BUDGET)
        assert err.value.code == 400 and "'quest'" in err.value.read().decode(), name
        assert len(gen(srv, PROMPT, 4)["output_ids"]) == 4
        return
    asks = ((PROMPT, {"kv_policy": "dense"}), (PROMPT, {"kv_policy": "quest", "raas_budget": 256}),
            (PROMPT, {"kv_policy": "quest", "raas_budget": BUDGET}), (PROMPT, {"kv_policy": "raas", "raas_budget": 48}),
            (PROMPT, {"kv_policy": "raas+quest", "raas_budget": 48, "raas_trace": True}),
            (PROMPT, {"kv_policy": "h2o", "raas_budget": BUDGET, "raas_trace": True}),
            (PROMPT, {"kv_policy": "streaming", "raas_budget": BUDGET, "raas_trace": True}),
            (LONG_PROMPT, {"kv_policy": "raas", "raas_budget": BUDGET, "raas_trace": True}),
            (LONG_PROMPT, {"kv_policy": "raas+quest", "raas_budget": BUDGET}))
    with ThreadPoolExecutor(len(asks)) as pool:  # one batch
        dense, full, small, raas, rq, h2o, streaming, long_raas, long_rq = pool.map(
            lambda a: gen(srv, a[0], 96, **a[1]), asks)
    assert full["output_ids"] == dense["output_ids"] and full["meta_info"]["raas"]["evicted_pages"] == 0, name
    assert small["output_ids"] != dense["output_ids"] and small["meta_info"]["raas"]["evicted_pages"] == 0, name
    assert small["meta_info"]["raas"]["peak_kv_tokens"] >= len(PROMPT) + 95
    assert rq["output_ids"] == raas["output_ids"], name  # 3 prompt pages <= 3 selected: the same attention
    assert long_rq["output_ids"] != long_raas["output_ids"], name  # 2 of 10 prompt pages selected per layer
    assert long_rq["meta_info"]["raas"]["peak_kv_tokens"] <= bound(len(LONG_PROMPT), BUDGET)
    assert long_raas["meta_info"]["raas"]["evicted_pages"] >= 2
    assert masked_reference_error(hf, LONG_PROMPT, long_raas) < 1e-3, name
    for out, budget in ((rq, 48), (h2o, BUDGET), (streaming, BUDGET)):
        meta = out["meta_info"]["raas"]
        assert meta["evicted_pages"] >= 2 and meta["peak_kv_tokens"] <= bound(len(PROMPT), budget), meta
        window = streaming_window(len(PROMPT), budget, meta["policy"])
        assert masked_reference_error(hf, PROMPT, out, window=window) < 1e-3, (name, meta["policy"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deepseek-v2", "deepseek-v3"])
def test_mla_exact_kernel_scores(name, tmp_path):
    """`--raas-score exact`: the plugin's kernel decodes the latent pages (K = c_KV + k_pe, V = c_KV) and its page
    mass scores them; raas and h2o in one batch are each bounded and equal the reference masked to what they
    kept. (`make test` runs the kernel's MLA shape against its torch reference: tests/test_kernels.py.)"""
    from transformers import AutoModelForCausalLM

    path = family_models.build(name)
    srv = serve(path, *COMMON, "--raas-score", "exact", tmp=tmp_path, env={**STRICT_ENV, "TRITON_INTERPRET": "1"})
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        _exact_kernel_batch(name, srv, hf)
    finally:
        srv.stop()


def _exact_kernel_batch(name, srv, hf):
    flush(srv)
    pool = _info(srv)
    outs = gen_policies(srv, PROMPT, 64, ("raas", "h2o"), BUDGET)
    info = _info(srv)
    assert info["exact_kernel"] is True and info["exact_kernel_layer_calls"] >= 2 * 40
    assert pool["free_tokens"] - info["kv_free_low_water_tokens"] <= 2 * bound(len(PROMPT), BUDGET)
    for out in outs:
        raas = out["meta_info"]["raas"]
        assert raas["evicted_pages"] >= 2 and raas["peak_kv_tokens"] == bound(len(PROMPT), BUDGET), (name, raas)
        assert masked_reference_error(hf, PROMPT, out) < 1e-3, (name, raas["policy"])


BACKEND_ENV = {"triton": {"TRITON_INTERPRET": "1"}, "torch_native": {}}


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKEND_ENV))
def test_mla_tensor_parallel(backend, tmp_path):
    """`--tp-size 2`: each rank holds half the query heads over the same (replicated) latent cache; the ranks
    combine their page scores (Quest on triton, exact mass on torch_native) and agree every step
    (`RAAS_CHECK_RANKS=1`); raas and h2o in one batch are bounded and equal the HF reference masked to what they
    kept."""
    from transformers import AutoModelForCausalLM

    path = family_models.build("deepseek-v2")
    srv = serve(path, "--kv-policy", "raas", "--raas-budget", "256", "--attention-backend", backend,
                "--tp-size", "2", tmp=tmp_path, env={**STRICT_ENV, **BACKEND_ENV[backend], "RAAS_CHECK_RANKS": "1"})
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        assert_policies_bounded_and_exact(srv, hf, PROMPT, 72, ("raas", "h2o"), BUDGET, 2)
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(BACKEND_ENV))
def test_mla_retraction_resumes_bounded_and_exact(backend, tmp_path):
    """SGLang retracts every 37 decode steps: a request with evictions resumes by recomputing only its pinned prompt
    and kept latent pages (on triton the MHA prefill for the first run, the absorbed extend over the hole-free
    prefix after it; on torch_native the absorbed extend throughout), counts each eviction once and equals the
    masked reference replaying each re-prefill's masks."""
    from transformers import AutoModelForCausalLM

    path = family_models.build("deepseek-v2")
    srv = serve(path, "--kv-policy", "raas", "--raas-budget", "256", "--attention-backend", backend, tmp=tmp_path,
                env={**STRICT_ENV, **BACKEND_ENV[backend], "SGLANG_TEST_RETRACT": "1",
                     "SGLANG_TEST_RETRACT_INTERVAL": "37"})
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        policies = ("raas", "h2o", "streaming")  # SGLang retracts only from a batch of more than one
        outs = gen_policies(srv, PROMPT, 120, policies, BUDGET)
        assert any(o["meta_info"]["raas"]["bounded_reprefills"] for o in outs), [o["meta_info"] for o in outs]
        for policy, out in zip(policies, outs):
            raas = out["meta_info"]["raas"]
            assert raas["peak_kv_tokens"] <= bound(len(PROMPT), BUDGET)
            assert raas["evicted_pages"] == len(raas["trace"]) == len({(lo, hi) for _, lo, hi in raas["trace"]}) > 0
            window = streaming_window(len(PROMPT), BUDGET, policy)
            assert masked_reference_error(hf, PROMPT, out, window=window) < 1e-3, policy
    finally:
        srv.stop()
