"""The KV index lists each RaaS attention backend receives equal the resident set the torch_native path attends
to, and both equal the set computed from first principles (pinned prompt + resident decode pages, < seq_len).

The triton lists come from the real `TritonAttnBackend` metadata hook (its `get_num_kv_splits` kernel runs under
the Triton interpreter); the flashinfer lists from SGLang's real `FlashInferIndicesUpdaterDecode.
call_begin_forward`, with a recorder in place of FlashInfer's decode wrapper (FlashInfer needs CUDA).
"""

from __future__ import annotations

import inspect
import random
from types import SimpleNamespace

import pytest
import torch

from raas_sglang.config import RaasConfig
from raas_sglang.core import EMPTY
from raas_sglang.patches import attention, attention_flashinfer, attention_triton, runtime

PS, L, ROWS, MAX_LEN, SLOTS = 4, 3, 6, 96, 1024


def _evolve(seed: int, reduce: str = "mean-mean"):
    """A runtime whose rows went through random decode steps with evictions, and its req_to_token [ROWS, MAX_LEN]
    (distinct live slots; evicted entries point at slot 0, as `patches.eviction.evict` leaves them)."""
    gen = random.Random(seed)
    tgen = torch.Generator().manual_seed(seed)  # NOTE: never the global torch RNG: the cases must not depend on test order
    rt = runtime.Runtime(RaasConfig(policy="raas", budget_tokens=L * PS, page_size=PS, reduce=reduce))
    req_to_token = torch.zeros(ROWS, MAX_LEN, dtype=torch.int32)
    req_to_token[:] = (torch.randperm(SLOTS - PS, generator=tgen)[: ROWS * MAX_LEN] + PS).view(ROWS, MAX_LEN).to(torch.int32)
    state = rt.ensure_state(req_to_token)
    rows = torch.tensor(sorted(gen.sample(range(ROWS), 4)), dtype=torch.int64)
    seq = torch.tensor([gen.randint(1, 20) for _ in rows])  # prompt lengths
    for r, s in zip(rows.tolist(), seq.tolist()):
        state.admit(r, s, gen.randint(2, L))
    for _ in range(gen.randint(10, 60)):
        pos = seq.clone()  # the token about to be written
        v = state.victims(rows, pos)
        hit = v.page != EMPTY
        for r, p in zip(rows[hit].tolist(), v.page[hit].tolist()):
            req_to_token[r, p * PS : p * PS + PS] = 0
        state.evict(v)
        state.open_pages(rows, pos)
        seq += 1
        state.observe(rows, torch.rand(len(rows), L, generator=tgen))
    return rt, req_to_token, rows, seq


