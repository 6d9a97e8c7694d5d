"""Per-scheduler-process RaaS runtime: the one object the seam modules share.

The scheduler, the model runner and the attention backend of one rank live in one process (the scheduler
process), so scheduler-side hooks (eviction, release) and attention-side hooks (resident tables, scoring) meet
here. Under tensor parallel each rank has its own runtime; `ranks` combines their page scores
(`patches/tensor_parallel.py`). Built lazily on first use from the published server args (`sglang.srt.runtime_context.get_server_args`).
It holds the row lifecycle (admit / release / report) and the totals the server reports (the allocator frees of
evicted pages are in `patches/eviction.py`); the tensor logic of a decode step is in the core (`raas_sglang.core`, `raas_sglang.step`).

Hooks upstream: none (this module holds state only).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from raas_sglang.config import RaasConfig
from raas_sglang.core import RaasState
from raas_sglang.host import HostBatch, to_device
from raas_sglang.policies import DENSE, PolicySet
from raas_sglang.resident_attention import ResidentDecode
from raas_sglang.scoring import PageKeyBounds
from raas_sglang.step import DecodeStep, held_tokens
from raas_sglang.patches.rows import Reprefill, RowInfo, Totals  # noqa: F401  (runtime.RowInfo, ...)
from raas_sglang.patches.tensor_parallel import Ranks

DENSE_PIN = 1 << 40  # pin_len of a row that never evicts (dense, quest): everything pinned


class Runtime:
    """RaaS state for one scheduler process (only built for a server whose `--kv-policy` is not dense)."""

    def __init__(self, config: RaasConfig):
        self.config = config
        self.policies = PolicySet.from_config(config)
        self.state: RaasState | None = None
        self.bounds: PageKeyBounds | None = None
        self.rows: dict[int, RowInfo] = {}
        self.totals = Totals()
        self.forward: DecodeStep | None = None  # the current decode forward (None: every hook passes through)
        self.decode = ResidentDecode()  # the torch-native batched decode over `forward.table` (reused buffers)
        self.kernel_ws = None  # the triton kernel's reused workspace (raas_sglang.kernels.sparse_decode.Workspace)
        self.num_layers = 0
        self.start_layer = 0
        self._layer_of: dict[int, int] = {}  # data_ptr of a layer's key buffer -> layer index (0-based)
        self.allocator = None  # SGLang's token allocator and tree cache (set on first decode), for the summary
        self.tree_cache = None
        self.metrics = None  # SGLang's SchedulerMetricsCollector, with our counter and gauge (--enable-metrics)
        self._ranks: Ranks | None = None
        self.pool_plan = None  # patches/pool_sizing.PoolPlan when the pool was shrunk to hold the key bounds
        self.reprefilling: dict[int, Reprefill] = {}  # row -> its re-prefill in progress (patches/reprefill.py)
        self.traced = 0  # admitted rows with `raas_trace` on
        self.reprefill_ok: bool | None = None  # whether the prefill backend can skip holes (reprefill.supported)
        self.req_to_token: torch.Tensor | None = None  # SGLang's [rows, context] request-to-slot map
        self.peak: torch.Tensor | None = None  # [rows] int64 each row's peak KV tokens (device; read at finish)
        self.step_host: HostBatch | None = None  # the decode batch just allocated, on the host (for its forward)
        self.warned_readback = False  # a decode forward's batch was read back from the device (logged once)

    @property
    def ranks(self) -> Ranks:
        """This process's TP group (looked up on first use: SGLang builds it after the plugin loads)."""
        if self._ranks is None:
            self._ranks = Ranks.of_process(self.config.tp_size)
        return self._ranks

    # -- setup ---------------------------------------------------------------------------------------------------

    def ensure_state(self, req_to_token: torch.Tensor) -> RaasState:
        self.req_to_token = req_to_token
        if self.state is None:
            self.state = RaasState(num_rows=req_to_token.shape[0], budget_pages=self.config.budget_pages,
                                   page_size=self.config.page_size, device=req_to_token.device,
                                   policies=self.policies)
            self.peak = torch.zeros(req_to_token.shape[0], dtype=torch.int64, device=req_to_token.device)
        return self.state

    def ensure_layers(self, pool: Any) -> None:
        """Learn the KV pool's layers (once): count, first id, and which key buffer is which layer."""
        if not self._layer_of:
            self.num_layers, self.start_layer = pool.layer_num, pool.start_layer
            for i in range(self.num_layers):
                self._layer_of[pool.get_key_buffer(self.start_layer + i).data_ptr()] = i

    def layer_of(self, k_buffer: torch.Tensor) -> int:
        """The 0-based layer index of one layer's key buffer (what an attention kernel is handed)."""
        return self._layer_of[k_buffer.data_ptr()]

    def ensure_bounds(self, pool: Any) -> PageKeyBounds:
        """The Quest page key bounds (kept when a policy selects by them or pages are scored with them)."""
        if self.bounds is None:
            full = getattr(pool, "full_kv_pool", pool)  # NOTE: a hybrid SWA pool's layer 0 may be a window layer
            k0 = full.get_key_buffer(full.start_layer)  # [full slots + ps, kv_heads, head_dim]
            self.ensure_layers(pool)
            self.bounds = PageKeyBounds(num_layers=self.num_layers, num_slots=k0.shape[0],
                                        page_size=self.config.page_size, kv_heads=k0.shape[1],
                                        head_dim=k0.shape[2], device=k0.device)
        return self.bounds

    # -- request rows --------------------------------------------------------------------------------------------

    def admit(self, row: int, rid: str, pin_len: int, policy: str, budget_pages: int | None, trace: bool,
              carry: RowInfo | None = None, kv: Any = None) -> None:
        """Start tracking `row` for request `rid` under `policy` ("dense" or a budgeted policy). `carry` is the
        request's record from before a retraction."""
        raas = policy != DENSE
        if not raas:
            self.state.admit(row, DENSE_PIN, None, DENSE)
        elif self.policies[policy].evicts:
            self.state.admit(row, pin_len, budget_pages, policy)
        else:  # holds everything (nothing evicted); the budget is how many pages it attends to
            self.state.admit(row, DENSE_PIN, budget_pages, policy)
        info = RowInfo(rid=rid, raas=raas, policy=policy, trace=trace, kv=kv)
        self.peak[row] = carry.peak_kv_tokens if carry is not None else 0
        if carry is not None:
            info.peak_kv_tokens = carry.peak_kv_tokens
            info.trace_steps = carry.trace_steps
            info.kv_free = carry.kv_free
            info.reprefills = carry.reprefills
            info.bounded_reprefills = carry.bounded_reprefills
            # NOTE: evicted pages are counted by the row's state alone: a restored snapshot brings its count back,
            # and a full re-prefill recomputes the pages evicted before and evicts them again on adoption (counting
            # the carry as well would count them twice)
        old = self.rows.get(row)
        self.traced += trace - (old.trace if old is not None else 0)
        self.rows[row] = info
        if raas:
            self.totals.admitted_raas += 1
        else:
            self.totals.admitted_dense += 1

    def release(self, row: int, keep: bool = False, always: bool = False) -> RowInfo | None:
        """Forget `row`; returns its record (with `evicted_at_release` set) for a retracted request to carry.
        `keep` (a retraction): a row with holes keeps a snapshot of its state, to resume from; with `always` (a
        PD decode server, which resumes from a host copy of the KV) any RaaS row keeps one."""
        info = self.rows.pop(row, None) if self.state is not None else None
        self.reprefilling.pop(row, None)
        if info is not None:
            self.traced -= info.trace
            info.evicted_at_release = int(self.state.host.evicted[row])
            if keep:  # a retracted request carries its peak (a finished one reported it already)
                info.peak_kv_tokens = self.peak_of(row)
            if keep and (info.evicted_at_release > 0 or (always and info.raas)):
                info.snapshot = self.state.snapshot(row)
            self.state.release(row)
        return info

    def resident_pages(self) -> int:  # decode pages resident in RaaS rows right now
        return 0 if self.state is None else int(self.state.host.count.sum())

    def row_of(self, req: Any) -> RowInfo | None:
        """The admitted row of the scheduler `Req` `req`, or None (the one notion of "this row is this request's";
        see `row_of_kv`)."""
        return self.row_of_kv(req.kv)

    def row_of_kv(self, kv: Any) -> RowInfo | None:
        """The admitted row whose request owns SGLang's `kv` (a `ReqKvInfo`), or None. NOTE: a row is reused by
        the next request once released; matching the object, not just the row index, keeps one request's holes
        from being applied to another's KV."""
        info = self.rows.get(kv.req_pool_idx) if self.state is not None and kv.req_pool_idx is not None else None
        return info if info is not None and info.kv is kv else None

    def holes(self, row: int, upto_tokens: int) -> list[int]:
        """Evicted pages of an admitted RaaS row below `upto_tokens` (see `RaasState.holes`)."""
        info = self.rows.get(row)
        if info is None or not info.raas:
            return []
        return self.state.holes(row, upto_tokens)

    def note_peaks(self, rows: torch.Tensor, seq_lens: torch.Tensor, req_to_token: torch.Tensor,
                   seq_host: np.ndarray, force: bool = False) -> None:
        """Update each row's peak KV tokens (`step.held_tokens`, kept on the device: no sync). Only rows that just
        opened a page can have a new peak, so only those are read unless `force`. rows [n] int64, seq_lens [n]
        int64 (after this step's allocation); seq_host: seq_lens on the host."""
        if not force:
            opened = (seq_host - 1) % self.config.page_size == 0  # [n] bool
            if not opened.any():
                return
            idx = to_device(np.flatnonzero(opened), rows.device)
            rows, seq_lens, seq_host = rows[idx], seq_lens[idx], seq_host[opened]
        if len(seq_host) == 0:
            return
        held = held_tokens(rows, seq_lens, req_to_token, self.config.page_size, int(seq_host.max()))  # [m]
        self.peak[rows] = torch.maximum(self.peak[rows], held)

    def peak_of(self, row: int) -> int:
        """The row's peak KV tokens so far (a sync: at finish and release only)."""
        return int(self.peak[row])

    # -- the end of a decode forward -----------------------------------------------------------------------------

    def layer_done(self, fwd: DecodeStep, layer: int) -> None:
        """After a layer's scores were added: after the last layer, refresh the rows' per-page state (each row's
        policy, `RaasState.observe`) and advance their steps."""
        if fwd.scores is not None and layer == fwd.last_layer:
            scores = fwd.scores.finish(self.ranks.combine)  # tp > 1: one collective here
            self.state.observe(fwd.rows, scores, fwd.host.rows)
            fwd.scores = None


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
