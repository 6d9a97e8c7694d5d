"""Host mirrors of the per-row facts that change only at admit, evict and page-open time (numpy, no torch on the
read path), so that a decode step decides what to do without a device-to-host sync.

On a GPU every `.item()`, `bool(tensor)`, `.tolist()` or boolean-mask index stalls the launch queue until the
device catches up. The decode step reads, per row: whether it holds decode pages (`count`), whether it has holes
(`evicted`), where its pinned prompt ends (`pin_len`), its page limit (`limit`) and its policy (`policy`); each
changes only when the scheduler admits, evicts or opens a page, where the host already knows what it did. The
device tensors of `RaasState` stay the truth the kernels read; `HostMirror` is kept equal to them by the same
methods that write them (`tests/test_host_mirror.py`, and every test server with `RAAS_CHECK_MIRRORS=1`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class HostBatch(NamedTuple):
    """A decode batch as the host knows it (from the scheduler's `Req`s and SGLang's CPU copies)."""

    rows: np.ndarray  # [n] int64 request-pool rows, in batch order
    positions: np.ndarray  # [n] int64 logical position of each row's token this step (= tokens in KV before it)


class HostMirror:
    """numpy copies of `RaasState.count`, `pin_len`, `evicted`, `limit` and `policy`, each [rows] int64."""

    def __init__(self, num_rows: int, budget_pages: int, page_size: int):
        self.page_size = page_size
        self.L = budget_pages
        self.count = np.zeros(num_rows, dtype=np.int64)
        self.pin_len = np.zeros(num_rows, dtype=np.int64)
        self.evicted = np.zeros(num_rows, dtype=np.int64)
        self.limit = np.full(num_rows, budget_pages, dtype=np.int64)
        self.policy = np.zeros(num_rows, dtype=np.int64)

    def reset(self, row: int) -> None:
        self.count[row] = self.pin_len[row] = self.evicted[row] = self.policy[row] = 0
        self.limit[row] = self.L

    def first_decode_page(self, rows: np.ndarray) -> np.ndarray:
        """[n] int64: ceil(pin_len / page_size)."""
        return -(-self.pin_len[rows] // self.page_size)

    def opens_page(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """[n] bool: the token at `positions` starts a new decode page (page >= the first decode page)."""
        ps = self.page_size
        return (positions % ps == 0) & (positions // ps >= self.first_decode_page(rows))

    def must_evict(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """[n] bool: the row opens a page while holding its limit of pages, so it evicts one first."""
        return self.opens_page(rows, positions) & (self.count[rows] >= self.limit[rows])


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device` without a stream sync (pinned memory, non-blocking copy; as is on the CPU)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def host_batch(rows: torch.Tensor, positions: torch.Tensor) -> HostBatch:
    """A `HostBatch` read back from tensors (a sync: for callers off the decode path, and for unit tests)."""
    return HostBatch(rows.cpu().numpy().astype(np.int64), positions.cpu().numpy().astype(np.int64))


def check_mirror(state, rows: torch.Tensor, host_rows: np.ndarray) -> None:
    """Debug check (syncs; `RAAS_CHECK_MIRRORS=1`, set for every test server): the host mirror of `rows` equals the
    device state of a `RaasState`, field by field, and `rows` are `host_rows`."""
    if rows.tolist() != host_rows.tolist():
        raise RuntimeError(f"RaaS host mirror: batch rows {host_rows.tolist()}, device rows {rows.tolist()}")
    for name in ("count", "pin_len", "evicted", "limit", "policy"):
        device, mirror = getattr(state, name)[rows].tolist(), getattr(state.host, name)[host_rows].tolist()
        if device != mirror:
            raise RuntimeError(f"RaaS host mirror: {name} of rows {host_rows.tolist()} is {mirror} on the host, "
                               f"{device} on the device")
