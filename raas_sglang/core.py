"""The RaaS policy core: per-request-row state in batched tensors, pure torch, no SGLang.

State is indexed by SGLang's request-pool row (`req.kv.req_pool_idx`), so batch filter/merge needs no
bookkeeping: a row is reset on admit and on release, and every operation takes the rows it acts on.

Definitions (docs/architecture.md):
- a page is `page_size` consecutive logical token positions; page `p` covers `[p * ps, (p + 1) * ps)`;
- pinned: tokens `[0, pin_len)` plus the rest of the last partial prompt page; decode pages start at
  `first_decode_page = ceil(pin_len / ps)`;
- each resident decode page has a stamp: the request's own decode step at which it was opened or last
  refreshed; a request keeps at most `L = budget_pages` resident decode pages, counting the page being written.

NOTE: slots store *logical* page indices (position // ps), not physical ids: the physical slots of page `p` are
`req_to_token[row, p*ps:(p+1)*ps]`, and logical indices give the tie-break ("lowest position") and the first hole
for the radix tree directly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from raas_sglang.holes import hole_pages
from raas_sglang.host import HostBatch, HostMirror, host_batch, to_device
from raas_sglang.policies import DENSE_ID, PolicySet
from raas_sglang.policies.base import EMPTY

DENSE_FROM = 1 << 62  # `sparse_from` of a row whose KV all equals dense attention's


class Victims(NamedTuple):
    """One eviction decision per requested row. `page[i] == EMPTY` means row i evicts nothing.

    `host`/`need` (from `RaasState.victims`): the batch on the host and the rows that must evict; NOTE: each such
    row's page is a resident page, unless its policy protected every candidate (`found` counts them on the device:
    the caller compares it with `need.sum()` in its one sync)."""

    rows: torch.Tensor  # [n] int64 request-pool rows
    page: torch.Tensor  # [n] int64 logical page index to evict, or EMPTY
    host: HostBatch | None = None
    need: np.ndarray | None = None  # [n] bool


class RowSnapshot(NamedTuple):
    """One row's state, kept across a retraction so the request resumes with the same pages, stamps and holes
    (`RaasState.snapshot` / `restore`). Tensors are copies, [L] each."""

    pages: torch.Tensor  # [L] int64
    stamp: torch.Tensor  # [L] int64
    score: torch.Tensor  # [L] float32
    policy: int
    count: int
    pin_len: int
    step: int
    evicted: int
    limit: int
    sparse_from: int


class RaasState:
    """Batched per-row state of the budgeted KV policies; each row runs one policy of `policies` (or is dense).

    The state is policy-agnostic: it holds the pages and generic per-page fields, and hands each policy its rows
    (`victims`, `observe`, `prompt_window` dispatch through `policies`); what a policy's parameters are and how
    it reads `stamp` / `score` is the policy's business (`raas_sglang.policies`).

    pages   [rows, L] int64  logical page index of each resident decode page (EMPTY = free slot)
    stamp   [rows, L] int64  decode step at which the page was opened; a policy may refresh it (raas: last hit)
    score   [rows, L] float32 score accumulated while resident (`accumulate`; h2o, raas's reserve)
    policy  [rows]    int64  the row's policy id (`policies.ids`; DENSE_ID = 0 for dense and released rows)
    count   [rows]    int64  resident decode pages
    pin_len [rows]    int64  tokens [0, pin_len) are pinned
    step    [rows]    int64  the request's own decode steps so far (0 at its first decode step)
    evicted [rows]    int64  pages evicted from the row since admit
    limit   [rows]    int64  the row's page limit (<= L)
    sparse_from [rows] int64 first position whose KV was computed attending less than all before it (a hole, a
                             window, a selection; DENSE_FROM: none): only KV before it may enter the radix tree
    """

    def __init__(
        self, num_rows: int, budget_pages: int, page_size: int, device: str | torch.device = "cpu",
        policies: PolicySet | None = None,
    ):
        if budget_pages < 2:
            raise ValueError(f"budget_pages must be >= 2, got {budget_pages}")
        self.L = budget_pages
        self.policies = policies if policies is not None else PolicySet.from_config()
        self.page_size = page_size
        self.device = torch.device(device)
        z = dict(dtype=torch.int64, device=self.device)
        self.pages = torch.full((num_rows, budget_pages), EMPTY, **z)  # [rows, L] int64
        self.stamp = torch.zeros((num_rows, budget_pages), **z)  # [rows, L] int64
        self.score = torch.zeros((num_rows, budget_pages), dtype=torch.float32, device=self.device)  # [rows, L]
        self.policy = torch.full((num_rows,), DENSE_ID, **z)  # [rows] int64
        self.count = torch.zeros(num_rows, **z)  # [rows] int64
        self.pin_len = torch.zeros(num_rows, **z)  # [rows] int64
        self.step = torch.zeros(num_rows, **z)  # [rows] int64
        self.evicted = torch.zeros(num_rows, **z)  # [rows] int64
        self.limit = torch.full((num_rows,), budget_pages, **z)  # [rows] int64 per-request L (<= self.L)
        self.sparse_from = torch.full((num_rows,), DENSE_FROM, **z)  # [rows] int64
        self.host = HostMirror(num_rows, budget_pages, page_size)  # NOTE: written wherever its fields are

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def admit(self, row: int, pin_len: int, budget_pages: int | None = None, policy: str = "raas") -> None:
        """Reset `row` for a new request whose first `pin_len` tokens are pinned, running `policy` ("dense" or a
        name in `self.policies`)."""
        limit = self.L if budget_pages is None else budget_pages
        if not 2 <= limit <= self.L:
            raise ValueError(f"per-request budget must be 2..{self.L} pages, got {limit}")
        self.release(row)
        self.pin_len[row] = self.host.pin_len[row] = pin_len
        self.limit[row] = self.host.limit[row] = limit
        self.policy[row] = self.host.policy[row] = self.policies.ids[policy]

    def release(self, row: int) -> None:
        self.pages[row] = EMPTY
        self.stamp[row] = 0
        self.score[row] = 0
        self.policy[row] = DENSE_ID
        self.count[row] = 0
        self.pin_len[row] = 0
        self.step[row] = 0
        self.evicted[row] = 0
        self.limit[row] = self.L
        self.sparse_from[row] = DENSE_FROM
        self.host.reset(row)

    def snapshot(self, row: int) -> RowSnapshot:
        """A copy of `row`'s state (see `RowSnapshot`)."""
        h = self.host
        step, sparse_from = torch.stack([self.step[row], self.sparse_from[row]]).tolist()  # one sync (a retraction)
        return RowSnapshot(self.pages[row].clone(), self.stamp[row].clone(), self.score[row].clone(),
                           int(h.policy[row]), int(h.count[row]), int(h.pin_len[row]), step,
                           int(h.evicted[row]), int(h.limit[row]), sparse_from)

    def restore(self, row: int, snap: RowSnapshot) -> None:
        """Put a snapshot back, on `row` (a retracted request resumes on whatever row it gets)."""
        self.pages[row], self.stamp[row], self.score[row] = snap.pages, snap.stamp, snap.score
        self.policy[row], self.count[row], self.pin_len[row] = snap.policy, snap.count, snap.pin_len
        self.step[row], self.evicted[row], self.limit[row] = snap.step, snap.evicted, snap.limit
        self.sparse_from[row] = snap.sparse_from
        h = self.host
        h.policy[row], h.count[row], h.pin_len[row] = snap.policy, snap.count, snap.pin_len
        h.evicted[row], h.limit[row] = snap.evicted, snap.limit

    def first_decode_page(self, rows: torch.Tensor) -> torch.Tensor:
        """[n] int64: ceil(pin_len / page_size) for each row."""
        return (self.pin_len[rows] + self.page_size - 1) // self.page_size

    # -- one decode step -----------------------------------------------------------------------------------------

    def victims(self, rows: torch.Tensor, positions: torch.Tensor, host: HostBatch | None = None) -> Victims:
        """Choose, for each row whose next token opens a page while it holds its limit of pages, the page to
        evict: its policy's lowest `victim_key`, never the newest resident page (it holds the most recent
        tokens). Rows that need no eviction get EMPTY. Does not change state; call `evict` next.

        rows [n] int64, positions [n] int64 (logical position of the token about to be written); `host`: the same
        on the host (else read back: a sync). Which rows evict is decided on the host (`HostMirror.must_evict`).
        """
        host = host if host is not None else host_batch(rows, positions)
        need_h = self.host.must_evict(host.rows, host.positions)  # [n] bool
        if not need_h.any():  # most steps: no row opens a page at its limit
            return Victims(rows, torch.full_like(rows, EMPTY), host, need_h)
        need = to_device(need_h, self.device)  # [n] bool
        pages = self.pages[rows]  # [n, L]
        valid = pages != EMPTY
        newest = pages.max(dim=1, keepdim=True).values  # [n, 1]
        candidate = valid & (pages != newest)
        inf = float("inf")
        key = torch.full(pages.shape, inf, dtype=torch.float64, device=self.device)  # [n, L]
        for policy, mine in self.policies.in_batch(self.policy[rows], self.host.policy[host.rows]):
            key = torch.where(mine[:, None], policy.victim_key(self, rows, pages), key)
        key = torch.where(candidate, key, torch.full_like(key, inf))
        best, slot = key.min(dim=1)  # [n]
        chosen = pages.gather(1, slot[:, None]).squeeze(1)  # [n]
        ok = need & torch.isfinite(best)
        return Victims(rows, torch.where(ok, chosen, torch.full_like(chosen, EMPTY)), host, need_h)

    def evict(self, victims: Victims) -> None:
        """Drop each chosen page from its row. Pages equal to EMPTY are skipped (evict 0 is always safe).
        NOTE: with `victims.need`, the host mirror takes one page off each needing row (the caller has checked
        that each found one); without it, the removals are read back (a sync)."""
        hit = (self.pages[victims.rows] == victims.page[:, None]) & (victims.page[:, None] != EMPTY)  # [n, L]
        pages = self.pages[victims.rows]
        self.pages[victims.rows] = torch.where(hit, torch.full_like(pages, EMPTY), pages)
        removed = hit.sum(dim=1)
        self.count[victims.rows] -= removed
        self.evicted[victims.rows] += removed
        if victims.need is not None:
            rows_h, removed_h = victims.host.rows[victims.need], 1
        else:
            rows_h, removed_h = victims.rows.cpu().numpy(), removed.cpu().numpy()
        np.subtract.at(self.host.count, rows_h, removed_h)
        np.add.at(self.host.evicted, rows_h, removed_h)

    def open_pages(self, rows: torch.Tensor, positions: torch.Tensor, host: HostBatch | None = None) -> None:
        """Record the page opened by each row's token at `positions` (rows whose token does not open a page are
        untouched). A new page is stamped with the row's current step. `host`: as in `victims`.

        NOTE: callers evict first; a row at its limit that opens a page without a free slot is a bug.
        """
        host = host if host is not None else host_batch(rows, positions)
        opens_h = self.host.opens_page(host.rows, host.positions)  # [n] bool
        if not opens_h.any():
            return
        rows_h = host.rows[opens_h]  # [m]
        if (self.host.count[rows_h] >= self.host.limit[rows_h]).any():
            raise RuntimeError("RaaS state: a row opened a page with no free slot (evict before allocating)")
        idx = to_device(np.flatnonzero(opens_h), self.device)  # [m] int64
        rows, positions = rows[idx], positions[idx]
        pages = self.pages[rows]  # [m, L]
        in_limit = torch.arange(self.L, device=self.device)[None, :] < self.limit[rows][:, None]
        usable = (pages == EMPTY) & in_limit  # NOTE: count < limit, so each row has one
        slot = usable.to(torch.int8).argmax(dim=1)  # first usable slot, [m]
        self.pages[rows, slot] = positions // self.page_size
        self.stamp[rows, slot] = self.step[rows]
        self.score[rows, slot] = 0.0
        self.count[rows] += 1
        self.host.count[rows_h] += 1

    def observe(self, rows: torch.Tensor, scores: torch.Tensor, host_rows: np.ndarray | None = None) -> None:
        """One step's page scores for `rows`: each row's policy updates its per-page state; then every row's
        step advances. rows [n] int64; scores [n, L] float, aligned with `self.pages[rows]`; host_rows: `rows`
        on the host (else read back: a sync)."""
        host_rows = host_rows if host_rows is not None else rows.cpu().numpy()
        for policy, idx in self.policies.groups(self.host.policy[host_rows]):
            if idx is None:  # every row runs this policy
                policy.observe(self, rows, scores)
            else:
                idx = to_device(idx, self.device)  # [m] int64
                policy.observe(self, rows[idx], scores[idx])
        self.step[rows] += 1

    def mark_sparse(self, rows: torch.Tensor, positions: torch.Tensor, sparse: torch.Tensor) -> None:
        """The KV each row writes at `positions` [n] int64 is computed attending a proper subset of its earlier
        positions where `sparse` [n] bool: lower the row's `sparse_from` to it (no host sync)."""
        current = self.sparse_from[rows]
        self.sparse_from[rows] = torch.where(sparse, torch.minimum(current, positions), current)

    def accumulate(self, rows: torch.Tensor, scores: torch.Tensor) -> None:
        """Add one step's scores [n, L] to `score` of the resident pages of `rows` [n]."""
        valid = self.pages[rows] != EMPTY
        self.score[rows] += torch.where(valid, scores, torch.zeros_like(scores))

    def prompt_window(self, rows: torch.Tensor, pin_end: torch.Tensor, seq_lens: torch.Tensor,
                      host_rows: np.ndarray | None = None):
        """(a, b) [n] int64: each row attends to pinned positions [0, a) and [b, pin_end) (its policy's choice;
        the whole prompt unless the policy says otherwise)."""
        a, b = pin_end, pin_end
        present = self.host.policy[host_rows] if host_rows is not None else None
        for policy, mine in self.policies.in_batch(self.policy[rows], present):
            pa, pb = policy.prompt_window(self, rows, pin_end, seq_lens)
            a, b = torch.where(mine, pa, a), torch.where(mine, pb, b)
        return a, b

    # -- queries -------------------------------------------------------------------------------------------------

    def resident_pages(self, row: int) -> list[int]:
        """Sorted logical indices of the row's resident decode pages (a host list, one sync; not for the hot
        path)."""
        return sorted(p for p in self.pages[row].tolist() if p != EMPTY)

    def holes(self, row: int, upto_tokens: int) -> list[int]:
        """Logical indices of the row's evicted decode pages below `upto_tokens`, ascending (a host list for the
        release and checkpoint paths, not the decode step; `holes.hole_pages`)."""
        return self._holes(row, upto_tokens, self.resident_pages(row)) if self.host.evicted[row] else []

    def _holes(self, row: int, upto_tokens: int, resident: list[int]) -> list[int]:
        first = int(self.host.first_decode_page(np.array([row]))[0])
        return hole_pages(resident, first, -(-upto_tokens // self.page_size))

    def dense_prefix(self, row: int, seq_len: int) -> int:
        """Leading positions whose KV equals dense attention's (before the first hole and `sparse_from`, at most
        `seq_len`): the radix tree may receive at most `[0, dense_prefix)` (it page-floors it). One sync."""
        if self.host.evicted[row] == 0:
            return min(seq_len, int(self.sparse_from[row]))
        sparse_from, *pages = torch.cat([self.sparse_from[row:row + 1], self.pages[row]]).tolist()
        holes = self._holes(row, seq_len, sorted(p for p in pages if p != EMPTY))
        return min(self._hole_start(holes, seq_len), sparse_from)

    def first_hole(self, row: int, seq_len: int) -> int:
        """The first logical token position whose KV slot was evicted, or `seq_len` if none."""
        return self._hole_start(self.holes(row, seq_len), seq_len)

    def _hole_start(self, holes: list[int], seq_len: int) -> int:
        return min(seq_len, holes[0] * self.page_size) if holes else seq_len
