"""Per-scheduler-process RaaS runtime: the one object the seam modules share.

With tp = 1 the scheduler, the model runner and the attention backend live in one process (the scheduler
process), so scheduler-side hooks (eviction, release) and attention-side hooks (resident tables, scoring) meet
here. Built lazily on first use from the published server args (`sglang.srt.runtime_context.get_server_args`).

Hooks upstream: none (this module holds state only).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from raas_sglang.config import EVICTING, RaasConfig
from raas_sglang.policies import IDS, REGISTRY
from raas_sglang.core import EMPTY, RaasState, Victims
from raas_sglang.resident_attention import ResidentDecode
from raas_sglang.scoring import PageKeyBounds, page_shares

DENSE_PIN = 1 << 40
# Test-only fault injection, so tests can prove each invariant check fires (tests/test_invariant_checks.py):
# "double_free" (I1), "tree_adopts_hole" (I2), "leak" (I3). Never set in production.
FAULT = os.environ.get("RAAS_TEST_FAULT", "")  # pin_len of a row served densely: everything pinned, nothing ever evicted


@dataclass
class RowInfo:
    """Host-side facts of an admitted row (one per running request)."""

    rid: str
    raas: bool  # a budgeted policy (anything but dense)
    policy: str = "dense"
    trace: bool = False
    peak_kv_tokens: int = 0
    trace_steps: list = field(default_factory=list)  # [[decode_position, first, end], ...] per evicted page
    evicted_before: int = 0  # pages evicted before a retraction (the row's holes were released with it)
    evicted_at_release: int = 0


@dataclass
class Resident:
    """The KV slots one decode forward attends to, per row: pinned prompt + resident decode pages, ascending.

    `slots` [bs, n_max] int64 (padding = slot 0, never read past `n`), `n` [bs] int64. Every backend reads the
    same set: torch_native the padded table, triton and flashinfer the ragged lists from `ragged()`.
    """

    slots: torch.Tensor  # [bs, n_max] int64
    n: torch.Tensor  # [bs] int64
    col_slot: torch.Tensor  # [bs, n_max] int64: state slot of each position's decode page, L if pinned/padding
    pos: torch.Tensor | None = None  # [bs, n_max] int64 logical positions (padding = 0)
    rows: torch.Tensor | None = None  # [bs] int64 request-pool rows
    cand_end: torch.Tensor | None = None  # [bs] int64: Quest-selecting rows pick among pages below this; else 0

    def ragged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kv_indptr [bs + 1] int32, kv_indices [sum(n)] int64): row i reads kv_indices[indptr[i]:indptr[i+1]]."""
        cols = torch.arange(self.slots.shape[1], device=self.slots.device)  # [n_max]
        indices = self.slots[cols[None, :] < self.n[:, None]]  # [sum(n)], row-major = per-row ascending
        indptr = torch.zeros(len(self.n) + 1, dtype=torch.int32, device=self.n.device)
        indptr[1:] = torch.cumsum(self.n, dim=0)
        return indptr, indices


@dataclass
class Totals:
    evicted_pages: int = 0
    admitted_raas: int = 0
    admitted_dense: int = 0
    # timing of the decode path (bench.overhead reads the difference of two snapshots)
    decode_steps: int = 0
    step_seconds: float = 0.0  # wall time between consecutive decode steps' allocations
    raas_seconds: float = 0.0  # time spent inside RaaS code on the decode path (bookkeeping, scoring, tables)
    raas_parts: dict = field(default_factory=dict)  # the same, split by part ("schedule", "tables", "layers")
    last_step_start: float = 0.0
    kernel_layer_calls: int = 0  # layers decoded by the plugin's triton kernel (--raas-score exact on triton)


