"""Test instrument, loaded into a server's processes through `RAAS_POLICY_MODULES` (it registers no policy): counts
the device-to-host syncs RaaS code makes per decode step, with torch's own `TorchFunctionMode`.

What counts as a sync (each one stalls a GPU's launch queue; on this CPU machine they cost nothing, so they are
counted instead of timed): `item`, `tolist`, `__bool__`, `__int__`, `__index__`, `__float__`, `__format__`,
`__repr__`, `cpu`, `nonzero`, `unique`, `bincount`, `masked_select`, a boolean-mask index (read or write), a
one-argument `torch.where`, `torch.arange` given a tensor bound, and a tensor built from Python data on a device
(`torch.tensor(..., device=...)`: a pageable host-to-device copy that waits for the stream). A call counts when the
frame that made it is RaaS code (the `raas_sglang` package, its `patches` and `kernels`; not `raas_sglang.dev`).
NOTE: on this machine every tensor lives on the CPU, so host data RaaS keeps on purpose must not be a torch tensor
(numpy or Python), or it counts.

Steps: a decode step runs from one `ScheduleBatch.prepare_for_decode` to the next (its forward, the output
processing and the next prefill admission included). A step is `admit` if its batch has a request the previous
decode batch did not, else `finish` if a request of the previous batch left it (its release ran in the previous
step), else `open` if a request's next token starts a page, else `plain`; `finish` and `admit` steps also count
the requests that left or came (`requests`). The scheduler process
writes a summary to `$RAAS_SYNC_COUNT_OUT.<pid>.json` after every step: per kind, the steps seen, the most syncs in one
step, and the sites (file:line function) of that worst step; `RAAS_SYNC_COUNT_PAGE` is the server's page size.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

OUT = os.environ.get("RAAS_SYNC_COUNT_OUT")
PAGE = int(os.environ.get("RAAS_SYNC_COUNT_PAGE", "16"))

T = torch.Tensor
ALWAYS = {T.item, T.tolist, T.__bool__, T.__int__, T.__index__, T.__float__, T.__format__, T.__repr__, T.cpu,
          T.nonzero, torch.nonzero, T.unique, torch.unique, T.bincount, torch.bincount, T.masked_select,
          torch.masked_select, torch.argwhere, T.argwhere}


def _roots() -> tuple[str, ...]:
    import raas_sglang
    import raas_sglang.kernels
    import raas_sglang.patches

    roots = [os.path.dirname(m.__file__) + os.sep for m in (raas_sglang, raas_sglang.patches, raas_sglang.kernels)]
    return tuple(roots)


def _is_bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _is_sync(func, args, kwargs) -> bool:
    if func in ALWAYS:
        return True
    if func in (T.__getitem__, T.__setitem__):
        return len(args) > 1 and _is_bool_index(args[1])
    if func is torch.where:
        return len(args) + len(kwargs) == 1
    if func is torch.arange:
        return any(isinstance(a, torch.Tensor) for a in args)
    if func in (torch.tensor, torch.as_tensor):
        return kwargs.get("device") is not None and not isinstance(args[0] if args else None, torch.Tensor)
    return False


class SyncCounter(TorchFunctionMode):
    def __init__(self, roots: tuple[str, ...]):
        super().__init__()
        self.roots = roots
        self.dev = os.path.dirname(roots[0].rstrip(os.sep)) + os.sep + "raas_sglang" + os.sep + "dev" + os.sep
        self.sites: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            site = self._raas_caller()
            if site is not None:
                self.sites[f"{site} {getattr(func, '__name__', func)}"] += 1
        return func(*args, **kwargs)

    def _raas_caller(self) -> str | None:
        frame = sys._getframe(2)
        while frame is not None and (frame.f_code.co_filename == __file__
                                     or f"{os.sep}torch{os.sep}" in frame.f_code.co_filename):
            frame = frame.f_back
        if frame is None:
            return None
        name = frame.f_code.co_filename
        if not name.startswith(self.roots) or name.startswith(self.dev):
            return None
        return f"{os.path.basename(name)}:{frame.f_lineno} {frame.f_code.co_name}"


class Steps:
    """Per-kind summary of the decode steps seen so far (written to OUT after each step)."""

    def __init__(self):
        self.mode: SyncCounter | None = None
        self.kind: str | None = None
        self.requests = 0
        self.prev_reqs: list = []
        self.summary: dict[str, dict] = {}

    def boundary(self, batch) -> None:
        reqs = list(batch.reqs)  # NOTE: the objects, not their ids (a freed request's id is reused)
        if self.mode is None:
            self.mode = SyncCounter(_roots())
            self.mode.__enter__()  # NOTE: stays pushed for the life of this (scheduler) thread
        elif self.kind is not None:
            left = sum(1 for r in self.prev_reqs if not any(r is q for q in reqs))
            if left and self.kind != "admit":
                self.kind, self.requests = "finish", left
            self._close()
        positions = batch.seq_lens_cpu.numpy()
        came = sum(1 for r in reqs if not any(r is q for q in self.prev_reqs))
        self.kind = ("admit" if came else "open" if (positions % PAGE == 0).any() else "plain")
        self.requests = came
        self.prev_reqs = reqs
        self.mode.sites.clear()

    def _close(self) -> None:
        n = sum(self.mode.sites.values())
        entry = self.summary.setdefault(self.kind, {"steps": 0, "max_syncs": 0, "worst_sites": {}})
        entry["steps"] += 1
        entry["max_syncs_per_request"] = max(entry.get("max_syncs_per_request", 0), n / max(self.requests, 1))
        if n > entry["max_syncs"] or entry["steps"] == 1:
            entry["max_syncs"], entry["worst_sites"] = n, dict(self.mode.sites)
        if OUT:  # one file per scheduler process (a rank under tensor parallel)
            path = Path(f"{OUT}.{os.getpid()}.json")
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.summary, indent=1, sort_keys=True))
            tmp.replace(path)


STEPS = Steps()


def _install() -> None:
    from sglang.srt.managers.schedule_batch import ScheduleBatch

    prepare = ScheduleBatch.prepare_for_decode
    if getattr(prepare, "_sync_counter", False):
        return

    def prepare_for_decode(self, *args, **kwargs):
        STEPS.boundary(self)
        return prepare(self, *args, **kwargs)

    prepare_for_decode._sync_counter = True
    ScheduleBatch.prepare_for_decode = prepare_for_decode


if OUT:
    _install()
