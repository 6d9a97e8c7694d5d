"""H2O (arXiv 2306.14048) over decode pages: each page accumulates its score over every step it is resident;
the newer half of the row's page limit is a protected recent window; among the rest the page with the lowest
accumulated score is evicted (ties: lowest page). The prompt is pinned, as in RaaS, so the comparison isolates
the eviction rule for reasoning pages."""

from __future__ import annotations

import torch

from raas_sglang.policies import register
from raas_sglang.policies.base import EMPTY, Policy


@register
class H2O(Policy):
    name = "h2o"

    def victim_key(self, state, rows, pages):
        valid = pages != EMPTY
        newer = ((pages[:, None, :] > pages[:, :, None]) & valid[:, None, :]).sum(dim=2)  # [n, L] newer pages
        recent = newer < (state.limit[rows][:, None] + 1) // 2
        key = state.score[rows].double() + pages.double() * 1e-9
        return torch.where(recent, torch.full_like(key, float("inf")), key)

    def observe(self, state, rows, scores):
        state.accumulate(rows, scores)
