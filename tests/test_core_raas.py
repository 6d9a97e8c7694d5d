"""The RaaS policy core (`raas_sglang.core`) against a plain-Python model of the same rules."""

from __future__ import annotations

import math
import random

import pytest
import torch

from raas_helpers import policy_state
from raas_sglang.core import EMPTY, RaasState


class RefRow:
    """Plain-Python statement of the rules in docs/architecture.md for one request."""

    def __init__(self, pin_len: int, limit: int, ps: int, reserve: float = 0.0):
        self.pin_len, self.limit, self.ps, self.reserve = pin_len, limit, ps, reserve
        self.stamps: dict[int, int] = {}  # resident decode page -> stamp
        self.acc: dict[int, float] = {}  # resident decode page -> score accumulated while resident
        self.step = 0
        self.evicted = 0

    def opens(self, pos: int) -> bool:
        return pos % self.ps == 0 and pos // self.ps >= math.ceil(self.pin_len / self.ps)

    def victim(self, pos: int) -> int:
        if not self.opens(pos) or len(self.stamps) < self.limit:
            return EMPTY
        newest = max(self.stamps)
        k = min(math.floor(self.limit * self.reserve), self.limit - 2)  # the heavy-hitter reserve
        heavy = set(sorted(self.acc, key=lambda p: (-self.acc[p], p))[:k])
        return min((p for p in self.stamps if p != newest and p not in heavy), key=lambda p: (self.stamps[p], p))

    def write(self, pos: int) -> None:
        v = self.victim(pos)
        if v != EMPTY:
            del self.stamps[v], self.acc[v]
            self.evicted += 1
        if self.opens(pos):
            self.stamps[pos // self.ps] = self.step
            self.acc[pos // self.ps] = 0.0

    def observe(self, scores: dict[int, float], ratio: float, threshold=None) -> None:
        k = math.ceil(len(self.stamps) * ratio)
        mean = sum(scores[p] for p in self.stamps) / max(1, len(self.stamps))
        for p in sorted(self.stamps, key=lambda p: (-scores[p], p))[:k]:
            if threshold is None or scores[p] >= threshold * mean:  # at least `threshold` x the mean score
                self.stamps[p] = self.step
        for p in self.acc:
            self.acc[p] += scores[p]
        self.step += 1


def step_state(state: RaasState, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    v = state.victims(rows, positions)
    state.evict(v)
    state.open_pages(rows, positions)
    return v.page


def scores_for(state: RaasState, rows: torch.Tensor, per_row: list[dict[int, float]]) -> torch.Tensor:
    pages = state.pages[rows]
    out = torch.zeros(pages.shape, dtype=torch.float32)
    for i, row_scores in enumerate(per_row):
        for j, p in enumerate(pages[i].tolist()):
            if p != EMPTY:
                out[i, j] = row_scores[p]
    return out


@pytest.mark.parametrize("seed", range(15))
def test_randomized_against_plain_model(seed):
    rng = random.Random(seed)
    ps = rng.choice([1, 4, 16])
    L = rng.randint(2, 6)
    ratio = rng.choice([0.25, 0.5, 1.0])
    threshold = rng.choice([None, 0.5, 1.0])
    reserve = (0.0, 0.0, 0.25, 0.5, 0.9)[seed % 5]  # the heavy-hitter reserve: off, then ever larger
    nrows = 5
    state = policy_state(nrows + 2, L, ps, ratio, threshold, reserve)
    rows = list(range(1, nrows + 1))
    refs, pos = {}, {}
    for r in rows:
        pin = rng.randint(1, 3 * ps + 1)
        limit = rng.randint(2, L)
        state.admit(r, pin, limit)
        refs[r], pos[r] = RefRow(pin, limit, ps, reserve), pin
    for _ in range(rng.randint(30, 120)):
        batch = sorted(rng.sample(rows, rng.randint(1, nrows)))
        # scores are ties-prone on purpose (few distinct values)
        per_row = [{p: float(rng.randint(0, 4)) for p in range(0, pos[r] // ps + 2)} for r in batch]
        t_rows = torch.tensor(batch)
        t_pos = torch.tensor([pos[r] for r in batch])
        want = [refs[r].victim(pos[r]) for r in batch]
        got = step_state(state, t_rows, t_pos).tolist()
        assert got == want
        for r in batch:
            refs[r].write(pos[r])
        state.observe(t_rows, scores_for(state, t_rows, per_row))
        for r, sc in zip(batch, per_row):
            refs[r].observe(sc, ratio, threshold)
            pos[r] += 1
        for r in rows:
            ref = refs[r]
            assert state.resident_pages(r) == sorted(ref.stamps)
            assert int(state.count[r]) == len(ref.stamps) <= ref.limit
            assert int(state.evicted[r]) == ref.evicted
            got_stamps = {p: s for p, s in zip(state.pages[r].tolist(), state.stamp[r].tolist()) if p != EMPTY}
            assert got_stamps == ref.stamps
            assert int(state.step[r]) == ref.step


def test_never_evicts_pinned_or_newest_and_bounds_memory():
    ps, L = 16, 3
    state = policy_state(4, L, ps, ratio=0.5, threshold=1.0)
    state.admit(2, pin_len=40)  # pinned pages 0..2 (page 2 partially prompt)
    row = torch.tensor([2])
    evicted = []
    for pos in range(40, 40 + 16 * 12):
        v = step_state(state, row, torch.tensor([pos]))
        if int(v[0]) != EMPTY:
            evicted.append(int(v[0]))
            assert int(v[0]) >= 3, "a pinned page was chosen"
        assert int(state.count[2]) <= L
        # equal scores: every stamp ties, so the lowest page goes first
        state.observe(row, torch.zeros(1, L))
    assert evicted == list(range(3, 12))  # 12 decode pages opened (3..14), the 9 oldest evicted


def test_refresh_keeps_a_hot_page():
    ps, L = 1, 3
    state = policy_state(2, L, ps, ratio=0.3)
    state.admit(1, pin_len=1)
    row = torch.tensor([1])
    for pos in range(1, 30):
        step_state(state, row, torch.tensor([pos]))
        # page 1 always scores highest and is refreshed every step (top ceil(0.3*3) = 1 page)
        pages = state.pages[1]
        scores = torch.where(pages == 1, 10.0, 0.0)[None, :]
        state.observe(row, scores)
    assert 1 in state.resident_pages(1)
    assert state.resident_pages(1) == [1, 28, 29]


def test_first_hole_and_evict_zero_is_safe():
    state = policy_state(3, 2, 4)
    state.admit(1, pin_len=6)  # pinned pages 0, 1 (page 1 is the partial prompt page)
    row = torch.tensor([1])
    for pos in range(6, 20):
        step_state(state, row, torch.tensor([pos]))
        state.observe(row, torch.zeros(1, 2))
    # decode pages 2, 3, 4 opened at 8, 12, 16; page 2 evicted when page 4 opened
    assert state.resident_pages(1) == [3, 4]
    assert state.first_hole(1, 20) == 8
    before = state.pages.clone()
    state.evict(state.victims(row, torch.tensor([21])))  # mid-page: nothing to evict
    assert torch.equal(before, state.pages)


def test_dense_prefix_is_the_first_hole_or_the_first_sparse_write():
    """`dense_prefix` (what the radix tree may take) is the lowest of the first hole and the first position marked
    sparse; marking is a running minimum, per row; a snapshot carries it and admit resets it."""
    state = policy_state(3, 2, 4)
    state.admit(1, pin_len=6)
    state.admit(2, pin_len=6)
    rows = torch.tensor([1, 2])
    assert state.dense_prefix(1, 10) == 10
    state.mark_sparse(rows, torch.tensor([9, 7]), torch.tensor([True, False]))
    state.mark_sparse(rows, torch.tensor([12, 8]), torch.tensor([True, True]))
    assert (state.dense_prefix(1, 20), state.dense_prefix(2, 20), state.dense_prefix(2, 5)) == (9, 8, 5)
    snap = state.snapshot(1)
    state.admit(1, pin_len=6)
    assert state.dense_prefix(1, 20) == 20
    state.restore(0, snap)
    assert state.dense_prefix(0, 20) == 9


def test_per_request_budget_is_bounded_by_server_budget():
    state = RaasState(2, 4, 16)
    with pytest.raises(ValueError):
        state.admit(1, 10, budget_pages=5)
    with pytest.raises(ValueError):
        state.admit(1, 10, budget_pages=1)


def test_reserve_keeps_an_early_heavy_page_the_stamp_rule_drops():
    """An early page attended heavily once, then never again until much later: the paper's rule evicts it,
    the heavy-hitter reserve keeps it; both stay within the row's limit."""
    kept = {}
    for reserve in (0.0, 0.25):
        state = policy_state(1, 8, 1, ratio=0.5, reserve=reserve)
        rows = torch.tensor([0])
        state.admit(0, pin_len=1)
        for pos in range(1, 60):
            step_state(state, rows, torch.tensor([pos]))
            pages = state.pages[0]
            # page 1 gets most of the mass while it is new; afterwards it gets none, and newer pages more
            hot = 1 if pos < 4 else pos
            rest = torch.where(pages == 1, 0.0, 0.1 + 0.001 * pages)
            score = torch.where(pages == hot, 1.0, rest).float()[None, :]
            state.observe(rows, score)
            assert int(state.count[0]) <= 8
        kept[reserve] = 1 in state.resident_pages(0)
    assert kept == {0.0: False, 0.25: True}
