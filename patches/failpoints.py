"""Test-only fault injection: lets tests prove that SGLang's checks catch a broken invariant
(tests/test_invariant_checks.py). Never set in production.

`RAAS_TEST_FAULT=<name>` in a server's environment makes `install()` (called by `register()` in the scheduler
process) replace one plugin function with a broken one; the production code paths carry no fault branches.
- `double_free` (I1): every evicted page is handed to the allocator twice;
- `leak` (I3): evicted pages are never handed back;
- `tree_adopts_hole` (I2): radix inserts are not capped at the first evicted page;
- `rank_diverges` (tensor parallel): on TP rank 1 only, each decode step's refresh also moves the stamps of the
  rows whose request id starts with `DIVERGE_RID`, so that rank's state departs from the others' (the
  `RAAS_CHECK_RANKS` check must stop the server); other requests are untouched.

Hooks upstream: none (it patches the plugin's own functions).
"""

from __future__ import annotations

import logging
import os

ENV = "RAAS_TEST_FAULT"
FAULTS = ("double_free", "leak", "tree_adopts_hole", "rank_diverges")
DIVERGE_RID = "raas-test-diverge"
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