def _expected(rt, req_to_token, rows, seq) -> list[list[int]]:
    out = []
    for r, s in zip(rows.tolist(), seq.tolist()):
        pin_end = -(-int(rt.state.pin_len[r]) // PS) * PS
        resident = set(rt.state.resident_pages(r))
        out.append([int(req_to_token[r, p]) for p in range(s) if p < pin_end or p // PS in resident])
    return out


def _split(indptr, indices) -> list[list[int]]:
    return [indices[int(a) : int(b)].tolist() for a, b in zip(indptr[:-1], indptr[1:])]


def _fixtures(rt, req_to_token, rows, seq):
    kv = torch.zeros(SLOTS, 2, 8)
    backend_parts = dict(
        token_to_kv_pool=SimpleNamespace(get_key_buffer=lambda i: kv, layer_num=1, start_layer=0),
        req_to_token_pool=SimpleNamespace(req_to_token=req_to_token),
    )
    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    batch = SimpleNamespace(forward_mode=ForwardMode.DECODE, req_pool_indices=rows, seq_lens=seq)
    return backend_parts, batch


@pytest.fixture(autouse=True)
def _process_runtime(monkeypatch):
    monkeypatch.setattr(runtime, "_LOADED", True)


@pytest.mark.parametrize("seed", range(6))
def test_torch_native_table_is_the_resident_set(seed, monkeypatch):
    rt, req_to_token, rows, seq = _evolve(seed)
    monkeypatch.setattr(runtime, "_RUNTIME", rt)
    parts, batch = _fixtures(rt, req_to_token, rows, seq)
    fwd = attention.begin_forward(SimpleNamespace(**parts), batch, attention.Backend.TORCH_NATIVE)
    assert rt.state.evicted[rows].sum() > 0 and fwd.table is not None
    table = fwd.table
    got = [table.slots[i, : int(table.n[i])].tolist() for i in range(len(rows))]
    assert got == _expected(rt, req_to_token, rows, seq)
    assert _split(*table.ragged()) == got


@pytest.mark.parametrize("seed,reduce", [(0, "mean-mean"), (1, "max-mean"), (2, "mean-max"), (3, "max-max")])
def test_torch_native_batched_decode_and_exact_page_mass(seed, reduce, monkeypatch):
    """The batched resident decode equals per-row softmax attention over the resident slots, and the page
    scores it feeds are each resident decode page's attention mass (mean or max over query heads; one layer)."""
    rt, req_to_token, rows, seq = _evolve(seed, reduce)
    monkeypatch.setattr(runtime, "_RUNTIME", rt)
    parts, batch = _fixtures(rt, req_to_token, rows, seq)
    fwd = attention.begin_forward(SimpleNamespace(**parts), batch, attention.Backend.TORCH_NATIVE)
    acc = fwd.scores.acc
    gen = torch.Generator().manual_seed(seed)
    kv_heads, q_heads, d = 2, 6, 8
    k_cache, v_cache = torch.randn(SLOTS, kv_heads, d, generator=gen), torch.randn(SLOTS, kv_heads, d, generator=gen)
    q = torch.randn(len(rows), q_heads, d, generator=gen)
    out, mass = rt.decode(q, k_cache, v_cache, 0.3)
    fwd.scores.add_mass(mass, fwd.table.col_slot)
    for i, (r, want_slots) in enumerate(zip(rows.tolist(), _expected(rt, req_to_token, rows, seq))):
        idx = torch.tensor(want_slots)
        k = k_cache[idx].repeat_interleave(3, dim=1)  # [n, q_heads, d]
        p = torch.softmax(torch.einsum("hd,nhd->hn", q[i], k) * 0.3, dim=-1)  # [q_heads, n]
        assert torch.allclose(out[i], torch.einsum("hn,nhd->hd", p, v_cache[idx].repeat_interleave(3, dim=1)), atol=1e-5)
        pin_end = -(-int(rt.state.pin_len[r]) // PS) * PS
        positions = [p_ for p_ in range(int(seq[i])) if p_ < pin_end or p_ // PS in set(rt.state.resident_pages(r))]
        for slot, page in enumerate(rt.state.pages[r].tolist()):
            if page == EMPTY:
                assert acc[i, slot] == 0
                continue
            cols = [j for j, p_ in enumerate(positions) if p_ >= pin_end and p_ // PS == page]
            per_head = p[:, cols].sum(dim=1)  # [q_heads]
            want = per_head.amax() if reduce.startswith("max") else per_head.mean()
            assert cols and torch.isclose(acc[i, slot], want, atol=1e-6)


def _triton_metadata(rt, req_to_token, rows, seq, window, mapping=None):
    """The forward metadata the real `TritonAttnBackend` hook leaves, for a backend whose model has sliding-window
    layers of `window` tokens (None: none); `mapping`: a hybrid pool's full -> window slot mapping."""
    from sglang.srt.layers.attention.triton_backend import ForwardMetadata, TritonAttnBackend

    parts, batch = _fixtures(rt, req_to_token, rows, seq)
    if mapping is not None:
        parts["token_to_kv_pool"].full_to_swa_index_mapping = mapping  # as SWAKVPool.register_mapping leaves it
    backend = object.__new__(TritonAttnBackend)
    backend.__dict__.update(
        parts, static_kv_splits=False, device_core_count=132, enable_deterministic=False, split_tile_size=None,
        max_kv_splits=8, num_head=8, num_kv_head=2, sliding_window_size=window,
    )
    bs = len(rows)
    stock = dict.fromkeys(f.name for f in __import__("dataclasses").fields(ForwardMetadata))
    backend.forward_metadata = ForwardMetadata(**{
        **stock, "num_kv_splits": torch.empty(bs, dtype=torch.int32), "uneven_batch": torch.zeros(1, dtype=torch.int32),
        "kv_indptr": "stock", "kv_indices": "stock", "window_kv_indptr": "stock", "window_kv_indices": "stock",
    })
    attention_triton.init_forward_metadata(None, backend, batch)
    return backend


@pytest.mark.parametrize("seed", range(6))
def test_triton_backend_lists(seed, monkeypatch):
    rt, req_to_token, rows, seq = _evolve(seed)
    monkeypatch.setattr(runtime, "_RUNTIME", rt)
    backend = _triton_metadata(rt, req_to_token, rows, seq, None)
    md = backend.forward_metadata
    assert md.kv_indptr.dtype == torch.int32 and md.kv_indices.dtype == torch.int64
    assert _split(md.kv_indptr, md.kv_indices) == _expected(rt, req_to_token, rows, seq)
    assert md.window_kv_indices == "stock"  # no window: upstream's (unused) window lists untouched
    want = torch.empty(len(rows), dtype=torch.int32)
    backend.get_num_kv_splits(want, rt.forward.table.n, torch.zeros(1, dtype=torch.int32))
    assert torch.equal(md.num_kv_splits, want)


@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window", [3, 7, 13])
def test_triton_window_lists(seed, window, hybrid, monkeypatch):
    """A sliding-window layer's lists hold the resident slots of the last `window` positions (upstream's triton
    decode window, `update_sliding_window_buffer`: [seq_len - window, seq_len)), without the holes; a row without a
    hole there gets upstream's list exactly. On a hybrid pool they hold those slots' window twins."""
    rt, req_to_token, rows, seq = _evolve(seed)
    monkeypatch.setattr(runtime, "_RUNTIME", rt)
    mapping = torch.randperm(SLOTS, generator=torch.Generator().manual_seed(seed)) + SLOTS if hybrid else None
    md = _triton_metadata(rt, req_to_token, rows, seq, window, mapping).forward_metadata
    got = _split(md.window_kv_indptr, md.window_kv_indices)
    if hybrid:  # back to full slots through the inverse permutation
        inverse = torch.argsort(mapping)  # [SLOTS]
        got = [[int(inverse[t - SLOTS]) for t in lst] for lst in got]
        assert all(t >= SLOTS for lst in _split(md.window_kv_indptr, md.window_kv_indices) for t in lst)
    assert md.window_kv_indptr.dtype == torch.int32 and md.window_kv_indices.dtype == torch.int64
    assert _split(md.kv_indptr, md.kv_indices) == _expected(rt, req_to_token, rows, seq)
    for lst, full, r, s in zip(got, _expected(rt, req_to_token, rows, seq), rows.tolist(), seq.tolist()):
        tail = [int(t) for t in req_to_token[r, max(0, s - window):s]]  # upstream's list (holes read slot 0)
        assert lst == [t for t in full if t in set(tail)]
        if 0 not in tail:
            assert lst == tail


@pytest.mark.parametrize("window", [7, 13])
def test_triton_window_cases_cross_holes(window):
    """The cases above are not vacuous: for each wider window most seeds put a hole inside some row's window."""
    holey = 0
    for seed in range(6):
        rt, req_to_token, rows, seq = _evolve(seed)
        holey += any(0 in req_to_token[r, max(0, s - window):s].tolist() for r, s in zip(rows.tolist(), seq.tolist()))
    assert holey >= 4


class _RecordingWrapper:
    """Stands in for FlashInfer's BatchDecodeWithPagedKVCacheWrapper: records what `begin_forward` (plan) gets."""

    is_cuda_graph_enabled = False

    def begin_forward(self, kv_indptr, kv_indices, last_page_len, *args, **kwargs):
        self.plan = (kv_indptr.clone(), kv_indices.clone(), last_page_len.clone(), args)


@pytest.mark.parametrize("seed", range(6))
def test_flashinfer_plan_lists(seed, monkeypatch):
    from sglang.srt.layers.attention.flashinfer_backend import FlashInferIndicesUpdaterDecode

    rt, req_to_token, rows, seq = _evolve(seed)
    monkeypatch.setattr(runtime, "_RUNTIME", rt)
    parts, batch = _fixtures(rt, req_to_token, rows, seq)
    attention_flashinfer.init_forward_metadata(SimpleNamespace(**parts), batch)  # the BEFORE hook
    updater = object.__new__(FlashInferIndicesUpdaterDecode)
    updater.__dict__.update(
        attn_backend=SimpleNamespace(kv_index_translator=None), kv_last_page_len=torch.ones(16, dtype=torch.int32),
        num_qo_heads=8, num_kv_heads=2, head_dim=8, data_type=torch.float32, q_data_type=torch.float32,
    )
    upstream = inspect.unwrap(FlashInferIndicesUpdaterDecode.call_begin_forward)
    wrapper, buf = _RecordingWrapper(), torch.zeros(17, dtype=torch.int32)
    attention_flashinfer.call_begin_forward(
        upstream, updater, wrapper, seq, int(seq.sum()), buf, None, None, seq.clone(),
        plan=None, req_pool_indices=rows,
    )
    indptr, indices, last_page_len, args = wrapper.plan
    assert indices.dtype == torch.int32 and args[-1] == 1  # token-granular plan (page size 1)
    assert _split(indptr, indices) == _expected(rt, req_to_token, rows, seq)
    assert last_page_len.tolist() == [1] * len(rows)
