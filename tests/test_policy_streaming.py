"""The streaming policy (sink page + recent window): FIFO decode pages, and the prompt it attends to."""

from __future__ import annotations

import torch

from raas_sglang.core import EMPTY, RaasState
from raas_sglang.step import resident_positions

PS, L = 4, 3


def _run(state: RaasState, row: int, start: int, steps: int) -> list[int]:
    rows = torch.tensor([row])
    evicted = []
    for pos in range(start, start + steps):
        v = state.victims(rows, torch.tensor([pos]))
        if v.page[0] != EMPTY:
            evicted.append(int(v.page[0]))
        state.evict(v)
        state.open_pages(rows, torch.tensor([pos]))
        state.observe(rows, torch.rand(1, L))
    return evicted


def test_fifo_keeps_the_newest_pages():
    state = RaasState(num_rows=2, budget_pages=L, page_size=PS)
    state.admit(1, pin_len=10, budget_pages=L, policy="streaming")
    evicted = _run(state, 1, 10, 60)  # decode pages 3.. (pin 10 -> first decode page 3)
    assert evicted == list(range(3, 3 + len(evicted))) and len(evicted) >= 10  # oldest first, whatever the scores
    newest = (10 + 60 - 1) // PS
    assert state.resident_pages(1) == [newest - 2, newest - 1, newest]


def test_prompt_window_is_sink_page_plus_recent_window():
    state = RaasState(num_rows=2, budget_pages=L, page_size=PS)
    state.admit(0, pin_len=40, budget_pages=L, policy="streaming")  # a 40-token prompt: pages 0..9 pinned
    state.admit(1, pin_len=40, budget_pages=L, policy="raas")
    rows = torch.tensor([0, 1])
    # first decode step: position 40 opens page 10; the window (12 tokens) reaches back to position 29
    for row in (0, 1):
        state.open_pages(torch.tensor([row]), torch.tensor([40]))
    pos, n, _ = resident_positions(state, rows, torch.tensor([41, 41]))
    assert pos[0, : int(n[0])].tolist() == [0, 1, 2, 3, *range(29, 41)]  # sink page + last 12 tokens
    assert pos[1, : int(n[1])].tolist() == list(range(41))  # raas attends to the whole prompt
    # later: only decode pages are in the window; the prompt contributes the sink page alone
    evicted = _run(state, 0, 41, 30)
    assert evicted
    pos, n, _ = resident_positions(state, torch.tensor([0]), torch.tensor([71]))
    assert pos[0, : int(n[0])].tolist() == [0, 1, 2, 3, *range(60, 71)]
