"""The records the runtime (`patches/runtime.py`) keeps: one per admitted row, one per re-prefill in flight, and
the server's totals. Hooks upstream: none (data only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raas_sglang.core import RowSnapshot
from raas_sglang.policies import DENSE


@dataclass
class RowInfo:
    """Host-side facts of an admitted row (one per running request)."""

    rid: str
    raas: bool  # a budgeted policy (anything but dense)
    policy: str = DENSE
    trace: bool = False
    peak_kv_tokens: int = 0
    trace_steps: list = field(default_factory=list)  # [[decode_position, first, end], ...] per evicted page
    evicted_at_release: int = 0  # set by `release`: the row's evicted pages then
    kv: Any = None  # the request's SGLang `ReqKvInfo` at admission: row lookups from the KV side must match it
    snapshot: RowSnapshot | None = None  # set by `release` on a retraction that left holes: resumed by re-prefill
    reprefills: list = field(default_factory=list)  # [[seq_len, trace entries before it], ...] per resumption
    bounded_reprefills: int = 0  # of those, resumptions that recomputed only the pinned prompt and the kept pages
    kv_free: list = field(default_factory=list)  # traced: SGLang's allocator free count after each decode allocation


@dataclass
class Reprefill:
    """A retracted request being recomputed after its holes were restored (`patches/reprefill.py`): the token
    ranges still to compute, in order; each extend chunk covers (part of) the first one."""

    rid: str
    kv: Any  # the request's `ReqKvInfo`: the row is this request's while it matches (as `Runtime.row_of_kv`)
    runs: list[tuple[int, int]]
    n_tokens: int


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
    free_low_water: int | None = None  # allocator's lowest free tokens after a decode allocation since a flush
