"""StreamingLLM (arXiv 2309.17453) at page granularity: attention sinks (the first page of the sequence) plus a
recent window of the row's budget. Decode pages leave first-in first-out; prompt pages outside the sink page and
the window are no longer attended (they stay allocated: the prompt is shared through the radix tree)."""

from __future__ import annotations

import numpy as np
import torch

from raas_sglang.policies import register
from raas_sglang.policies.base import Policy


@register
class Streaming(Policy):
    name = "streaming"

    def victim_key(self, state, rows, pages):
        return pages.double()  # the oldest decode page

    def prompt_window(self, state, rows, pin_end, seq_lens):
        sink = torch.clamp(pin_end, max=state.page_size)
        window_start = seq_lens - state.limit[rows] * state.page_size
        return sink, torch.minimum(torch.maximum(window_start, sink), pin_end)

    def prompt_window_host(self, limit, pin_end, seq_lens, page_size):
        sink = np.minimum(pin_end, page_size)
        return sink, np.minimum(np.maximum(seq_lens - limit * page_size, sink), pin_end)
