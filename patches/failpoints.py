"""Test-only fault injection: lets tests prove that SGLang's checks catch a broken invariant
(tests/test_invariant_checks.py). Never set in production.

`RAAS_TEST_FAULT=<name>` in a server's environment makes `install()` (called by `register()` in the scheduler
process) replace one plugin function with a broken one; the production code paths carry no fault branches.
- `double_free` (I1): every evicted page is handed to the allocator twice;
- `leak` (I3): evicted pages are never handed back;
- `tree_adopts_hole` (I2): radix inserts are not capped at the first evicted page;
- `rank_diverges` (tensor parallel): on TP rank 1 only, each decode step's refresh also moves the stamps of the
  rows whose request id starts with `DIVERGE_RID`, so that rank's state departs from the others' (the
  `RAAS_CHECK_RANKS` check must stop the server); other requests are untouched;
- `lost_page` (item 5 of the guarantees): for requests whose id starts with `LOST_RID`, the page about to be
  evicted is handed back to the allocator, and its row entries pointed at page 0, just before the eviction, as a
  stray free elsewhere would; the eviction must then neither free page 0 nor free the page twice, and abort only
  that request.

Hooks upstream: none (it patches the plugin's own functions).
"""

from __future__ import annotations

import logging
import os

ENV = "RAAS_TEST_FAULT"
FAULTS = ("double_free", "leak", "tree_adopts_hole", "rank_diverges", "lost_page")
DIVERGE_RID = "raas-test-diverge"
LOST_RID = "raas-test-lost"
logger = logging.getLogger("raas_sglang")


def install() -> str | None:
    """Apply the fault named by `RAAS_TEST_FAULT` (if any) in this process; returns its name."""
    fault = os.environ.get(ENV, "")
    if not fault:
        return None
    if fault not in FAULTS:
        raise ValueError(f"{ENV}: must be one of {', '.join(FAULTS)}, got {fault!r}")
    from raas_sglang.patches import eviction, radix

    logger.warning("raas_sglang: test fault %r injected (%s)", fault, ENV)
    free_pages = eviction.free_pages
    if fault == "leak":
        eviction.free_pages = lambda allocator, page_ids: None
    elif fault == "double_free":

        def twice(allocator, page_ids):
            free_pages(allocator, page_ids)
            free_pages(allocator, page_ids)

        eviction.free_pages = twice
    elif fault == "rank_diverges":
        _diverge_on_rank_one()
    elif fault == "lost_page":
        _lose_page_before_eviction()
    else:
        radix.tree_cap = lambda rt, req, up_to: up_to
    return fault


def _diverge_on_rank_one() -> None:
    from raas_sglang.core import RaasState
    from raas_sglang.patches import runtime

    observe = RaasState.observe

    def diverging(self, rows, scores):
        observe(self, rows, scores)
        rt = runtime.get()
        if rt.ranks.rank != 1:
            return
        marked = [r for r in rows.tolist() if (info := rt.rows.get(r)) is not None and info.rid.startswith(DIVERGE_RID)]
        if marked:
            self.stamp[marked] += 1

    RaasState.observe = diverging


def _lose_page_before_eviction() -> None:
    import torch

    from raas_sglang.core import EMPTY
    from raas_sglang.patches import eviction

    evict, done = eviction.evict, set()

    def lose_then_evict(rt, rows, positions, req_to_token, allocator):
        ps = rt.config.page_size
        victims = rt.state.victims(rows, positions)  # pure: the real eviction below picks the same pages
        for row, page in zip(rows.tolist(), victims.page.tolist()):
            info = rt.rows.get(row)
            if page == EMPTY or info is None or not info.rid.startswith(LOST_RID) or info.rid in done:
                continue
            done.add(info.rid)
            first = int(req_to_token[row, page * ps])
            allocator.free_page_ids(torch.tensor([first // ps], dtype=torch.int64, device=req_to_token.device))
            req_to_token[row, page * ps:page * ps + ps] = 0
        return evict(rt, rows, positions, req_to_token, allocator)

    eviction.evict = lose_then_evict
