"""Quest (arXiv 2406.10774) as a baseline: nothing is evicted (the request holds all its KV, O(N) memory); at
every layer of every decode step the request attends to the budget's number of pages with the highest Quest
bound for this layer's query (max over heads), plus the page being written. The selection itself is
`raas_sglang.step.quest_keep`, run by the attention; here only the policy's identity."""

from __future__ import annotations

import torch

from raas_sglang.policies import register
from raas_sglang.policies.base import Policy


@register
class Quest(Policy):
    name = "quest"
    evicts = False
    selects = "all"  # candidates: every page but the newest

    def victim_key(self, state, rows, pages):
        return torch.full(pages.shape, float("inf"), dtype=torch.float64, device=pages.device)  # never evicts
