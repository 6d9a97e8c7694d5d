"""RaaS on SGLang's triton attention backend, end to end on CPU under the Triton interpreter (float32, page 16,
radix on, strict KV checks): with evictions, its output equals the torch_native backend's, token for token.

The triton kernels give no attention probabilities, so that backend scores pages with Quest bounds; the
torch_native server runs with `--raas-score quest` too, so both choose the same victims."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import STRICT_ENV, serve_all
from raas_helpers import gen, masked_reference_error

PROMPT = [1] + list(range(30, 70))  # 41 tokens
REQUESTS = (  # (prompt, new tokens, custom params): a ragged batch, RaaS rows with different budgets + one dense row
    (PROMPT, 96, {"raas_budget": 32, "raas_trace": True}),
    ([1] + list(range(100, 133)), 90, {"raas_budget": 48}),
    ([1] + list(range(200, 210)), 40, {"kv_policy": "dense"}),
)


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory):
    """Start both servers at once (each start is ~25 s of mostly imports)."""
    common = ("--kv-policy", "raas", "--raas-budget", "256")
    srvs = serve_all(model_dir, {
        "triton": ((*common, "--attention-backend", "triton"), tmp_path_factory.mktemp("triton"),
                   {**STRICT_ENV, "TRITON_INTERPRET": "1"}),
        "torch_native": ((*common, "--raas-score", "quest"), tmp_path_factory.mktemp("native"), STRICT_ENV),
    })
    yield srvs
    for srv in srvs.values():
        srv.stop()


def _batch(server, requests=REQUESTS) -> list[dict]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: gen(server, r[0], r[1], **r[2]), requests))


def compare_backends(servers, hf, same_trace: bool = False, requests=REQUESTS) -> dict:
    """Run the ragged batch on both servers: same tokens and evictions (and, with `same_trace`, the same victims
    at the same steps), log-probs within 1e-4, the triton output equal to the HF reference masked to what it
    kept. Returns the triton server's `raas` info."""
    with ThreadPoolExecutor(2) as pool:
        got, want = pool.map(lambda srv: _batch(srv, requests), (servers["triton"], servers["torch_native"]))
    assert got[0]["meta_info"]["raas"]["evicted_pages"] >= 2 and got[1]["meta_info"]["raas"]["evicted_pages"] >= 2
    for g, w in zip(got, want):
        assert g["output_ids"] == w["output_ids"]
        assert g["meta_info"]["raas"]["evicted_pages"] == w["meta_info"]["raas"]["evicted_pages"]
        if same_trace:
            assert g["meta_info"]["raas"].get("trace") == w["meta_info"]["raas"].get("trace")
        lp_g = [x[0] for x in g["meta_info"]["output_token_logprobs"]]
        lp_w = [x[0] for x in w["meta_info"]["output_token_logprobs"]]
        assert max(abs(a - b) for a, b in zip(lp_g, lp_w)) < 1e-4
    # and the triton server attended to exactly the positions it kept
    assert masked_reference_error(hf, PROMPT, got[0]) < 1e-3
    info = servers["triton"].get("/get_server_info")["internal_states"][0]["raas"]
    assert info["evicted_pages_total"] >= 4 and info["resident_pages"] == 0
    return info


def test_triton_equals_torch_native_with_evictions(servers, hf):
    info = compare_backends(servers, hf)
    assert info["exact_kernel"] is False and info["exact_kernel_layer_calls"] == 0  # Quest-scored, upstream kernel
