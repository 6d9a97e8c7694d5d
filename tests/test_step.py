"""The decode-step tensor logic of the core (`raas_sglang.step`), each piece against a first-principles statement:
the resident table and its ragged lists, the peak KV a row holds, page-score folding over heads and layers
(exact mass, Quest estimates, the kernel's in-place target), and the end-of-forward refresh."""

from __future__ import annotations

import pytest
import torch

from raas_helpers import policy_state
from raas_sglang.core import EMPTY
from raas_sglang.scoring import PageKeyBounds, page_shares
from raas_sglang.step import PageScores, build_table, held_tokens, prompt_window, resident_positions

PS, L = 4, 3


def _decode(state, row: int, start: int, steps: int, req_to_token=None) -> None:
    rows = torch.tensor([row])
    for pos in range(start, start + steps):
        v = state.victims(rows, torch.tensor([pos]))
        if req_to_token is not None and int(v.page[0]) != EMPTY:
            p = int(v.page[0])
            req_to_token[row, p * PS : p * PS + PS] = 0  # as patches.eviction.evict leaves an evicted page
        state.evict(v)
        state.open_pages(rows, torch.tensor([pos]))
        state.observe(rows, torch.zeros(1, L))


def _state_with_holes():
    """Rows 0 (raas, prompt 10) and 1 (dense), 30 decode tokens each; slot of position p in row r = 1000 r + p + PS."""
    state = policy_state(2, L, PS)
    req_to_token = (torch.arange(2)[:, None] * 1000 + torch.arange(64)[None, :] + PS).to(torch.int32)
    state.admit(0, 10, L, "raas")
    state.admit(1, 1 << 40, None, "dense")
    _decode(state, 0, 10, 30, req_to_token)
    return state, req_to_token


