"""The hybrid sliding-window pool (gpt-oss's default) on SGLang's real `SWAKVPool` and `SWATokenToKVPoolAllocator`
(CPU, page 16): a victim page goes back with its SWA twin when the twin is live and without it once SGLang's window
sweep freed it; SGLang's sweep and row release then step over the holes; every slot of both pools is freed once.
End to end through the server: tests/test_sliding_window.py ([gpt-oss-hybrid])."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from raas_sglang.patches import eviction, radix, runtime, swa_pool

PS, FULL, SWA = 16, 256, 160


def _pools(ps: int = PS):
    from sglang.srt.mem_cache.allocator.swa import SWATokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    pool = SWAKVPool(size=FULL, size_swa=SWA, page_size=ps, dtype=torch.float32, head_num=1, head_dim=4,
                     swa_attention_layer_ids=[0], full_attention_layer_ids=[1], device="cpu")
    allocator = SWATokenToKVPoolAllocator(FULL, SWA, ps, torch.float32, "cpu", pool, need_sort=False)
    rows = ReqToTokenPool(size=2, max_context_len=256, device="cpu", enable_memory_saver=False)
    return pool, allocator, rows


def _admit(allocator, rows, n: int):
    """One request row holding n tokens (prefix 0), allocated as SGLang's extend does; returns its ReqKvInfo."""
    from sglang.srt.managers.schedule_batch import ReqKvInfo

    lens = torch.tensor([n], dtype=torch.int64)
    slots = allocator.alloc_extend(torch.zeros(1, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), lens, lens,
                                   torch.tensor([-1], dtype=torch.int64), n)  # [n] int64 full slots
    rows.req_to_token[0, :n] = slots.to(torch.int32)
    return ReqKvInfo(req_pool_idx=0, kv_committed_len=n, kv_allocated_len=n)


class _Rt:
    """What the hooks read from the plugin's runtime: the row is RaaS-managed, its holes and their count."""

    def __init__(self, holes):
        self.hole_pages, self.config, self.reprefilling = holes, SimpleNamespace(page_size=PS), {}

    @property
    def state(self):  # the host mirror's evicted-page count per row
        return SimpleNamespace(host=SimpleNamespace(evicted=[len(self.hole_pages)] * 2))

    def row_of_kv(self, kv):
        return object()

    def holes(self, row, upto):
        return [p for p in self.hole_pages if p * PS < upto]


def _sweep(allocator, rows, kv, pre_len, window=31):
    from sglang.srt.mem_cache.common import free_swa_out_of_window_slots

    swa_pool.free_swa_out_of_window_slots(
        free_swa_out_of_window_slots, SimpleNamespace(kv=kv), pre_len, sliding_window_size=window, page_size=PS,
        req_to_token_pool=rows, token_to_kv_pool_allocator=allocator)


