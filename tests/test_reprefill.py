"""Unit tests of what a retracted request resumes from (raas_sglang.core): its snapshot, its holes and the token
runs its re-prefill recomputes. The server path is in tests/test_raas_retraction.py."""

from __future__ import annotations

import torch

from raas_sglang.core import EMPTY, RaasState
from raas_sglang.holes import hole_pages, reprefill_runs


def test_runs_skip_holes_and_split_at_a_new_last_page():
    # prompt 40 tokens (pinned pages 0..2), holes 4, 5, 7; 150 tokens so far
    assert reprefill_runs(40, 16, [4, 5, 7], 150) == [(0, 64), (96, 112), (128, 150)]
    # the last position (144) opens page 9: it gets its own chunk, evicting first as a decode step would
    assert reprefill_runs(40, 16, [4, 5, 7], 145) == [(0, 64), (96, 112), (128, 144), (144, 145)]
    assert reprefill_runs(40, 16, [3], 65) == [(0, 48), (64, 65)]  # already a run of its own
    assert reprefill_runs(40, 16, [], 47) == [(0, 47)]  # inside the pinned page: nothing opens
    # what is recomputed is the pinned prompt plus at most the kept pages, never the holes
    runs = reprefill_runs(40, 16, list(range(3, 60)), 60 * 16 + 5)
    assert sum(b - a for a, b in runs) == 48 + 5 and all(a % 16 == 0 for a, _ in runs[1:])


def test_hole_pages():
    assert hole_pages([6, 8, 9], 3) == [3, 4, 5, 7]
    assert hole_pages([6, 8, 9], 3, upto_page=6) == [3, 4, 5]
    assert hole_pages([], 3) == []


def test_snapshot_restores_the_row_on_another_row():
    state = RaasState(4, budget_pages=3, page_size=16)
    state.admit(1, pin_len=40, budget_pages=3, policy="raas")
    rows = torch.tensor([1])
    for pos in range(48, 16 * 9, 16):  # open pages 3..8 with a limit of 3: three evicted
        state.evict(state.victims(rows, torch.tensor([pos])))
        state.open_pages(rows, torch.tensor([pos]))
        state.observe(rows, torch.rand(1, 3))
    snap = state.snapshot(1)
    holes = state.holes(1, 9 * 16)
    state.release(1)
    state.admit(2, pin_len=40, budget_pages=3, policy="raas")
    state.restore(2, snap)
    assert state.holes(2, 9 * 16) == holes and len(holes) == int(state.evicted[2]) == 3
    assert sorted(state.pages[2][state.pages[2] != EMPTY].tolist()) == state.resident_pages(2)
    assert torch.equal(state.stamp[2], snap.stamp) and int(state.step[2]) == snap.step
    assert int(state.count[1]) == 0  # the old row stays released


def test_extend_attention_skips_hole_entries():
    from raas_sglang.patches.reprefill_attention import compact_rows, drop_holes

    ps = 4
    rtt = torch.zeros((3, 16), dtype=torch.int32)
    rtt[0, :12] = torch.tensor([8, 9, 10, 11, 0, 1, 2, 3, 20, 21, 22, 23])  # page 1 is a hole
    rtt[2, :6] = torch.tensor([40, 41, 42, 43, 44, 45])
    table, lens = compact_rows(rtt, [0, 2], [12, 6], {0}, ps)
    assert lens == [8, 6]
    assert table[0, :8].tolist() == [8, 9, 10, 11, 20, 21, 22, 23] and table[1, :6].tolist() == [40, 41, 42, 43, 44, 45]
    # triton's ragged prefix lists: row 0 has 8 prefix slots with one hole page, row 1 has 2 and none
    indptr = torch.tensor([0, 8, 10])
    indices = torch.tensor([8, 9, 10, 11, 0, 1, 2, 3, 44, 45, 99, 99])  # over-allocated tail ignored
    new_indptr, new_indices = drop_holes(indptr, indices, ps)
    assert new_indptr.tolist() == [0, 4, 6] and new_indices.tolist() == [8, 9, 10, 11, 44, 45]
