"""RaaS (arXiv 2502.11147): the prompt is pinned; a decode page's stamp is the last step it was among the top
`ratio` of the row's resident pages by score; the page with the oldest stamp is evicted (ties: lowest page).

Heavy-hitter reserve (`RaasState.reserve`, `--raas-reserve`; 0 = the paper's rule alone): the row's
`k = min(floor(reserve * limit), limit - 2)` resident pages with the highest score accumulated while resident are
protected. It keeps what the stamp rule lets go by design: an early intermediate result that is not attended
between being written and being reused much later (the paper's weak case).
NOTE: `k <= limit - 2` leaves at least one candidate victim besides the newest page, so the bound I4 holds.
"""

from __future__ import annotations

import torch

from raas_sglang.policies.base import Policy

KEY_SHIFT = float(1 << 31)  # key = stamp * 2^31 + page: oldest stamp first, then lowest page


class Raas(Policy):
    name = "raas"

    def victim_key(self, state, rows, pages):
        key = state.stamp[rows].double() * KEY_SHIFT + pages.double()  # [n, L] float64
        if state.reserve <= 0.0:
            return key
        limit = state.limit[rows]  # [n] int64
        k = torch.minimum(torch.floor(limit.double() * state.reserve).long(), limit - 2)  # [n] int64
        heavy = state.rank_desc(pages, state.score[rows]) < k[:, None]  # [n, L] bool
        return torch.where(heavy, torch.full_like(key, float("inf")), key)

    def observe(self, state, rows, scores, ratio, threshold):
        state.refresh_top(rows, scores, ratio, threshold)
        if state.reserve > 0.0:
            state.accumulate(rows, scores)
