"""RaaS on SGLang's triton backend with `--raas-score exact`: decode attention is the plugin's own kernel
(`raas_sglang.kernels.sparse_decode`, reading the resident pages from the RaaS state, no index list), which also
gives each page's exact attention mass. End to end on CPU under the Triton interpreter (float32, page 16, radix
on, strict KV checks): with evictions its output equals the torch_native backend's exact-scored output, token for
token, so both choose the same victims from the same scores (streaming's prompt window applied by the kernel
too); the kept positions match the HF reference."""

from __future__ import annotations

import urllib.error

import pytest

from conftest import STRICT_ENV, serve
from raas_helpers import gen
from test_raas_triton import PROMPT, REQUESTS, compare_backends


@pytest.fixture(scope="module")
def servers(model_dir, tmp_path_factory, raas_server):
    """The triton server, and the shared torch_native RaaS server (exact scores: --raas-score auto there)."""
    args = ("--kv-policy", "raas", "--raas-budget", "256", "--raas-score", "exact", "--attention-backend", "triton")
    triton = serve(model_dir, *args, tmp=tmp_path_factory.mktemp("triton_exact"),
                   env={**STRICT_ENV, "TRITON_INTERPRET": "1"})
    yield {"triton": triton, "torch_native": raas_server}
    triton.stop()


def test_triton_kernel_equals_torch_native_exact(servers, hf):
    """The ragged batch plus a streaming row, whose prompt window the kernel applies (its prompt falls out of
    the 32-token window: only the sink page of it stays attended)."""
    streaming = ([1] + list(range(300, 340)), 80, {"kv_policy": "streaming", "raas_budget": 32})
    info = compare_backends(servers, hf, same_trace=True, requests=(*REQUESTS, streaming))
    assert info["exact_kernel"] is True and info["score"] == "exact"
    assert info["exact_kernel_layer_calls"] >= 2 * 80  # 2 layers x the ~89 steps after the first decode page


def test_selecting_policy_refused_per_request(servers):
    """The kernel selects no pages: a quest request gets HTTP 400 naming the field; the server keeps serving."""
    srv = servers["triton"]
    with pytest.raises(urllib.error.HTTPError) as err:
        gen(srv, PROMPT, 4, kv_policy="quest")
    body = err.value.read().decode()
    assert err.value.code == 400 and "custom_params.kv_policy: 'quest' is not available on this server" in body
    assert len(gen(srv, PROMPT, 4)["output_ids"]) == 4
