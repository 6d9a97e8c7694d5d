"""RaaS (arXiv 2502.11147): the prompt is pinned; a decode page's stamp is the last step it was among the top
`ratio` of the row's resident pages by score; the page with the oldest stamp is evicted (ties: lowest page)."""

from __future__ import annotations

import torch

from raas_sglang.policies.base import Policy

KEY_SHIFT = float(1 << 31)  # key = stamp * 2^31 + page: oldest stamp first, then lowest page


class Raas(Policy):
    name = "raas"

    def victim_key(self, state, rows, pages):
        return state.stamp[rows].double() * KEY_SHIFT + pages.double()

    def observe(self, state, rows, scores, ratio, threshold):
        state.refresh_top(rows, scores, ratio, threshold)
