"""The selecting policies: `quest` (nothing evicted; per layer, the budget's pages with the highest Quest bound)
and `raas+quest` (RaaS decode pages; Quest selection over the prompt pages). Unit: the selection equals brute
force. Server: memory and exactness where selection keeps everything."""

from __future__ import annotations

import pytest
import torch

from conftest import STRICT_ENV, serve
from raas_helpers import bound, flush, gen
from raas_sglang.config import RaasConfig
from raas_sglang.patches import attention, runtime
from raas_sglang.step import quest_keep

PS = 4


def _brute_bound(q, keys, sm_scale):
    """max over query heads and keys of the Quest upper bound of one page: keys [t, kv_heads, d]."""
    g = q.shape[0] // keys.shape[1]
    lo, hi = keys.amin(0), keys.amax(0)  # [kv_heads, d]
    best = -float("inf")
    for h in range(q.shape[0]):
        kvh = h // g
        best = max(best, float(torch.maximum(q[h] * lo[kvh], q[h] * hi[kvh]).sum() * sm_scale))
    return best


# (KV heads, key width): per-head GQA keys; an MLA latent row (one KV head of kv_lora_rank + rope, every query head
# in its group: the tiny DeepSeek-V2's 256 + 32)
@pytest.mark.parametrize("kvh,d", [(2, 8), (1, 288)])
def test_selection_is_top_k_by_quest_bound(monkeypatch, kvh, d):
    from types import SimpleNamespace

    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    torch.manual_seed(0)
    L, slots = 3, 512
    rt = runtime.Runtime(RaasConfig(policy="raas+quest", budget_tokens=L * PS, page_size=PS))
    req_to_token = torch.arange(4 * 128, dtype=torch.int32).view(4, 128) + PS  # distinct live slots
    rt.ensure_state(req_to_token)
    keys = torch.randn(slots + PS, kvh, d)
    pool = SimpleNamespace(get_key_buffer=lambda i: keys, layer_num=1, start_layer=0)
    rt.ensure_bounds(pool)
    rt.admit(0, "q", 0, "quest", L, False)
    rt.admit(1, "rq", 30, "raas+quest", L, False)
    rt.admit(2, "r", 30, "raas", L, False)
    rows, seq = torch.tensor([0, 1, 2]), torch.tensor([50, 31, 31])
    for r, s in zip(rows.tolist(), seq.tolist()):
        rt.bounds.update(0, req_to_token[r, :s].to(torch.int64), keys[req_to_token[r, :s].long()])
    rt.state.open_pages(rows[1:], torch.tensor([32, 32]) - 1)  # nothing opens below page 8: no-op
    monkeypatch.setattr(runtime, "_RUNTIME", rt)
    monkeypatch.setattr(runtime, "_LOADED", True)
    backend = SimpleNamespace(token_to_kv_pool=pool, req_to_token_pool=SimpleNamespace(req_to_token=req_to_token))
    batch = SimpleNamespace(forward_mode=ForwardMode.DECODE, req_pool_indices=rows, seq_lens=seq)
    fwd = attention.begin_forward(backend, batch, attention.Backend.TORCH_NATIVE)
    q = torch.randn(3, 4, d)
    table = fwd.table
    keep = quest_keep(table, rt.bounds, 0, q, 0.5, rt.state.limit[table.rows])
    for i, (r, s) in enumerate(zip(rows.tolist(), seq.tolist())):
        n = int(table.n[i])
        kept = sorted({int(p) // PS for p, k in zip(table.pos[i, :n].tolist(), keep[i, :n].tolist()) if k})
        if r == 2:
            assert kept == sorted({p // PS for p in range(s)})  # raas: attends all it holds
            continue
        cand_end = (s - 1) // PS * PS if r == 0 else 32  # quest: all but the newest page; raas+quest: the prompt
        cands = list(range(cand_end // PS))
        scores = {p: _brute_bound(q[i], keys[req_to_token[r, p * PS : min(p * PS + PS, s)].long()], 0.5) for p in cands}
        top = sorted(cands, key=lambda p: (-scores[p], p))[:L]
        rest = {p // PS for p in range(cand_end, s)}
        assert kept == sorted(set(top) | rest)
    # a sliding-window layer selects among the candidate pages it can attend: pages wholly below its window are none
    lo = seq - 1 - 5 * PS  # [bs] the first position each row's window attends
    keep = quest_keep(table, rt.bounds, 0, q, 0.5, rt.state.limit[table.rows], lo)
    s, cand_end, n = 50, (50 - 1) // PS * PS, int(table.n[0])
    cands = [p for p in range(cand_end // PS) if (p + 1) * PS > int(lo[0])]
    scores = {p: _brute_bound(q[0], keys[req_to_token[0, p * PS : p * PS + PS].long()], 0.5) for p in cands}
    chosen = {int(p) // PS for p, k in zip(table.pos[0, :n].tolist(), keep[0, :n].tolist()) if k and p < cand_end}
    assert len(cands) > L and chosen == set(sorted(cands, key=lambda p: (-scores[p], p))[:L])


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    srv = serve(model_dir, "--kv-policy", "raas+quest", "--raas-budget", "256", tmp=tmp_path_factory.mktemp("quest"),
                env=STRICT_ENV)
    yield srv
    srv.stop()


PROMPT = [1] + list(range(30, 70))  # 41 tokens: prompt pages 0..2


def test_quest_holds_everything_and_is_exact_with_a_large_budget(server):
    dense = gen(server, PROMPT, 200, kv_policy="dense")
    full = gen(server, PROMPT, 200, kv_policy="quest", raas_budget=256)  # 256 tokens = every page of 241
    assert full["output_ids"] == dense["output_ids"]
    small = gen(server, PROMPT, 200, kv_policy="quest", raas_budget=32)
    meta = small["meta_info"]["raas"]
    assert meta["policy"] == "quest" and meta["evicted_pages"] == 0
    assert meta["peak_kv_tokens"] >= len(PROMPT) + 199  # O(N) memory: nothing is freed
    assert small["output_ids"] != dense["output_ids"]  # attending to 2 pages + the newest changes the output


def test_raas_quest_bounded_and_equals_raas_when_the_prompt_fits(server):
    rq = gen(server, PROMPT, 300, kv_policy="raas+quest", raas_budget=48)
    raas = gen(server, PROMPT, 300, kv_policy="raas", raas_budget=48)
    assert rq["meta_info"]["raas"]["evicted_pages"] >= 10
    assert rq["meta_info"]["raas"]["peak_kv_tokens"] <= bound(len(PROMPT), 48)
    assert rq["output_ids"] == raas["output_ids"]  # 3 prompt pages <= 3 selected: the same attention
    long_prompt = [1] + list(range(30, 130))  # 101 tokens: 7 prompt pages, 2 of them selected per layer
    a = gen(server, long_prompt, 200, kv_policy="raas+quest", raas_budget=32)
    b = gen(server, long_prompt, 200, kv_policy="raas", raas_budget=32)
    assert a["meta_info"]["raas"]["peak_kv_tokens"] <= bound(len(long_prompt), 32)
    assert a["output_ids"] != b["output_ids"]


def _kv_cell_bytes() -> int:
    """SGLang's KV bytes per token for the tiny model (float32): kv_heads * (k + v head dims) * layers * 4."""
    import json

    from raas_sglang.dev import tiny_model

    cfg = json.loads((tiny_model.build() / "config.json").read_text())
    return cfg["num_key_value_heads"] * 2 * cfg["head_dim"] * cfg["num_hidden_layers"] * 4


def test_pool_is_sized_with_the_key_bounds(server, raas_server):
    """#15 item 4: a server that keeps Quest page key bounds shrinks its KV pool so that pool + bounds fit what the
    pool alone would have taken (--max-total-tokens 4096); the bounds' bytes are reported and are what was
    allocated. A server without bounds keeps the whole pool."""
    gen(server, PROMPT, 8)  # the bounds are allocated with the first prefill
    info = server.get("/get_server_info")["internal_states"][0]["raas"]
    cell = _kv_cell_bytes()
    assert info["pool_tokens_before_bounds"] == 4096
    per_page = 2 * 2 * 2 * 16 * 4  # layers * kv_heads * (max, min) * head_dim * float32
    assert info["key_bounds_bytes"] == (info["pool_tokens"] // 16 + 2) * per_page  # one entry per buffer page + 1
    assert info["pool_tokens"] * cell + info["key_bounds_bytes"] <= 4096 * cell
    assert info["pool_tokens"] == 4096 - 16 * 16  # the largest whole-page pool that fits: 3840
    plain = raas_server.get("/get_server_info")["internal_states"][0]["raas"]
    assert plain["pool_tokens"] == 4096 and plain["key_bounds_bytes"] == 0 and plain["pool_tokens_before_bounds"] is None


LONG_PROMPT = [1] + list(range(30, 130))  # 101 tokens: prompt pages 0..6, the last one partial


@pytest.mark.parametrize("policy,prompt,budget,dense_prefix", [
    ("streaming", LONG_PROMPT, 48, 112),  # no eviction; from the first decode page (112) its window skips [16, ...)
    ("quest", PROMPT, 32, 48),  # from position 48 there are 3 candidate pages for 2 selected
    ("raas+quest", LONG_PROMPT, 32, 96),  # 7 prompt pages for 2 selected from the first decode step (101)
])
def test_only_dense_equivalent_kv_is_shared(server, policy, prompt, budget, dense_prefix):
    """#22 item 2: a finished request inserts into the radix tree only the positions whose KV dense attention would
    have produced (capped at the first position written under a window, a page selection or after a hole; the
    tree page-floors it). Turn 2 of the same conversation, dense, reuses exactly that prefix (`cached_tokens`) and
    equals a dense run with nothing cached, token for token and in its log-probs."""
    flush(server)
    turn1 = gen(server, prompt, 40, kv_policy=policy, raas_budget=budget)
    assert turn1["meta_info"]["raas"]["policy"] == policy
    ids = prompt + turn1["output_ids"] + list(range(200, 210))
    turn2 = gen(server, ids, 24, kv_policy="dense")
    assert turn2["meta_info"]["cached_tokens"] == dense_prefix // 16 * 16
    flush(server)
    cold = gen(server, ids, 24, kv_policy="dense")
    assert cold["meta_info"]["cached_tokens"] == 0
    assert turn2["output_ids"] == cold["output_ids"]
    got = torch.tensor([x[0] for x in turn2["meta_info"]["output_token_logprobs"]])
    ref = torch.tensor([x[0] for x in cold["meta_info"]["output_token_logprobs"]])
    assert (got - ref).abs().max().item() < 1e-4