def _evict(allocator, rows, rt, page):
    first = rows.req_to_token[0, page * PS:page * PS + 1].to(torch.int64)  # [1]
    eviction.free_pages(allocator, first // PS)  # the plugin's free of a victim page (hybrid: patches/swa_pool.py)
    rows.req_to_token[0, page * PS:page * PS + PS] = 0
    rt.hole_pages.append(page)


def test_victims_sweep_and_release_free_each_slot_once(monkeypatch):
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType

    monkeypatch.setenv("SGLANG_INVARIANT_CHECK", "2")  # SGLang's swa.peer_* guards raise
    monkeypatch.setenv("SGLANG_DEBUG_MEMORY_POOL", "1")
    _, allocator, rows = _pools()
    kv = _admit(allocator, rows, 128)  # pages 0..7
    rt = _Rt([])
    monkeypatch.setattr(runtime, "get", lambda: rt)
    assert (allocator.full_available_size(), allocator.swa_available_size()) == (FULL - 128, SWA - 128)
    _sweep(allocator, rows, kv, 64)  # SGLang's own sweep, no hole yet: frees the twins of pages 0..1
    assert kv.get_evicted_seqlen(ComponentType.SWA) == 32 and allocator.swa_available_size() == SWA - 96
    _evict(allocator, rows, rt, 1)  # its twin already swept: the full page only
    assert (allocator.full_available_size(), allocator.swa_available_size()) == (FULL - 112, SWA - 96)
    _evict(allocator, rows, rt, 4)  # a live twin: both pages
    assert (allocator.full_available_size(), allocator.swa_available_size()) == (FULL - 96, SWA - 80)
    private = swa_pool.kv_private_swa_tokens(128 - 32, kv, PS)  # SGLang's figure for the row, before the hook
    assert private == 128 - 32 - 16  # page 4's twin is gone; page 1's was counted as swept already
    _sweep(allocator, rows, kv, 128)  # the sweep crosses the hole at page 4: frees pages 2, 3, 5 (up to 96)
    assert kv.get_evicted_seqlen(ComponentType.SWA) == 96 and allocator.swa_available_size() == SWA - 32
    # the release: SGLang's free_kv_row over [0, 128), the holes cut out (patches/radix.py)
    from sglang.srt.mem_cache.common import free_kv_row_segments

    ranges = radix._cut([(0, 128)], sorted(rt.hole_pages), PS)
    free_kv_row_segments(allocator, [(rows.req_to_token[0, a:b].to(torch.int64), a) for a, b in ranges],
                         swa_evicted_seqlen=96, swa_dead_lo=0)
    assert (allocator.full_available_size(), allocator.swa_available_size()) == (FULL, SWA)
    assert int(allocator.full_to_swa_index_mapping[1:FULL].count_nonzero()) == 0


def test_sweep_without_the_cut_trips_sglangs_guard(monkeypatch):
    """The failure the sweep hook prevents: SGLang's sweep over a hole reads its padding slot, which has no twin."""
    from sglang.srt.mem_cache.common import free_swa_out_of_window_slots

    monkeypatch.setenv("SGLANG_INVARIANT_CHECK", "2")
    _, allocator, rows = _pools()
    kv = _admit(allocator, rows, 128)
    rt = _Rt([])
    _evict(allocator, rows, rt, 2)
    with pytest.raises(Exception, match="peer_mapped|swa"):
        free_swa_out_of_window_slots(SimpleNamespace(kv=kv), 128, sliding_window_size=31, page_size=PS,
                                     req_to_token_pool=rows, token_to_kv_pool_allocator=allocator)


def test_page_size_one_swept_victim_frees_no_window_slot(monkeypatch):
    """At page size 1 SGLang's `free_swa` frees whatever the mapping reads; a victim whose twin was swept reads 0,
    which must not put the window pool's padding slot 0 in its free list."""
    monkeypatch.setenv("SGLANG_DEBUG_MEMORY_POOL", "1")
    _, allocator, _ = _pools(ps=1)
    slots = allocator.alloc(8)  # [8] int64
    allocator.free_swa_segment(slots[:4], start_pos=0)  # SGLang's sweep
    swa_free = allocator.swa_available_size()
    swa_pool.free_victims(allocator, slots[:2], 1)  # two swept twins: nothing for the window pool
    swa_pool.free_victims(allocator, slots[5:6], 1)  # a live twin: one window slot back
    assert allocator.swa_available_size() == swa_free + 1 and allocator.full_available_size() == FULL - 5
    assert 0 not in allocator.swa_attn_allocator.free_pages.tolist()


def test_counts_and_window_mapping():
    pool, allocator, rows = _pools()
    assert swa_pool.is_hybrid(allocator) and swa_pool.full_counts(allocator) == (FULL, FULL)
    assert swa_pool.swa_counts(allocator) == (SWA, SWA)
    _admit(allocator, rows, 40)
    slots = rows.req_to_token[0, :40].to(torch.int64)  # [40] int64
    mapping = swa_pool.window_mapping(pool)  # [FULL + PS + 1] int64
    assert mapping is allocator.full_to_swa_index_mapping
    assert torch.equal(mapping[slots], pool.translate_loc_from_full_to_swa(slots)) and bool((mapping[slots] > 0).all())
    assert swa_pool.window_mapping(SimpleNamespace()) is None and swa_pool.full_counts(SimpleNamespace(
        available_size=lambda: 5, size=9)) == (5, 9)


def test_pool_name_refuses_window_layers_of_another_kv_shape():
    """The loaded check reads `SWAKVPool` (served) only when the window pool's K/V shape is the full pool's: the
    Quest page bounds hold one key shape. The released Gemma 4 checkpoints differ (window head_dim 256, full 512)."""
    from sglang.srt.mem_cache.swa_memory_pool import SWAKVPool

    from raas_sglang.patches.model_checks import pool_name
    from raas_sglang.refusal_context import pool_supported

    same, _, _ = _pools()
    assert pool_name(same) == "SWAKVPool" and pool_supported(pool_name(same), "SWATokenToKVPoolAllocator")
    common = dict(page_size=PS, device="cpu", enable_memory_saver=False)
    other = SWAKVPool(size=FULL, size_swa=SWA, page_size=PS, dtype=torch.float32, head_num=1, head_dim=8,
                      swa_attention_layer_ids=[0], full_attention_layer_ids=[1], device="cpu",
                      swa_kv_pool_kwargs={**common, "head_num": 2, "head_dim": 4, "allocation_label": "SWA"})
    name = pool_name(other)
    assert name == "SWAKVPool(MHATokenToKVPool: K/V 1 x 8/8, MHATokenToKVPool: K/V 2 x 4/4)", name
    assert not pool_supported(name, "SWATokenToKVPoolAllocator")
