"""Sliding-window models under RaaS (a tiny Gemma 3: 5 window layers of 32 tokens + 1 full layer, torch_native,
strict KV checks): a windowed layer attends the resident tokens inside its window, a full layer every resident
token, on the decode path and when a retracted request with holes is re-prefilled (the window is masked by
logical positions there, `reprefill_attention.windowed_extend`). The served/refused checks of the family are
in tests/test_model_matrix.py ([gemma3], [gemma3-triton], [gemma2])."""

from __future__ import annotations

import pytest
import torch

from conftest import STRICT_ENV, serve
from raas_helpers import bound, gen_policies, masked_reference_error, streaming_window
from raas_sglang.dev import family_models

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
