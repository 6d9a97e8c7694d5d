"""The interface every KV policy implements (pure torch, no SGLang).

A policy acts on the batched per-row state of `raas_sglang.core.RaasState`, for the rows that run it:
- `victim_key`: which resident decode page a row at its page limit evicts when it opens a page — the candidate
  with the lowest key (the core never offers the newest page, which holds the token being written);
- `observe`: how one step's page scores (attention mass or Quest estimates, [n, L] aligned with `state.pages`)
  update the policy's per-page state (`state.stamp`, `state.score`: generic per-page fields; a policy decides
  what they mean for its rows);
- `prompt_window`: which pinned prompt positions decode attends to, as `[0, a) + [b, pin_end)`;
- `selects`: whether attention further picks, per layer, the budget's number of pages by Quest bound among all
  the row's pages ("all") or its prompt pages ("prompt");
- `evicts`: whether the policy frees decode pages (False: the row holds all its KV, as quest does).

A policy's own parameters live on its instance (`from_config` reads them from the server's `RaasConfig`); the
state core never sees them. To add a policy: one file with a `Policy` subclass decorated with
`raas_sglang.policies.register` (see `raas_sglang.policies` for how a server finds it) and one test.

NOTE: every evicting policy frees decode pages physically and keeps the prompt pages allocated (the radix tree
shares them); a policy that does not attend to part of the prompt only leaves it out of the resident set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from raas_sglang.core import RaasState

EMPTY = -1  # a free slot in `RaasState.pages`


class Policy:
    name = ""
    evicts = True  # frees decode pages beyond the row's limit (the bound I4 applies)
    selects: str | None = None  # Quest selection per layer: "all" pages, the "prompt" pages, or None (attend all kept)

    @classmethod
    def from_config(cls, config: Any) -> "Policy":
        """The instance a server runs (`config` is its `raas_sglang.config.RaasConfig`). Default: no parameters."""
        return cls()

    def victim_key(self, state: "RaasState", rows: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
        """rows [n] int64; pages [n, L] int64 (= state.pages[rows]). Returns [n, L] float64, lowest evicted
        first; +inf marks a page the policy protects."""
        raise NotImplementedError

    def observe(self, state: "RaasState", rows: torch.Tensor, scores: torch.Tensor) -> None:
        """rows [m] int64 running this policy; scores [m, L] float32 (ignored where a slot is EMPTY)."""

    def prompt_window(
        self, state: "RaasState", rows: torch.Tensor, pin_end: torch.Tensor, seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) [n] int64: attend to pinned positions [0, a) and [b, pin_end). Default: the whole prompt."""
        return pin_end, pin_end

    def prompt_window_host(self, limit: np.ndarray, pin_end: np.ndarray, seq_lens: np.ndarray, page_size: int):
        """`prompt_window` on the host, from the rows' page limits, pin ends and seq lens ([m] int64 numpy each):
        (a, b) [m] int64, or None when a policy overrides `prompt_window` without this (the decode step then sizes
        its resident table by the whole prompt: correct, only wider). Lets a step size its table without a sync."""
        if type(self).prompt_window is Policy.prompt_window:
            return pin_end, pin_end
        return None


def rank_desc(pages: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """[n, L] int64: each slot's rank by (score desc, page asc) among its row's resident pages (0 = best); EMPTY
    slots rank last. pages [n, L] int64; scores [n, L] float."""
    valid = pages != EMPTY
    s = torch.where(valid, scores, torch.full_like(scores, torch.finfo(scores.dtype).min))
    # stable sort by page first, then by score
    by_page = torch.where(valid, pages, torch.full_like(pages, torch.iinfo(torch.int64).max)).argsort(dim=1, stable=True)
    by_score = s.gather(1, by_page).argsort(dim=1, descending=True, stable=True)
    order = by_page.gather(1, by_score)  # slot indices, best first, [n, L]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(pages.shape[1], device=pages.device).expand_as(order).contiguous())
    return rank