def test_resident_positions_are_pinned_prompt_then_resident_pages():
    state, _ = _state_with_holes()
    seq = torch.tensor([40, 40])
    pos, n, col_slot = resident_positions(state, torch.tensor([0, 1]), seq)
    resident = state.resident_pages(0)
    want = [p for p in range(40) if p < 12 or p // PS in resident]  # pinned through the prompt's last page
    assert pos[0, : int(n[0])].tolist() == want
    assert pos[1, : int(n[1])].tolist() == list(range(40))  # dense: everything
    slots = state.pages[0].tolist()
    for j, p in enumerate(want):
        assert int(col_slot[0, j]) == (L if p < 12 else slots.index(p // PS))


def test_table_slots_and_ragged_lists():
    state, req_to_token = _state_with_holes()
    rows, seq = torch.tensor([0, 1]), torch.tensor([40, 40])
    table = build_table(state, rows, seq, req_to_token)
    indptr, indices = table.ragged()
    assert indptr.tolist() == [0, int(table.n[0]), int(table.n.sum())]
    for i, r in enumerate(rows.tolist()):
        got = indices[int(indptr[i]) : int(indptr[i + 1])]
        assert torch.equal(got, req_to_token[r, table.pos[i, : int(table.n[i])]].long())
        assert int(got.min()) > 0  # no evicted (padding) slot is read


def test_prompt_window_whole_prompt_unless_the_policy_narrows_it():
    state = policy_state(2, L, PS)
    state.admit(0, 40, L, "raas")
    state.admit(1, 40, L, "streaming")
    pin_end, (a, b) = prompt_window(state, torch.tensor([0, 1]), torch.tensor([45, 45]))
    assert pin_end.tolist() == [40, 40] and a.tolist() == [40, PS]
    assert b.tolist() == [40, 45 - L * PS]  # streaming: sink page + the recent window of its budget


def test_held_tokens_counts_live_pages_only():
    state, req_to_token = _state_with_holes()
    held = held_tokens(torch.tensor([0, 1]), torch.tensor([40, 40]), req_to_token, PS)
    live_pages_row0 = 3 + len(state.resident_pages(0))  # pinned pages 0..2 + resident decode pages
    assert held.tolist() == [live_pages_row0 * PS, 40]


@pytest.mark.parametrize("reduce", ["mean-mean", "max-mean", "mean-max", "max-max"])
def test_page_scores_fold_mass_over_heads_and_layers(reduce):
    state, req_to_token = _state_with_holes()
    rows, seq = torch.tensor([0]), torch.tensor([40])
    table = build_table(state, rows, seq, req_to_token)
    scores = PageScores(state, rows, reduce)
    gen = torch.Generator().manual_seed(0)
    layers = [torch.softmax(torch.randn(1, 4, int(table.n[0]), generator=gen), dim=-1) for _ in range(3)]
    for probs in layers:
        scores.add_mass(probs, table.col_slot)
    heads, over_layers = reduce.split("-")
    for slot, page in enumerate(state.pages[0].tolist()):
        if page == EMPTY:
            assert scores.acc[0, slot] == 0
            continue
        cols = [j for j in range(int(table.n[0])) if int(table.pos[0, j]) // PS == page]
        per_layer = [p[0][:, cols].sum(dim=1) for p in layers]  # [heads] each
        per_layer = [x.amax() if heads == "max" else x.mean() for x in per_layer]
        want = max(per_layer) if over_layers == "max" else sum(per_layer)
        assert torch.isclose(scores.acc[0, slot], torch.as_tensor(want), atol=1e-6)


def _shard_scores(state, rows, reduce, layers, col_slot, ranks):
    """Each of `ranks` tensor-parallel ranks scores its contiguous shard of the heads; `combine` is the all-reduce
    over all ranks' per-layer partial scores (what `patches/tensor_parallel.Ranks.combine` does over the TP group)."""
    shards = [PageScores(state, rows, reduce, ranks=ranks) for _ in range(ranks)]
    heads = layers[0].shape[1] // ranks
    for probs in layers:
        for r, shard in enumerate(shards):
            shard.add_mass(probs[:, r * heads:(r + 1) * heads], col_slot)
    every = torch.stack([torch.stack(s.partial) for s in shards])  # [ranks, layers, bs, L]
    calls = []

    def combine(t, op):
        calls.append(op)
        t.copy_(every.amax(0) if op == "max" else every.sum(0))

    return [s.finish(combine) for s in shards], calls


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("reduce", ["mean-mean", "max-mean", "mean-max", "max-max"])
def test_tensor_parallel_scores_mean_the_same_as_tp1(reduce, ranks):
    """Under tp, each rank sees a shard of the heads; after one combine per forward every rank holds the tp 1
    scores (same HEADS-LAYERS meaning), bit-identical across ranks."""
    state, req_to_token = _state_with_holes()
    rows, seq = torch.tensor([0]), torch.tensor([40])
    table = build_table(state, rows, seq, req_to_token)
    gen = torch.Generator().manual_seed(1)
    layers = [torch.softmax(torch.randn(1, 4, int(table.n[0]), generator=gen), dim=-1) for _ in range(3)]
    whole = PageScores(state, rows, reduce)
    for probs in layers:
        whole.add_mass(probs, table.col_slot)
    got, calls = _shard_scores(state, rows, reduce, layers, table.col_slot, ranks)
    assert calls == ["max" if reduce.startswith("max") else "sum"] * ranks  # one collective per rank per forward
    assert torch.allclose(got[0], whole.finish(), atol=1e-6) and whole.acc.abs().sum() > 0
    assert all(torch.equal(g, got[0]) for g in got)


def test_tensor_parallel_kernel_target_is_a_scratch():
    """Under tp the kernel never accumulates into the scores in place: each layer stays apart until combined."""
    state, _ = _state_with_holes()
    scores = PageScores(state, torch.tensor([0]), "mean-mean", ranks=2)
    for mass in (torch.tensor([[0.2, 0.5, 0.1]]), torch.tensor([[0.4, 0.1, 0.1]])):
        target, accumulate = scores.kernel_target()
        assert not accumulate and target is not scores.acc
        target.copy_(mass)
        scores.kernel_done(target, accumulate)
    assert len(scores.partial) == 2 and scores.acc.abs().sum() == 0
    got = scores.finish(lambda t, op: t.mul_(2))  # the other rank holds the same partials
    assert torch.allclose(got, torch.tensor([[0.6, 0.6, 0.2]]))


@pytest.mark.parametrize("layers", ["mean", "max"])
def test_kernel_target_sums_in_place_or_max_folds(layers):
    state, _ = _state_with_holes()
    scores = PageScores(state, torch.tensor([0]), f"mean-{layers}")
    a, b = torch.tensor([[0.2, 0.5, 0.1]]), torch.tensor([[0.4, 0.1, 0.1]])
    for mass in (a, b):
        target, accumulate = scores.kernel_target()
        if accumulate:
            target += mass  # what the kernel does with accumulate=True
        else:
            target.copy_(mass)
        scores.kernel_done(target, accumulate)
    assert torch.allclose(scores.acc, a + b if layers == "mean" else torch.maximum(a, b))


def test_quest_scores_are_page_shares_of_the_bounds():
    state, req_to_token = _state_with_holes()
    rows = torch.tensor([0])
    gen = torch.Generator().manual_seed(1)
    bounds = PageKeyBounds(num_layers=1, num_slots=2048, page_size=PS, kv_heads=2, head_dim=8)
    written = req_to_token[0, :40].long()
    bounds.update(0, written, torch.randn(40, 2, 8, generator=gen))
    scores = PageScores(state, rows, "mean-mean", req_to_token)
    pages = state.pages[0]
    assert torch.equal(scores.phys[0][pages != EMPTY], req_to_token[0, pages[pages != EMPTY] * PS].long() // PS)
    q = torch.randn(1, 4, 8, generator=gen)
    scores.add_bounds(bounds, 0, q, 0.5)
    want = page_shares(bounds.head_scores(0, q, scores.phys, 0.5), scores.valid, "mean")
    assert torch.equal(scores.acc, want)
