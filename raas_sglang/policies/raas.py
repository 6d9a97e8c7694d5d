"""RaaS (arXiv 2502.11147): the prompt is pinned; a decode page's stamp is the last step it was among the top
`refresh_ratio` of the row's resident pages by score; the page with the oldest stamp is evicted (ties: lowest page).

Its parameters (flags `--raas-refresh-ratio`, `--raas-refresh-threshold`, `--raas-reserve`):
- refresh rule: a page counts as attended this step if it is among the top `ratio` of the row's resident decode
  pages by score AND gets at least `threshold` times their mean score (0 = no threshold). The paper's rule is
  ratio 0.5, threshold 0, reserve 0; the defaults were chosen from `python -m bench.score_study --study refresh`
  on the toy reasoner (docs/results/refresh_study.md): the paper's rule 0.68 at a 25% budget, these 0.99.
- heavy-hitter reserve: the row's `k = min(floor(reserve * limit), limit - 2)` resident pages with the highest
  score accumulated while resident are protected. It keeps what the stamp rule lets go by design: an early
  intermediate result that is not attended between being written and being reused much later (the paper's weak
  case). NOTE: `k <= limit - 2` leaves at least one candidate victim besides the newest page, so I4 holds.
"""

from __future__ import annotations

import torch

from raas_sglang.policies import register
from raas_sglang.policies.base import EMPTY, Policy, rank_desc

DEFAULT_REFRESH_RATIO = 1.0
DEFAULT_REFRESH_THRESHOLD = 0.25
DEFAULT_RESERVE = 0.25
KEY_SHIFT = float(1 << 31)  # key = stamp * 2^31 + page: oldest stamp first, then lowest page


@register
class Raas(Policy):
    name = "raas"

    def __init__(self, refresh_ratio: float = DEFAULT_REFRESH_RATIO,
                 refresh_threshold: float = DEFAULT_REFRESH_THRESHOLD, reserve: float = DEFAULT_RESERVE):
        if not 0.0 <= reserve < 1.0:
            raise ValueError(f"reserve must be in [0, 1), got {reserve}")
        self.refresh_ratio = refresh_ratio
        self.refresh_threshold = refresh_threshold
        self.reserve = reserve

    @classmethod
    def from_config(cls, config):
        return cls(config.refresh_ratio, config.refresh_threshold, config.reserve)

    def victim_key(self, state, rows, pages):
        key = state.stamp[rows].double() * KEY_SHIFT + pages.double()  # [n, L] float64
        if self.reserve <= 0.0:
            return key
        limit = state.limit[rows]  # [n] int64
        k = torch.minimum(torch.floor(limit.double() * self.reserve).long(), limit - 2)  # [n] int64
        heavy = rank_desc(pages, state.score[rows]) < k[:, None]  # [n, L] bool
        return torch.where(heavy, torch.full_like(key, float("inf")), key)

    def observe(self, state, rows, scores):
        refresh_top(state, rows, scores, self.refresh_ratio, self.refresh_threshold or None)
        if self.reserve > 0.0:
            state.accumulate(rows, scores)


def refresh_top(state, rows: torch.Tensor, scores: torch.Tensor, ratio: float, threshold: float | None = None):
    """The stamp refresh: the top `ceil(ratio * count)` resident pages of each row by score (ties to the lowest
    page) get stamp = the row's current step; with `threshold`, a page must also score at least `threshold` times
    the mean score of the row's resident pages (scale-free: any score reduction, any count).
    rows [n] int64; scores [n, L] float >= 0 (ignored where a slot is EMPTY). Returns the refreshed mask [n, L]."""
    pages = state.pages[rows]  # [n, L]
    valid = pages != EMPTY
    if ratio >= 1.0:  # every resident page is in the top: no ranking needed
        hit = valid
    else:
        k = torch.ceil(state.count[rows].to(torch.float64) * ratio).to(torch.int64)  # [n]
        hit = valid & (rank_desc(pages, scores) < k[:, None])
    if threshold is not None:
        total = torch.where(valid, scores, torch.zeros_like(scores)).sum(dim=1, keepdim=True)  # [n, 1]
        hit &= scores * state.count[rows][:, None] >= threshold * total
    step = state.step[rows][:, None].expand_as(pages)
    state.stamp[rows] = torch.where(hit, step, state.stamp[rows])
    return hit
