"""`--kv-policy dense` serves exactly like stock SGLang: greedy float32 output equals Hugging Face's, token for token."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import serve

PROMPTS = [
    [1, 7, 99, 100, 101],
    [1, *range(30, 70)],  # crosses page boundaries
    [1, 300, 12, 9, 400, 401, 402, 250, 251],
]
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = serve(model_dir, "--kv-policy", "dense", tmp=tmp_path_factory.mktemp("dense"))
    yield srv
    srv.stop()


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Plain greedy decoding with a KV cache; no EOS handling (the server runs with ignore_eos)."""
    ids = torch.tensor([prompt])
    out, past = [], None
    with torch.no_grad():
        for _ in range(n):
            res = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.tensor([[nxt]])
    return out


def test_dense_equals_transformers_greedy(server, model_dir):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        got = server.post(
            "/generate",
            {
                "input_ids": prompt,
                "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True},
            },
        )["output_ids"]
        assert got == hf_greedy(model, prompt, NEW_TOKENS), f"prompt {prompt[:8]}..."


def test_dense_keeps_stock_page_size(server):
    assert server.get("/get_server_info")["page_size"] == 1


@pytest.fixture(scope="module")
def stock(model_dir, tmp_path_factory):
    """The same server with the raas plugin excluded through SGLang's own plugin whitelist."""
    from raas_sglang.dev.launch import start_server

    from conftest import SMALL_POOL

    srv = start_server(model_dir, list(SMALL_POOL), env={"SGLANG_PLUGINS": "not-raas"},
                       log_path=tmp_path_factory.mktemp("stock") / "server.log")
    yield srv
    srv.stop()


def test_dense_is_stock(server, stock):
    """I6: --kv-policy dense changes nothing: same tokens, same cache use, same server info apart from added keys."""
    server.post("/flush_cache", {})
    stock.post("/flush_cache", {})
    for prompt in PROMPTS + PROMPTS:  # twice: the second round hits the radix cache on both
        body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}}
        a, b = server.post("/generate", body), stock.post("/generate", body)
        assert a["output_ids"] == b["output_ids"]
        for key in ("prompt_tokens", "completion_tokens", "cached_tokens"):
            assert a["meta_info"][key] == b["meta_info"][key]
        assert "raas" not in a["meta_info"]
    ours, theirs = server.get("/get_server_info"), stock.get("/get_server_info")
    assert set(ours) - set(theirs) == {"raas"} and set(theirs) <= set(ours)
    assert "raas" not in ours["internal_states"][0] and ours["raas"]["policy"] == "dense"
