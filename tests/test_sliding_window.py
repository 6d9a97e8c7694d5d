"""Sliding-window models under RaaS, strict KV checks: a windowed layer attends the resident tokens inside its window,
a full layer every resident token, on the decode path and when a retracted request with holes is re-prefilled (the
window is masked by logical positions there, `reprefill_attention.windowed_extend`). A tiny Gemma 3 (5 window
layers of 32 tokens + 1 full layer) on torch_native; on triton under the interpreter a tiny Gemma 3, a tiny gpt-oss
(sinks) on one pool and on SGLang's hybrid SWA pool (`patches/swa_pool.py`), a tiny Gemma 4 on the hybrid pool;
tensor parallel 2 for Gemma 3 on
torch_native and gpt-oss on the hybrid pool. The served/refused checks of the families are in
tests/test_model_matrix.py; the hybrid allocator's frees in tests/test_swa_pool.py."""

from __future__ import annotations

import re
import time
import urllib.error

import pytest
import torch

from conftest import STRICT_ENV, serve, serve_all
from raas_helpers import (
    assert_policies_bounded_and_exact, assert_raas_equals_dense, bound, flush, gen, gen_policies,
    masked_reference_error, streaming_window,
)
from raas_sglang.dev import family_models
from raas_sglang.dev.launch import ALL_KV_CHECKS

PROMPT = [1] + list(range(30, 70))  # 41 tokens: pinned pages 0..2
BUDGET = 32


@pytest.mark.slow
def test_windowed_retraction_and_policies(tmp_path):
    """SGLang retracts every 37 decode steps: raas, h2o and streaming requests with evictions resume by recomputing
    their pinned prompt and kept pages, the window layers masking by logical position over the holes; each stays
    within its bound and equals the HF model (its window in its sliding layers) masked to what it kept."""
    from transformers import AutoModelForCausalLM

    path = family_models.build("gemma3")
    srv = serve(path, "--kv-policy", "raas", "--raas-budget", "256", tmp=tmp_path,
                env={**STRICT_ENV, "SGLANG_TEST_RETRACT": "1", "SGLANG_TEST_RETRACT_INTERVAL": "37"})
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        policies = ("raas", "h2o", "streaming")
        outs = gen_policies(srv, PROMPT, 200, policies, BUDGET)
        # a bounded re-prefill over holes ran (the windowed layers masked by logical position there)
        assert any(o["meta_info"]["raas"]["bounded_reprefills"] for o in outs), [o["meta_info"] for o in outs]
        for policy, out in zip(policies, outs):
            raas = out["meta_info"]["raas"]
            assert raas["evicted_pages"] >= 8 and raas["peak_kv_tokens"] <= bound(len(PROMPT), BUDGET), raas
            window = streaming_window(len(PROMPT), BUDGET, policy)
            assert masked_reference_error(hf, PROMPT, out, window=window) < 1e-3, policy
    finally:
        srv.stop()


# -- triton: one KV pool, window lists rebuilt from the resident set -------------------------------------------------

TRITON = ("--kv-policy", "raas", "--raas-budget", "256", "--attention-backend", "triton", "--chunked-prefill-size",
          "128", "--disable-cuda-graph")
TRITON_FAMILIES = {  # name: (model, flags, env)
    # SGLang turns Gemma 3's hybrid pool off itself
    "gemma3": ("gemma3", (), {}),
    "gpt-oss": ("gpt-oss", ("--disable-hybrid-swa-memory", "--moe-runner-backend", "triton"), {}),
    # gpt-oss's default: window layers in their own pool (patches/swa_pool.py). SGLang sweeps the windows every
    # step, so its sweep crosses the holes; every KV and tree check it has, its SWA guards raising
    "gpt-oss-hybrid": ("gpt-oss", ("--moe-runner-backend", "triton"),
                       {**ALL_KV_CHECKS, "SGLANG_SWA_EVICTION_INTERVAL": "1"}),
    # Gemma 4 gets the hybrid pool too (SGLang serves it on triton, not torch_native); its full layers read V = K
    "gemma4-hybrid": ("gemma4", (), {**ALL_KV_CHECKS, "SGLANG_SWA_EVICTION_INTERVAL": "1"}),
}