class Runtime:
    """RaaS state for one scheduler process. `None` config means the plugin is inactive (dense server)."""

    def __init__(self, config: RaasConfig):
        self.config = config
        self.state: RaasState | None = None
        self.bounds: PageKeyBounds | None = None
        self.rows: dict[int, RowInfo] = {}
        self.totals = Totals()
        # per decode forward: what the rows attend to (None: every row reads all its KV) and the score accumulator
        self.table: Resident | None = None
        self.scoring: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # rows, phys pages, valid
        self.acc: torch.Tensor | None = None  # [bs, L] float32 page scores folded over layers (sum or max)
        self.heads_reduce, self.layers_reduce = config.reduce.split("-")
        self.decode = ResidentDecode()  # the torch-native batched decode over `table` (reused buffers)
        self.layer_mass: torch.Tensor | None = None  # [bs, hq, n_max] the current layer's attention probabilities
        # triton with --raas-score exact: (rows, seq_lens, (a, b)) [bs] int64 when this decode forward runs the
        # plugin's kernel (`kernel_decode`) instead of upstream's over kv_indices, (a, b) being each row's prompt
        # window (`RaasState.prompt_window`); None otherwise
        self.kernel_batch: tuple | None = None
        self.kernel_ws = None  # the kernel's reused workspace (raas_sglang.kernels.sparse_decode.Workspace)
        self.current_layer = 0  # set around each layer's torch-native decode (Quest selection needs it)
        self.num_layers = 0
        self.start_layer = 0
        self.allocator = None  # SGLang's token allocator and tree cache (set on first decode), for the summary
        self.tree_cache = None
        self.metrics = None  # SGLang's SchedulerMetricsCollector, with our counter and gauge (--enable-metrics)

    # -- setup ---------------------------------------------------------------------------------------------------

    def ensure_state(self, req_to_token: torch.Tensor) -> RaasState:
        if self.state is None:
            self.state = RaasState(
                num_rows=req_to_token.shape[0],
                budget_pages=self.config.budget_pages,
                page_size=self.config.page_size,
                device=req_to_token.device,
                reserve=self.config.reserve,
            )
        return self.state

    def ensure_layers(self, token_to_kv_pool: Any) -> None:
        self.num_layers = token_to_kv_pool.layer_num
        self.start_layer = token_to_kv_pool.start_layer

    def ensure_bounds(self, token_to_kv_pool: Any) -> PageKeyBounds:
        """The Quest page key bounds (only the triton/flashinfer paths score with them)."""
        if self.bounds is None:
            k0 = token_to_kv_pool.get_key_buffer(token_to_kv_pool.start_layer)
            self.ensure_layers(token_to_kv_pool)
            self.bounds = PageKeyBounds(
                num_layers=self.num_layers,
                num_slots=k0.shape[0],
                page_size=self.config.page_size,
                kv_heads=k0.shape[1],
                head_dim=k0.shape[2],
                device=k0.device,
            )
        return self.bounds

    # -- request rows --------------------------------------------------------------------------------------------

    def admit(
        self, row: int, rid: str, pin_len: int, policy: str, budget_pages: int | None, trace: bool,
        carry: RowInfo | None = None,
    ) -> None:
        """Start tracking `row` for request `rid` under `policy` ("dense" or a budgeted policy). `carry` is the
        request's record from before a retraction."""
        state = self.state
        raas = policy != "dense"
        if policy in EVICTING:
            state.admit(row, pin_len, budget_pages, policy)
        elif raas:  # quest: holds everything (nothing evicted); the budget is how many pages it attends to
            state.admit(row, DENSE_PIN, budget_pages, policy)
        else:
            state.admit(row, DENSE_PIN, None)
        info = RowInfo(rid=rid, raas=raas, policy=policy, trace=trace)
        if carry is not None:
            info.peak_kv_tokens = carry.peak_kv_tokens
            info.trace_steps = carry.trace_steps
            info.evicted_before = carry.evicted_before + carry.evicted_at_release
        self.rows[row] = info
        if raas:
            self.totals.admitted_raas += 1
        else:
            self.totals.admitted_dense += 1

    def release(self, row: int) -> RowInfo | None:
        """Forget `row`; returns its record (with `evicted_at_release` set) for a retracted request to carry."""
        info = self.rows.pop(row, None) if self.state is not None else None
        if info is not None:
            info.evicted_at_release = int(self.state.evicted[row])
            self.state.release(row)
        return info

    def resident_pages(self) -> int:
        """Decode pages resident in RaaS rows right now."""
        return 0 if self.state is None else int(self.state.count.sum())

    def summary(self) -> dict:
        """The scheduler's `raas` entry in `/get_server_info` (JSON-safe). `free_tokens + evictable_tokens` equals
        the pool size when no request holds KV (no leak, I3)."""
        pool = {}
        if self.allocator is not None:
            pool = {
                "free_tokens": int(self.allocator.available_size()),
                "evictable_tokens": int(self.tree_cache.evictable_size()),
                "protected_tokens": int(self.tree_cache.protected_size()),
                "pool_tokens": int(self.allocator.size),
            }
        return {
            **pool,
            **self.config.to_dict(),
            "evicted_pages_total": self.totals.evicted_pages,
            "resident_pages": self.resident_pages(),
            "running_requests": len(self.rows),
            "running_raas_requests": sum(1 for i in self.rows.values() if i.raas),
            "admitted_raas_total": self.totals.admitted_raas,
            "admitted_dense_total": self.totals.admitted_dense,
            "decode_steps": self.totals.decode_steps,
            "step_seconds": self.totals.step_seconds,
            "raas_seconds": self.totals.raas_seconds,
            "raas_seconds_by_part": dict(self.totals.raas_parts),
            "exact_kernel_layer_calls": self.totals.kernel_layer_calls,
        }

    def report(self, row: int, info: RowInfo) -> dict:
        """The request's `meta_info["raas"]`: JSON-safe."""
        out = {
            "policy": info.policy,
            "budget_tokens": int(self.state.limit[row]) * self.config.page_size if info.raas else None,
            "evicted_pages": info.evicted_before + int(self.state.evicted[row]),
            "peak_kv_tokens": info.peak_kv_tokens,
        }
        if info.trace:
            out["trace"] = info.trace_steps
        return out

    def holes(self, row: int, upto_tokens: int) -> list[int]:
        """Evicted pages of an admitted RaaS row below `upto_tokens` (see `RaasState.holes`)."""
        info = self.rows.get(row)
        if info is None or not info.raas:
            return []
        return self.state.holes(row, upto_tokens)

    def note_peaks(self, rows: torch.Tensor, seq_lens: torch.Tensor, req_to_token: torch.Tensor, force=False) -> None:
        """Update each row's peak KV tokens, read from its actual slots: pages whose first row entry is a live
        slot (evicted pages point at the padding page 0), times the page size. Only rows that just opened a page
        can have a new peak, so only those are read unless `force`.

        rows [n] int64, seq_lens [n] int64 (tokens in KV after this step's allocation).
        """
        ps = self.config.page_size
        if not force:
            opened = (seq_lens - 1) % ps == 0
            rows, seq_lens = rows[opened], seq_lens[opened]
        if len(rows) == 0:
            return
        npages = -(-seq_lens // ps)  # [n]
        cols = torch.arange(int(npages.max()), device=rows.device) * ps  # [P]
        firsts = req_to_token[rows[:, None], cols[None, :]]  # [n, P]
        held = ((firsts != 0) & (cols[None, :] < seq_lens[:, None])).sum(dim=1) * ps  # [n]
        for row, tokens in zip(rows.tolist(), held.tolist()):
            info = self.rows.get(row)
            if info is not None and tokens > info.peak_kv_tokens:
                info.peak_kv_tokens = tokens

    # -- eviction ------------------------------------------------------------------------------------------------

    def evict(self, rows: torch.Tensor, positions: torch.Tensor, req_to_token: torch.Tensor, allocator: Any) -> int:
        """Evict before the step's allocation. rows/positions [n] int64. Returns pages evicted.

        NOTE: each victim's slots are freed exactly once (free_page_ids does not dedupe, so a double free would
        show under SGLANG_DEBUG_MEMORY_POOL) and its row entries are pointed at the padding page 0, which the
        allocator never hands out, so no check or reader can mistake them for live KV.
        """
        state = self.state
        victims = state.victims(rows, positions)
        hit = victims.page != EMPTY  # [n] bool
        if not bool(hit.any()):
            return 0
        ps = self.config.page_size
        v_rows, v_pages = rows[hit], victims.page[hit]  # [m]
        cols = v_pages[:, None] * ps + torch.arange(ps, device=rows.device)  # [m, ps] logical positions
        first_slots = req_to_token[v_rows, v_pages * ps].to(torch.int64)  # [m]
        if FAULT != "leak":
            allocator.free_page_ids(first_slots // ps)
        if FAULT == "double_free":
            allocator.free_page_ids(first_slots // ps)
        req_to_token[v_rows[:, None], cols] = 0
        state.evict(Victims(v_rows, v_pages))
        n = int(hit.sum())
        self.totals.evicted_pages += n
        if self.metrics is not None:
            self.metrics.raas_evicted_pages_total.labels(**self.metrics.labels).inc(n)
        self._trace(v_rows, v_pages, positions[hit])
        return n

    def _trace(self, rows: torch.Tensor, pages: torch.Tensor, positions: torch.Tensor) -> None:
        ps = self.config.page_size
        for row, page, pos in zip(rows.tolist(), pages.tolist(), positions.tolist()):
            info = self.rows.get(row)
            if info is not None and info.trace:
                info.trace_steps.append([pos, page * ps, page * ps + ps])

    # -- attention-side ------------------------------------------------------------------------------------------

    def prompt_window(self, rows: torch.Tensor, seq_lens: torch.Tensor):
        """(pin_end, (a, b)) [bs] int64: the end of each row's pinned region and the pinned positions it attends,
        [0, a) + [b, pin_end) (`RaasState.prompt_window`: its policy's choice)."""
        pin_end = torch.minimum(self.state.first_decode_page(rows) * self.config.page_size, seq_lens)
        return pin_end, self.state.prompt_window(rows, pin_end, seq_lens)

    def resident_positions(
        self, rows: torch.Tensor, seq_lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logical positions each row attends to, ascending, padded — and which state slot each one's page is in.

        rows [bs] int64, seq_lens [bs] int64 (tokens in KV, including this step's). Returns (pos [bs, n_max] int64,
        padding = 0; n [bs] int64; col_slot [bs, n_max] int64 = the index into `state.pages[row]` of the position's
        decode page, or L for pinned positions and padding). The attended pinned tokens (the whole prompt region
        [0, first_decode_page * ps) unless the row's policy narrows it: `RaasState.prompt_window`) come first,
        then the resident decode pages in ascending order; only the newest page can be partial (it holds the
        token written this step), so no sort of positions is needed, only of the L page indices.
        """
        state, ps, L = self.state, self.config.page_size, self.state.L
        pin_end, (a, b) = self.prompt_window(rows, seq_lens)
        n_pin = a + (pin_end - b)  # [bs]
        pages = state.pages[rows]  # [bs, L]
        valid = pages != EMPTY
        big = torch.iinfo(torch.int64).max
        sorted_pages, order = torch.where(valid, pages, torch.full_like(pages, big)).sort(dim=1)  # [bs, L]
        count = valid.sum(dim=1)  # [bs]
        newest = sorted_pages.gather(1, (count - 1).clamp(min=0)[:, None]).squeeze(1)  # [bs]
        dec_tokens = torch.where(count > 0, (count - 1) * ps + (seq_lens - newest * ps), torch.zeros_like(count))
        n = n_pin + dec_tokens  # [bs]
        cols = torch.arange(int(n.max()), device=rows.device)[None, :]  # [1, n_max]
        rel = (cols - n_pin[:, None]).clamp(min=0)  # [bs, n_max] offset into the decode part
        k = (rel // ps).clamp(max=L - 1)  # [bs, n_max] ordinal of the decode page
        in_dec = (cols >= n_pin[:, None]) & (cols < n[:, None])
        dec_pos = sorted_pages.gather(1, k).clamp(max=big // 2) * ps + rel % ps
        pin_pos = torch.where(cols < a[:, None], cols, b[:, None] + (cols - a[:, None]))
        pos = torch.where(in_dec, dec_pos, torch.where(cols < n_pin[:, None], pin_pos, torch.zeros_like(cols)))
        col_slot = torch.where(in_dec, order.gather(1, k), torch.full_like(k, L))
        return pos, n, col_slot

    def selection_ends(self, rows: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor | None:
        """[bs] int64: for rows whose policy selects pages per layer, the end of their candidate positions (all
        pages before the one being written, or the pinned prompt); 0 for other rows. None if no row selects."""
        policy = self.state.policy[rows]
        ps = self.config.page_size
        ends = torch.zeros_like(seq_lens)
        for name, pid in IDS.items():
            kind = REGISTRY[name].selects
            mine = policy == pid
            if kind is None or not bool(mine.any()):
                continue
            if kind == "all":
                end = (seq_lens - 1) // ps * ps
            else:
                end = torch.minimum(self.state.first_decode_page(rows) * ps, seq_lens)
            ends = torch.where(mine, end, ends)
        return ends if bool((ends > 0).any()) else None

    def select(self, layer_id: int, q: torch.Tensor, sm_scale: float) -> torch.Tensor | None:
        """keep [bs, n_max] bool: this layer's Quest selection for the selecting rows (the `limit` candidate pages
        with the highest bound, max over heads; everything else of theirs is kept), all True for other rows.
        q [bs, q_heads, d]. NOTE: a selecting row's candidate positions are table columns [0, cand_end), since
        its pinned part starts at position 0 and is contiguous."""
        table, ps = self.table, self.config.page_size
        if table is None or table.cand_end is None:
            return None
        P = int(-(-int(table.cand_end.max()) // ps))
        j = torch.arange(P, device=q.device)  # [P] candidate logical pages
        ok = j[None, :] * ps < table.cand_end[:, None]  # [bs, P]
        first = (j * ps).clamp(max=table.slots.shape[1] - 1)
        phys = torch.where(ok, table.slots[:, first] // ps, torch.zeros_like(ok, dtype=torch.int64))  # [bs, P]
        u = self.bounds.head_scores(layer_id, q, phys, sm_scale).amax(dim=1)  # [bs, P]
        u = torch.where(ok, u, torch.full_like(u, float("-inf")))
        order = u.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(P, device=q.device).expand_as(order).contiguous())
        chosen = ok & (rank < self.state.limit[table.rows][:, None])  # [bs, P]
        col_page = (table.pos // ps).clamp(max=max(P - 1, 0))  # [bs, n_max]
        candidate = table.pos < table.cand_end[:, None]
        return ~candidate | chosen.gather(1, col_page)

    def page_scores_begin(self, rows: torch.Tensor, req_to_token: torch.Tensor, quest: bool) -> None:
        """Prepare scoring of each row's resident decode pages for this forward: from exact attention mass
        (`add_mass`, torch_native) or from Quest bounds (`score_layer`, backends whose kernels give no mass)."""
        state, ps = self.state, self.config.page_size
        pages = state.pages[rows]  # [bs, L]
        valid = pages != EMPTY
        phys = None
        if quest:
            logical = torch.where(valid, pages, torch.zeros_like(pages))
            phys = req_to_token[rows[:, None], logical * ps].to(torch.int64) // ps  # [bs, L]
            phys = torch.where(valid, phys, torch.zeros_like(phys))
        self.scoring = (rows, phys, valid)
        self.acc = torch.zeros(pages.shape, dtype=torch.float32, device=pages.device)

    def add_mass(self, probs: torch.Tensor) -> None:
        """probs [bs, q_heads, n_max] float32: one layer's attention probabilities per resident position. Each
        decode page's mass per head (pinned positions and padding fall into a dropped column), reduced over
        heads, folded into `acc` over layers (`--raas-reduce`)."""
        L = self.state.L
        bs, heads, _ = probs.shape
        if self.heads_reduce == "mean":
            per_slot = torch.zeros((bs, L + 1), dtype=torch.float32, device=probs.device)
            per_slot.scatter_add_(1, self.table.col_slot, probs.mean(dim=1))
        else:
            per_head = torch.zeros((bs, heads, L + 1), dtype=torch.float32, device=probs.device)
            per_head.scatter_add_(2, self.table.col_slot[:, None, :].expand(bs, heads, -1), probs)
            per_slot = per_head.amax(dim=1)
        self._fold_layer(per_slot[:, :L])

    def kernel_decode(self, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor, o: torch.Tensor,
                      sm_scale: float, req_to_token: torch.Tensor) -> None:
        """One layer's decode attention over the resident pages, read straight from the state (no index list),
        into `o` [bs, q_heads, d]; the layer's exact page mass is folded into `acc` when this forward scores.
        q [bs, q_heads, d]; k_buf, v_buf [num_slots, kv_heads, d] (the layer's pool)."""
        from raas_sglang.kernels.sparse_decode import Workspace, default_splits, sparse_decode

        rows, seq_lens, window = self.kernel_batch
        state, (bs, heads, d) = self.state, q.shape
        self.totals.kernel_layer_calls += 1
        splits = default_splits(bs, k_buf.shape[1], q.device)
        if self.kernel_ws is None or not self.kernel_ws.fits(bs, heads, d, state.L, splits):
            self.kernel_ws = Workspace.make(bs, heads, d, state.L, splits, q.device)
        add = self.acc is not None and self.layers_reduce != "max"  # sum over layers: the kernel adds in place
        mass = self.acc if add else torch.zeros((bs, state.L), dtype=torch.float32, device=q.device)
        sparse_decode(q, k_buf, v_buf, req_to_token, rows, seq_lens, state.pin_len, state.pages, sm_scale,
                      self.config.page_size, out=o, mass=mass, accumulate=add, heads_reduce=self.heads_reduce,
                      workspace=self.kernel_ws, splits=splits, window=window)
        if self.acc is not None and not add:
            torch.maximum(self.acc, mass, out=self.acc)

    def _fold_layer(self, scores: torch.Tensor) -> None:
        if self.layers_reduce == "max":
            torch.maximum(self.acc, scores, out=self.acc)
        else:
            self.acc += scores

    def score_layer(self, layer_id: int, q: torch.Tensor, sm_scale: float) -> None:
        """q [bs, q_heads, d] for this layer; adds the layer's page shares to `acc`."""
        rows, phys, valid = self.scoring
        u = self.bounds.head_scores(layer_id, q, phys, sm_scale)
        self._fold_layer(page_shares(u, valid, self.heads_reduce))

    def page_scores_end(self) -> None:
        """After the last layer: refresh stamps and advance the rows' steps."""
        rows, _, _ = self.scoring
        threshold = self.config.refresh_threshold or None
        self.state.observe(rows, self.acc, self.config.refresh_ratio, threshold)
        self.scoring = None
        self.acc = None


class timed:
    """Adds the wall time of a `with` block to `rt.totals.raas_seconds` and to its `part` (perf_counter: ~0.1 us
    per use)."""

    __slots__ = ("rt", "part", "t0")

    def __init__(self, rt: Runtime, part: str):
        self.rt, self.part = rt, part

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        totals = self.rt.totals
        totals.raas_seconds += dt
        totals.raas_parts[self.part] = totals.raas_parts.get(self.part, 0.0) + dt


_RUNTIME: Runtime | None = None
_LOADED = False


def get() -> Runtime | None:
    """The process's runtime, or None when this server runs the dense policy (then every hook passes through)."""
    global _RUNTIME, _LOADED
    if not _LOADED:
        from sglang.srt.runtime_context import get_server_args

        from raas_sglang.patches.server_args import config_of

        config = config_of(get_server_args())
        _RUNTIME = Runtime(config) if config.enabled else None
        _LOADED = True
    return _RUNTIME
