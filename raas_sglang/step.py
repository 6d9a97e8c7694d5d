"""The tensor logic of one decode forward, pure torch (no SGLang): what each row attends to, per-layer Quest
selection, page-score folding, and the KV a row holds.

`patches/attention*.py` build one `DecodeStep` per decode forward (`DecodeStep.build`) and hand it to every layer
hook; nothing here keeps state between forwards. Shapes: `bs` rows in the batch, `L` = the state's page slots
per row, `n_max` = the longest resident set in the batch, `P` = candidate pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from raas_sglang.core import EMPTY, RaasState
from raas_sglang.host import HostBatch, host_batch
from raas_sglang.scoring import PageKeyBounds, page_shares


@dataclass
class ResidentTable:
    """The KV slots one decode forward attends to, per row: attended pinned positions, then the resident decode
    pages, ascending. Every backend reads this same set: torch_native the padded table, triton and flashinfer
    the ragged lists from `ragged()`.
    """

    slots: torch.Tensor  # [bs, n_max] int64 KV slots (padding = slot 0, never read past `n`)
    n: torch.Tensor  # [bs] int64
    col_slot: torch.Tensor  # [bs, n_max] int64: state slot of each position's decode page, L if pinned/padding
    pos: torch.Tensor  # [bs, n_max] int64 logical positions (padding = 0)
    rows: torch.Tensor  # [bs] int64 request-pool rows
    n_host: np.ndarray  # [bs] int64 `n` on the host (an upper bound where a policy has no host window)
    n_exact: bool  # whether n_host == n (every row's policy has `prompt_window_host`)
    cand_end: torch.Tensor | None = None  # [bs] int64: Quest-selecting rows pick among positions below; else 0
    cand_max: int = 0  # max(cand_end), from the host

    def ragged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kv_indptr [bs + 1] int32, kv_indices [sum(n)] int64): row i reads kv_indices[indptr[i]:indptr[i+1]].
        NOTE: scattered into a buffer sized from the host (a boolean mask would sync); padding columns land in
        one spare entry past the end."""
        cols = torch.arange(self.slots.shape[1], device=self.slots.device)  # [n_max]
        indptr = torch.zeros(len(self.n) + 1, dtype=torch.int32, device=self.n.device)
        indptr[1:] = torch.cumsum(self.n, dim=0)
        total = int(self.n_host.sum())  # >= sum(n)
        dest = indptr[:-1, None].to(torch.int64) + cols[None, :]  # [bs, n_max]
        dest = torch.where(cols[None, :] < self.n[:, None], dest, torch.full_like(dest, total))
        out = torch.empty(total + 1, dtype=torch.int64, device=self.slots.device)
        out.scatter_(0, dest.reshape(-1), self.slots.reshape(-1))
        return indptr, out[:total]

    def window_ragged(self, lo: torch.Tensor, width: int,
                      mapping: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(kv_indptr [bs + 1] int32, kv_indices [sum m] int64): a sliding-window layer's lists, each row's resident
        slots at logical positions >= lo [bs] int64 (a suffix of its columns, since positions ascend). `width`: the
        most positions a window holds (lo >= seq_len - width), so the buffer is sized from the host, no sync.
        `mapping` [slots] int64: the ids the window layers read instead of the slots (a hybrid pool's window twins).
        NOTE: a hole inside the window is simply absent (the upstream lists would read its padding slot)."""
        cols = torch.arange(self.slots.shape[1], device=self.slots.device)  # [n_max]
        inside = (cols[None, :] < self.n[:, None]) & (self.pos >= lo[:, None])  # [bs, n_max] a suffix of [0, n)
        m = inside.sum(dim=1)  # [bs]
        indptr = torch.zeros(len(self.n) + 1, dtype=torch.int32, device=self.n.device)
        indptr[1:] = torch.cumsum(m, dim=0)
        total = int(np.minimum(self.n_host, width).sum())  # >= sum(m)
        dest = indptr[:-1, None].to(torch.int64) + cols[None, :] - (self.n - m)[:, None]  # [bs, n_max]
        dest = torch.where(inside, dest, torch.full_like(dest, total))
        out = torch.empty(total + 1, dtype=torch.int64, device=self.slots.device)
        values = self.slots if mapping is None else mapping[torch.where(inside, self.slots, 0)]  # [bs, n_max]
        out.scatter_(0, dest.reshape(-1), values.reshape(-1))
        return indptr, out[:total]


def prompt_window(state: RaasState, rows: torch.Tensor, seq_lens: torch.Tensor, host_rows: np.ndarray | None = None):
    """(pin_end, (a, b)) [bs] int64: the end of each row's pinned region and the pinned positions it attends,
    [0, a) + [b, pin_end) (its policy's choice: `RaasState.prompt_window`)."""
    pin_end = torch.minimum(state.first_decode_page(rows) * state.page_size, seq_lens)
    return pin_end, state.prompt_window(rows, pin_end, seq_lens, host_rows)


def resident_lengths(state: RaasState, host: HostBatch) -> tuple[np.ndarray, bool]:
    """(n [bs] int64, exact), on the host: the positions each row attends this forward (`resident_positions`' n),
    from the host mirror (no sync); an upper bound (exact False) for rows whose policy has no `prompt_window_host`.
    NOTE: a row with decode pages is writing into its newest one, the page of its last position."""
    h, ps = state.host, state.page_size
    rows, seq = host.rows, host.positions + 1
    pin_end = np.minimum(h.first_decode_page(rows) * ps, seq)  # [bs]
    n_pin, exact = pin_end.copy(), True
    for policy, idx in state.policies.groups(h.policy[rows]):
        sel = slice(None) if idx is None else idx
        window = policy.prompt_window_host(h.limit[rows][sel], pin_end[sel], seq[sel], ps)
        if window is not None:
            n_pin[sel] = window[0] + pin_end[sel] - window[1]
        exact &= window is not None
    count = h.count[rows]
    return n_pin + np.where(count > 0, (count - 1) * ps + (seq - 1) % ps + 1, 0), exact


def resident_positions(state: RaasState, rows: torch.Tensor, seq_lens: torch.Tensor, window=None,
                       n_max: int | None = None):
    """Logical positions each row attends to, ascending, padded — and which state slot each one's page is in.

    rows [bs] int64, seq_lens [bs] int64 (tokens in KV, including this step's). Returns (pos [bs, n_max] int64,
    padding = 0; n [bs] int64; col_slot [bs, n_max] int64 = the index into `state.pages[row]` of the position's
    decode page, or L for pinned positions and padding). Attended pinned tokens come first, then the resident
    decode pages in ascending order; only the newest page can be partial (it holds the token written this
    step), so only the L page indices are sorted, never the positions. `n_max`: the table width, from the host
    (`resident_lengths`; else read back, a sync).
    """
    ps, L = state.page_size, state.L
    pin_end, (a, b) = window if window is not None else prompt_window(state, rows, seq_lens)
    n_pin = a + (pin_end - b)  # [bs]
    pages = state.pages[rows]  # [bs, L]
    valid = pages != EMPTY
    big = torch.iinfo(torch.int64).max
    sorted_pages, order = torch.where(valid, pages, torch.full_like(pages, big)).sort(dim=1)  # [bs, L]
    count = valid.sum(dim=1)  # [bs]
    newest = sorted_pages.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1)  # [bs]
    dec_tokens = torch.where(count > 0, (count - 1) * ps + (seq_lens - newest * ps), torch.zeros_like(count))
    n = n_pin + dec_tokens  # [bs]
    cols = torch.arange(int(n.max()) if n_max is None else n_max, device=rows.device)[None, :]  # [1, n_max]
    rel = (cols - n_pin[:, None]).clamp(min=0)  # [bs, n_max] offset into the decode part
    k = (rel // ps).clamp(max=L - 1)  # [bs, n_max] ordinal of the decode page
    in_dec = (cols >= n_pin[:, None]) & (cols < n[:, None])
    dec_pos = sorted_pages.gather(1, k).clamp(max=big // 2) * ps + rel % ps
    pin_pos = torch.where(cols < a[:, None], cols, b[:, None] + (cols - a[:, None]))
    pos = torch.where(in_dec, dec_pos, torch.where(cols < n_pin[:, None], pin_pos, torch.zeros_like(cols)))
    col_slot = torch.where(in_dec, order.gather(1, k), torch.full_like(k, L))
    return pos, n, col_slot


def selection_ends(state: RaasState, host: HostBatch) -> np.ndarray | None:
    """[bs] int64, on the host: for rows whose policy selects pages per layer, the end of their candidate
    positions (all pages before the one being written, or the pinned prompt); 0 for other rows. None if no row
    selects."""
    h, ps = state.host, state.page_size
    seq = host.positions + 1
    ends = np.zeros_like(seq)
    for policy, idx in state.policies.groups(h.policy[host.rows]):
        if policy.selects is None:
            continue
        sel = slice(None) if idx is None else idx
        if policy.selects == "all":
            ends[sel] = (seq[sel] - 1) // ps * ps
        else:
            ends[sel] = np.minimum(h.first_decode_page(host.rows[sel]) * ps, seq[sel])
    return ends if (ends > 0).any() else None


def attends_subset(state: RaasState, rows: torch.Tensor, window, cand_end: torch.Tensor | None) -> torch.Tensor:
    """[bs] bool: rows attending less than all earlier positions this forward (a hole, a prompt window, more Quest
    candidate pages than their limit). rows [bs] int64; window: `prompt_window`'s; cand_end: `ResidentTable`'s."""
    _, (a, b) = window
    subset = (state.evicted[rows] > 0) | (a < b)
    if cand_end is not None:
        subset |= -(-cand_end // state.page_size) > state.limit[rows]
    return subset


def build_table(state: RaasState, rows: torch.Tensor, seq_lens: torch.Tensor, req_to_token: torch.Tensor,
                lengths: tuple[np.ndarray, bool] | None = None, cand_end: torch.Tensor | None = None, window=None,
                cand_max: int = 0) -> ResidentTable:
    """The resident table of a decode batch. req_to_token [rows_total, max_context] int32 (SGLang's map);
    lengths: `resident_lengths` (else computed from the batch read back: a sync)."""
    n_host, exact = lengths if lengths is not None else resident_lengths(state, host_batch(rows, seq_lens - 1))
    pos, n, col_slot = resident_positions(state, rows, seq_lens, window, int(n_host.max()))
    slots = req_to_token[rows[:, None], pos].to(torch.int64)  # [bs, n_max] KV slots
    return ResidentTable(slots, n, col_slot, pos, rows, n_host, exact, cand_end, cand_max)


def quest_keep(table: ResidentTable, bounds: PageKeyBounds, layer: int, q: torch.Tensor, sm_scale: float,
               limit: torch.Tensor, lo: torch.Tensor | None = None) -> torch.Tensor:
    """keep [bs, n_max] bool: one layer's Quest selection for the selecting rows (the `limit` candidate pages with
    the highest bound, max over heads; everything else of theirs is kept), all True for other rows.
    q [bs, q_heads, d]; limit [bs] int64 (each row's page limit); lo [bs] int64: a sliding-window layer attends no
    position below it, so a page wholly below is no candidate (the limit goes to pages it can attend). NOTE: a
    selecting row's candidate positions are table columns [0, cand_end), since its pinned part starts at position
    0 and is contiguous."""
    ps = bounds.page_size
    P = -(-table.cand_max // ps)
    j = torch.arange(P, device=q.device)  # [P] candidate logical pages
    ok = j[None, :] * ps < table.cand_end[:, None]  # [bs, P]
    if lo is not None:
        ok &= (j[None, :] + 1) * ps > lo[:, None]
    first = (j * ps).clamp(max=table.slots.shape[1] - 1)
    phys = torch.where(ok, table.slots[:, first] // ps, torch.zeros_like(ok, dtype=torch.int64))  # [bs, P]
    u = bounds.head_scores(layer, q, phys, sm_scale).amax(dim=1)  # [bs, P]
    u = torch.where(ok, u, torch.full_like(u, float("-inf")))
    order = u.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(P, device=q.device).expand_as(order).contiguous())
    chosen = ok & (rank < limit[:, None])  # [bs, P]
    col_page = (table.pos // ps).clamp(max=max(P - 1, 0))  # [bs, n_max]
    candidate = table.pos < table.cand_end[:, None]
    return ~candidate | chosen.gather(1, col_page)


class PageScores:
    """One forward's score per resident decode page, folded over layers (`--raas-reduce` HEADS-LAYERS).

    acc [bs, L] float32, aligned with `state.pages[rows]`. Each layer adds either its exact attention mass
    (`add_mass`, or the triton kernel through `kernel_target` / `kernel_done`) or Quest estimates (`add_bounds`);
    `finish` returns the scores a policy reads.

    Under tensor parallel (`ranks` > 1) a process sees only its shard of heads, so a layer's head-reduced score is
    partial: the layers are kept apart (`partial`, one [bs, L] each) and `finish` combines them across the ranks
    in one collective of [layers, bs, L] (sum over ranks / ranks for a mean over heads: each rank holds the same
    number of heads; max for a max), then folds over layers as at tp 1, so HEADS-LAYERS means the same at every
    tp and every rank ends with the same bits.
    """

    def __init__(self, state: RaasState, rows: torch.Tensor, reduce: str, req_to_token: torch.Tensor | None = None,
                 ranks: int = 1):
        """`req_to_token` given: Quest scoring, so each resident page's physical id is looked up once here."""
        self.heads, self.layers = reduce.split("-")
        self.ranks = ranks
        self.partial: list[torch.Tensor] = []  # ranks > 1: each layer's [bs, L] float32 partial score
        pages = state.pages[rows]  # [bs, L]
        self.pages = pages  # [bs, L] int64 logical page ids (EMPTY where none)
        self.valid = pages != EMPTY  # [bs, L] bool
        self.acc = torch.zeros(pages.shape, dtype=torch.float32, device=pages.device)  # [bs, L]
        self.phys = None  # [bs, L] int64 physical page ids (Quest scoring only)
        if req_to_token is not None:
            ps = state.page_size
            logical = torch.where(self.valid, pages, torch.zeros_like(pages))
            phys = req_to_token[rows[:, None], logical * ps].to(torch.int64) // ps
            self.phys = torch.where(self.valid, phys, torch.zeros_like(phys))

    def fold(self, per_page: torch.Tensor) -> None:
        """per_page [bs, L] float32: one layer's score per page slot (kept apart under tensor parallel)."""
        if self.ranks > 1:
            self.partial.append(per_page.clone())
        else:
            self._fold(per_page)

    def _fold(self, per_page: torch.Tensor) -> None:
        if self.layers == "max":
            torch.maximum(self.acc, per_page, out=self.acc)
        else:
            self.acc += per_page

    def finish(self, combine: Callable[[torch.Tensor, str], None] | None = None) -> torch.Tensor:
        """acc [bs, L] float32: the scores, complete. `combine(t, op)` all-reduces t in place across the tensor
        parallel ranks (op "sum" or "max"); needed, and called once, only when ranks > 1."""
        if self.ranks > 1 and self.partial:
            layers = torch.stack(self.partial)  # [layers, bs, L] float32
            self.partial = []
            combine(layers, "max" if self.heads == "max" else "sum")
            if self.heads == "mean":
                layers /= self.ranks
            for per_page in layers:
                self._fold(per_page)
        return self.acc

    def add_mass(self, probs: torch.Tensor, col_slot: torch.Tensor) -> None:
        """probs [bs, q_heads, n_max] float32: one layer's attention probabilities per table column; col_slot
        [bs, n_max] (`ResidentTable.col_slot`). Each decode page's mass per head (pinned positions and padding fall
        into a dropped column), reduced over heads."""
        bs, heads, _ = probs.shape
        L = self.acc.shape[1]
        if self.heads == "mean":
            per_slot = torch.zeros((bs, L + 1), dtype=torch.float32, device=probs.device)
            per_slot.scatter_add_(1, col_slot, probs.mean(dim=1))
        else:
            per_head = torch.zeros((bs, heads, L + 1), dtype=torch.float32, device=probs.device)
            per_head.scatter_add_(2, col_slot[:, None, :].expand(bs, heads, -1), probs)
            per_slot = per_head.amax(dim=1)
        self.fold(per_slot[:, :L])

    def add_bounds(self, bounds: PageKeyBounds, layer: int, q: torch.Tensor, sm_scale: float,
                   lo: torch.Tensor | None = None) -> None:
        """q [bs, q_heads, d]: this layer's Quest estimate of each resident page's share (`page_shares`). lo [bs]
        int64: a sliding-window layer attends no position below it, so a page wholly below gets no share (as its
        exact mass would be 0)."""
        u = bounds.head_scores(layer, q, self.phys, sm_scale)
        valid = self.valid
        if lo is not None:
            valid = valid & ((self.pages + 1) * bounds.page_size > lo[:, None])
        self.fold(page_shares(u, valid, self.heads))

    def kernel_target(self) -> tuple[torch.Tensor, bool]:
        """(mass [bs, L] float32, accumulate): where a kernel that emits page mass writes one layer's. Summing over
        layers at tp 1, it adds into `acc` in place; else it writes a scratch that `kernel_done` folds."""
        if self.layers == "max" or self.ranks > 1:
            return torch.zeros_like(self.acc), False
        return self.acc, True

    def kernel_done(self, mass: torch.Tensor, accumulated: bool) -> None:
        if not accumulated:
            self.fold(mass)


@dataclass
class DecodeStep:
    """What one decode forward needs in every layer hook, built once before the first layer.

    `table` is None when every row reads all its KV (stock path); `scores` is None when no row has a resident
    decode page to score; `window` is set only when the plugin's triton kernel decodes this forward (it reads
    the resident pages from the state itself, no table).
    """

    rows: torch.Tensor  # [bs] int64 request-pool rows
    seq_lens: torch.Tensor  # [bs] int64 tokens in KV, including this step's
    host: HostBatch  # the batch on the host (its positions = seq_lens - 1)
    last_layer: int  # the model's last layer index (0-based, this process's layers); scores finish there
    table: ResidentTable | None = None
    scores: PageScores | None = None
    window: tuple[torch.Tensor, torch.Tensor] | None = None  # ([bs], [bs]) int64 each row's prompt window (a, b)


def held_tokens(rows: torch.Tensor, seq_lens: torch.Tensor, req_to_token: torch.Tensor, page_size: int,
                max_seq_len: int | None = None):
    """[n] int64: KV tokens each row holds, read from its actual slots: pages whose first entry is a live slot
    (evicted pages point at the padding page 0), times the page size. rows [n] int64, seq_lens [n] int64;
    max_seq_len: max(seq_lens), from the host (else read back: a sync)."""
    ps = page_size
    max_seq_len = int(seq_lens.max()) if max_seq_len is None else max_seq_len
    cols = torch.arange(-(-max_seq_len // ps), device=rows.device) * ps  # [P]
    firsts = req_to_token[rows[:, None], cols[None, :]]  # [n, P]
    return ((firsts != 0) & (cols[None, :] < seq_lens[:, None])).sum(dim=1) * ps  # [n]
