"""The interface every KV policy implements (pure torch, no SGLang).

A policy acts on the batched per-row state of `raas_sglang.core.RaasState`, for the rows that run it:
- `victim_key`: which resident decode page a row at its page limit evicts when it opens a page — the candidate
  with the lowest key (the core never offers the newest page, which holds the token being written);
- `observe`: how one step's page scores (attention mass or Quest estimates, [n, L] aligned with `state.pages`)
  update the policy's per-page state;
- `prompt_window`: which pinned prompt positions decode attends to, as `[0, a) + [b, pin_end)`;
- `selects`: whether attention further picks, per layer, the budget's number of pages by Quest bound among all
  the row's pages ("all") or its prompt pages ("prompt").

NOTE: every policy evicts decode pages physically and keeps the prompt pages allocated (the radix tree shares
them); a policy that does not attend to part of the prompt only leaves it out of the resident set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from raas_sglang.core import RaasState

EMPTY = -1  # a free slot in `RaasState.pages`


class Policy:
    name = ""
    selects: str | None = None  # Quest selection per layer: "all" pages, the "prompt" pages, or None (attend all kept)

    def victim_key(self, state: "RaasState", rows: torch.Tensor, pages: torch.Tensor) -> torch.Tensor:
        """rows [n] int64; pages [n, L] int64 (= state.pages[rows]). Returns [n, L] float64, lowest evicted
        first; +inf marks a page the policy protects."""
        raise NotImplementedError

    def observe(
        self, state: "RaasState", rows: torch.Tensor, scores: torch.Tensor, ratio: float, threshold: float | None
    ) -> None:
        """rows [m] int64 running this policy; scores [m, L] float32 (ignored where a slot is EMPTY)."""

    def prompt_window(
        self, state: "RaasState", rows: torch.Tensor, pin_end: torch.Tensor, seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b) [n] int64: attend to pinned positions [0, a) and [b, pin_end). Default: the whole prompt."""
        return pin_end, pin_end
