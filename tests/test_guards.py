"""Guards that turn corruption into a clear error (guarantees issue, item 5), unit level; the server-level test of a
broken invariant aborting only its request is tests/test_raas_eviction.py::test_lost_page_aborts_only_that_request.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from raas_sglang.config import RaasConfig
from raas_sglang.patches import eviction, runtime

PS, L = 4, 3


class Allocator:
    def __init__(self):
        self.freed: list[list[int]] = []

    def free_page_ids(self, page_ids):
        self.freed.append(page_ids.tolist())


def _runtime_with_a_full_row():
    """Row 0: prompt of 8 tokens (pinned pages 0, 1), decode pages 2..4 resident (its limit), slot of position p =
    p + 100 (live pages 25..)."""
    rt = runtime.Runtime(RaasConfig(policy="raas", budget_tokens=L * PS, page_size=PS))
    req_to_token = (torch.arange(64, dtype=torch.int32) + 100).view(1, 64).repeat(2, 1)
    rt.ensure_state(req_to_token)
    kv = SimpleNamespace(req_pool_idx=0)
    rt.admit(0, "r0", 8, "raas", L, False, kv=kv)
    for pos in (8, 12, 16):
        rt.state.open_pages(torch.tensor([0]), torch.tensor([pos]))
        rt.state.observe(torch.tensor([0]), torch.zeros(1, L))
    return rt, req_to_token, kv


def test_padding_page_is_never_freed():
    alloc = Allocator()
    with pytest.raises(eviction.InvariantBroken, match="padding page 0"):
        eviction.free_pages(alloc, torch.tensor([7, 0]))
    assert alloc.freed == []  # nothing handed back, not even the valid page


def test_lost_victim_is_not_freed_and_its_row_is_reported():
    rt, req_to_token, _ = _runtime_with_a_full_row()
    rows, pos = torch.tensor([0]), torch.tensor([20])  # opens page 5 at the limit: evicts the oldest, page 2
    victim = int(rt.state.victims(rows, pos).page[0])
    assert victim == 2
    req_to_token[0, victim * PS:victim * PS + PS] = 0  # its slots were handed back elsewhere
    alloc = Allocator()
    done = eviction.evict(rt, rows, pos, req_to_token, alloc)
    assert done == eviction.Evicted(0, [0]) and alloc.freed == []
    assert victim not in rt.state.pages[0].tolist() and rt.holes(0, 24) == [victim]  # a hole: release skips it
    rt.state.open_pages(rows, pos)  # the step goes on within the limit
    ok = eviction.evict(rt, rows, torch.tensor([24]), req_to_token, alloc)  # the next victim is live: freed once
    assert ok.pages == 1 and ok.lost_rows == [] and alloc.freed[-1] == [(3 * PS + 100) // PS]


def test_row_lookup_from_the_kv_side_matches_the_request():
    rt, _, kv = _runtime_with_a_full_row()
    assert rt.row_of_kv(kv) is rt.rows[0]
    assert rt.row_of_kv(SimpleNamespace(req_pool_idx=0)) is None  # same row, another request's KV
    assert rt.row_of_kv(SimpleNamespace(req_pool_idx=1)) is None
