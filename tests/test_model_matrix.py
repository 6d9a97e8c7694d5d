"""The model matrix (docs/models.md) through the real launcher, on tiny random-weight models of each family built
with transformers' own config classes (`raas_sglang.dev.family_models`):

- refused: each `ModelLaunch` case of the bad-input table stops at startup (the model config says it for sure) or
  once the model loaded (what SGLang built says it), with the row's message and `--kv-policy dense` as the way out;
- served: under `--kv-policy raas`, with the three checks: budget >= output => token-identical to dense; with
  evictions, the allocator's low-water mark is exactly the bound and the log-probs equal the Hugging Face model
  masked to what the server kept.

The served families whose server start is not yet paid by `make test` are `slow` (`make test-slow`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bad_inputs import MODEL_LAUNCH
from conftest import STRICT_ENV, serve
from raas_helpers import bound, flush, gen, masked_reference_error
from raas_sglang.cpu_env import has_cuda, launch_env
from raas_sglang.dev import family_models

PRELOADED = Path(__file__).with_name("preloaded_launch.py")
CPU = [] if has_cuda() else ["--device", "cpu", "--dtype", "float32"]
PROMPT = [1] + list(range(30, 70))  # 41 tokens: pinned pages 0..2
BUDGET = 32


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """Every model launch case, forked from one process that imported SGLang (tests/preloaded_launch.py); a case
    refused after load still spawns its scheduler, which loads the model and stops (~30 s each)."""
    per_case, parallel = 150, 2
    cases = {name: ["--model-path", str(family_models.build(c.family)), *CPU, *c.argv]
             for name, c in MODEL_LAUNCH.items()}
    results = tmp_path_factory.mktemp("model_refusals") / "results.json"
    proc = subprocess.run([sys.executable, str(PRELOADED), str(results)],
                          input=json.dumps({"cases": cases, "timeout": per_case, "parallel": parallel}),
                          env=launch_env(), capture_output=True, text=True, start_new_session=True,
                          timeout=-(-len(cases) // parallel) * per_case + 120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(results.read_text())


@pytest.mark.parametrize("case", sorted(MODEL_LAUNCH))
def test_family_refused(refused, case):
    """Refused before serving, naming the reason and `--kv-policy dense`; never a started server."""
    c, r = MODEL_LAUNCH[case], refused[case]
    assert r["returncode"] != 0 and not r["timed_out"], f"{case}: not refused:\n{r['stderr'][-3000:]}"
    text = r["stdout"] + r["stderr"]
    lines = [line for line in text.splitlines() if c.message in line]
    assert lines, text[-3000:]
    assert "use --kv-policy dense" in lines[0] or "--kv-policy dense" in lines[0]
    if c.row.startswith("startup."):  # before any child: one line, no traceback
        assert lines[0].startswith("error: " + c.message) and "Traceback" not in r["stderr"], r["stderr"][-3000:]


SERVED = ["qwen3", "qwen2", "gemma3",
          pytest.param("qwen3-moe", marks=pytest.mark.slow), pytest.param("mistral", marks=pytest.mark.slow),
          pytest.param("olmo2", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=SERVED)
def family(request, tmp_path_factory):
    """(name, server, HF model): a `--kv-policy raas` server on the family's tiny model, with SGLang's strict KV
    checks, and the same weights in transformers (float32, eval)."""
    from transformers import AutoModelForCausalLM

    path = family_models.build(request.param)
    srv = serve(path, "--kv-policy", "raas", "--raas-budget", "256", "--chunked-prefill-size", "128",
                tmp=tmp_path_factory.mktemp(f"family_{request.param}"), env=dict(STRICT_ENV))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    yield request.param, srv, hf
    srv.stop()


def test_family_exact_without_eviction(family):
    """budget >= output: token-identical to a dense request on the same server, nothing evicted."""
    name, srv, _ = family
    raas = gen(srv, PROMPT, 100, raas_budget=256)
    dense = gen(srv, PROMPT, 100, kv_policy="dense")
    assert raas["meta_info"]["raas"]["evicted_pages"] == 0
    assert raas["output_ids"] == dense["output_ids"], name


def test_family_bounded_and_masked_exact(family):
    """With evictions: SGLang's allocator sees exactly the bound (its free count's low-water mark after a flush),
    and the log-probs equal the Hugging Face model masked to what the server kept."""
    name, srv, hf = family
    flush(srv)
    pool = srv.get("/get_server_info")["internal_states"][0]["raas"]
    out = gen(srv, PROMPT, 150, raas_budget=BUDGET, raas_trace=True)
    raas = out["meta_info"]["raas"]
    assert raas["evicted_pages"] >= 4, name
    low = srv.get("/get_server_info")["internal_states"][0]["raas"]["kv_free_low_water_tokens"]
    assert pool["free_tokens"] - low == bound(len(PROMPT), BUDGET), name
    assert masked_reference_error(hf, PROMPT, out) < 1e-3, name
    assert masked_reference_error(hf, PROMPT, out, dense=True) > 1e-3, name  # eviction changed what it saw
