"""The h2o policy: accumulated scores decide among the older half; the recent half is protected."""

from __future__ import annotations

import random

import torch

from raas_sglang.core import EMPTY, RaasState

PS = 4


def test_against_plain_model():
    for seed in range(8):
        rng = random.Random(seed)
        L = rng.randint(2, 6)
        state = RaasState(num_rows=1, budget_pages=L, page_size=PS)
        state.admit(0, pin_len=rng.randint(1, 9), budget_pages=L, policy="h2o")
        first = int(state.first_decode_page(torch.tensor([0]))[0])
        acc: dict[int, float] = {}
        rows = torch.tensor([0])
        for pos in range(first * PS, first * PS + 120):
            v = state.victims(rows, torch.tensor([pos]))
            if pos % PS == 0 and len(acc) >= L:
                pages = sorted(acc)
                recent = set(pages[-((L + 1) // 2):])
                want = min((p for p in pages if p not in recent), key=lambda p: (acc[p], p))
                assert int(v.page[0]) == want
                del acc[want]
            else:
                assert int(v.page[0]) == EMPTY
            state.evict(v)
            state.open_pages(rows, torch.tensor([pos]))
            if pos % PS == 0:
                acc[pos // PS] = 0.0
            scores = torch.tensor([[rng.choice([0.0, 0.1, 0.5, 1.0]) for _ in range(L)]])
            for slot, page in enumerate(state.pages[0].tolist()):
                if page != EMPTY:
                    acc[page] += float(scores[0, slot])
            state.observe(rows, scores)
            assert sorted(acc) == state.resident_pages(0)