@pytest.fixture(scope="module", params=sorted(TRITON_FAMILIES))
def windowed_triton(request, tmp_path_factory):
    """(name, server, HF model): a `--kv-policy raas` server on triton (Quest scores) for the family's tiny model,
    under the Triton interpreter."""
    from transformers import AutoModelForCausalLM

    model, flags, env = TRITON_FAMILIES[request.param]
    path = family_models.build(model)
    srv = serve(path, *TRITON, *flags, tmp=tmp_path_factory.mktemp(request.param),
                env={**STRICT_ENV, "TRITON_INTERPRET": "1", **env})
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield request.param, srv, hf
    srv.stop()


def _info(srv) -> dict:
    return srv.get("/get_server_info")["internal_states"][0]["raas"]


@pytest.mark.slow
def test_triton_window_exact_without_eviction(windowed_triton):
    """budget >= output: token-identical to a dense request in the same batch, nothing evicted."""
    name, srv, _ = windowed_triton
    assert_raas_equals_dense(srv, PROMPT, 40, name)


@pytest.mark.slow
def test_triton_window_bounded_and_masked_exact(windowed_triton):
    """With evictions (holes inside the window layers' 31 tokens too): the allocator's low-water mark is exactly
    the bound, and the log-probs equal the HF model masked to what the server kept, with triton's decode window
    (one token shorter than the model's: upstream's own)."""
    name, srv, hf = windowed_triton
    flush(srv)
    pool = _info(srv)
    outs = gen_policies(srv, PROMPT, 100, ("raas", "h2o", "streaming"), BUDGET)
    low = _info(srv)["kv_free_low_water_tokens"]
    assert pool["free_tokens"] - low <= 3 * bound(len(PROMPT), BUDGET), name
    for out in outs:
        raas = out["meta_info"]["raas"]
        assert raas["evicted_pages"] >= 4 and raas["peak_kv_tokens"] == bound(len(PROMPT), BUDGET), (name, raas)
        window = streaming_window(len(PROMPT), BUDGET, raas["policy"])
        assert masked_reference_error(hf, PROMPT, out, window=window, triton=True) < 1e-3, (name, raas["policy"])
        assert masked_reference_error(hf, PROMPT, out, dense=True, triton=True) > 1e-3, name


@pytest.mark.slow
def test_triton_window_second_turn_and_leak_free(windowed_triton):
    """A second turn reuses the first turn's full pages from the tree (`cached_tokens`) and equals the HF model;
    once idle every slot is free or in the tree, and a flush frees everything."""
    name, srv, hf = windowed_triton
    flush(srv)
    first = gen(srv, PROMPT, 24, raas_budget=256)
    history = PROMPT + first["output_ids"]  # 65 tokens: 4 full pages the tree can hold
    second = gen(srv, history + [5, 6, 7], 8, raas_budget=256)
    assert second["meta_info"]["cached_tokens"] == (len(history) // 16) * 16, name
    # NOTE: the first turn decoded positions 41..63 (one window key less), reused as they are
    assert masked_reference_error(hf, history + [5, 6, 7], second, dense=True, triton=True,
                                  decoded=(len(PROMPT), 64)) < 1e-3, name
    info = _info(srv)
    assert info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"], info
    if "swa_pool_tokens" in info:  # the window-layer pool of a hybrid allocator, SGLang's count as well
        assert info["swa_free_tokens"] + info["swa_evictable_tokens"] == info["swa_pool_tokens"], info
    assert ("swa_pool_tokens" in info) == name.endswith("hybrid"), info
    flush(srv)
    flushed = _info(srv)
    assert flushed["free_tokens"] == flushed["pool_tokens"] and flushed["evictable_tokens"] == 0, name
    assert flushed.get("swa_free_tokens") == flushed.get("swa_pool_tokens"), flushed


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt-oss", "gpt-oss-hybrid", "gemma4-hybrid"])
def test_triton_window_retraction_resumes_bounded_and_exact(tmp_path, family):
    """gpt-oss and Gemma 4 on triton through retractions (SGLang retracts every 37 decode steps): each request with
    evictions resumes by recomputing only its pinned prompt and kept pages; the window layers' extend over the holes is
    recomputed by logical position, with the sinks (`reprefill_attention.triton_windowed_extend`); each stays within
    its bound and equals the reference replaying each re-prefill's masks."""
    from transformers import AutoModelForCausalLM

    model, flags, env = TRITON_FAMILIES[family]
    path = family_models.build(model)
    srv = serve(path, *TRITON, *flags, tmp=tmp_path,
                env={**STRICT_ENV, "TRITON_INTERPRET": "1", "SGLANG_TEST_RETRACT": "1",
                     "SGLANG_TEST_RETRACT_INTERVAL": "37", **env})
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        policies = ("raas", "h2o")  # SGLang retracts only from a batch of more than one
        outs = gen_policies(srv, PROMPT, 100, policies, BUDGET)
        assert any(o["meta_info"]["raas"]["bounded_reprefills"] for o in outs), [o["meta_info"] for o in outs]
        for out in outs:
            raas = out["meta_info"]["raas"]
            assert raas["evicted_pages"] >= 4 and raas["peak_kv_tokens"] <= bound(len(PROMPT), BUDGET), raas
            assert masked_reference_error(hf, PROMPT, out, triton=True) < 1e-3, raas["policy"]
        info = _info(srv)
        assert info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"], info
        if "swa_pool_tokens" in info:
            assert info["swa_free_tokens"] + info["swa_evictable_tokens"] == info["swa_pool_tokens"], info
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def faulty_hybrid(tmp_path_factory):
    """gpt-oss on the hybrid pool, one server per fault injected into the plugin's free of a victim page."""
    model, flags, env = TRITON_FAMILIES["gpt-oss-hybrid"]
    path = family_models.build(model)
    srvs = serve_all(path, {
        fault: ((*TRITON, *flags), tmp_path_factory.mktemp(fault),
                {**STRICT_ENV, "TRITON_INTERPRET": "1", **env, "RAAS_TEST_FAULT": fault}) for fault in HYBRID_FAULTS
    })
    yield srvs
    for srv in srvs.values():
        srv.stop()


# what SGLang's checks print when the hybrid allocator is freed twice, or a victim page is never freed
HYBRID_FAULTS = {"double_free": r"_debug_check_no_duplicate_pages|peer_released", "leak": r"(?i)leak detected"}


@pytest.mark.slow
@pytest.mark.parametrize("fault", sorted(HYBRID_FAULTS))
def test_hybrid_pool_checks_fire_on_injected_fault(fault, faulty_hybrid):
    """I1 and I3 on the hybrid pool: a victim page freed twice, or never, is reported by SGLang's own checks (the
    fault wraps `eviction.free_pages`, which frees a hybrid victim with its twin)."""
    srv = faulty_hybrid[fault]
    with pytest.raises((urllib.error.URLError, ConnectionError, TimeoutError, OSError)):
        for _ in range(3):  # evict, finish, go idle: each check gets its chance
            gen(srv, PROMPT, 60, raas_budget=BUDGET)
            time.sleep(1.0)
    deadline = time.monotonic() + 30
    while not re.search(HYBRID_FAULTS[fault], srv.log_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert re.search(HYBRID_FAULTS[fault], srv.log_text()), srv.log_text()[-3000:]


# -- tensor parallel: each rank holds half the heads of every layer, window and full ---------------------------------

TP_FAMILIES = {  # name: (model, flags, env, triton decode window)
    "gemma3-torch-native": ("gemma3", ("--kv-policy", "raas", "--raas-budget", "256"), {}, False),
    "gpt-oss-hybrid": ("gpt-oss", (*TRITON, *TRITON_FAMILIES["gpt-oss-hybrid"][1]),
                       {"TRITON_INTERPRET": "1", **TRITON_FAMILIES["gpt-oss-hybrid"][2]}, True),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(TP_FAMILIES))
def test_windowed_tensor_parallel(family, tmp_path):
    """`--tp-size 2`: each rank holds one of the two KV heads of every layer (window and full; gpt-oss: its window
    pool too) and scores pages from its own heads; the ranks combine their page scores and agree every step
    (`RAAS_CHECK_RANKS=1`), so both evict the same pages; raas and h2o in one batch are bounded and equal the HF
    model (its windows in the sliding layers) masked to what they kept; the pools are leak-free afterwards."""
    from transformers import AutoModelForCausalLM

    model, flags, env, triton = TP_FAMILIES[family]
    path = family_models.build(model)
    srv = serve(path, *flags, "--tp-size", "2", tmp=tmp_path,
                env={**STRICT_ENV, **env, "RAAS_CHECK_RANKS": "1"})
    try:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        assert_policies_bounded_and_exact(srv, hf, PROMPT, 100, ("raas", "h2o"), BUDGET, 4, triton=triton)
        info = _info(srv)
        assert info["tp_size"] == 2 and info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"], info
        if "swa_pool_tokens" in info:
            assert info["swa_free_tokens"] + info["swa_evictable_tokens"] == info["swa_pool_tokens"], info
    finally:
        srv.stop()
