"""Test-only fault injection: lets tests prove that SGLang's checks catch a broken invariant
(tests/test_invariant_checks.py). Never set in production.

`RAAS_TEST_FAULT=<name>[,<name>...]` in a server's environment makes `install()` (called by `register()` in each
process) replace one plugin function per fault with a broken one; the production code paths carry no fault
branches. The faults act in the scheduler process, except `skip_tokenizer_check` (the launcher's tokenizer side).
- `double_free` (I1): every evicted page is handed to the allocator twice;
- `leak` (I3): evicted pages are never handed back;
- `tree_adopts_hole` (I2): radix inserts are not capped at the first evicted page;
- `rank_diverges` (tensor parallel): on TP rank 1 only, each decode step's refresh also moves the stamps of the
  rows whose request id starts with `DIVERGE_RID`, so that rank's state departs from the others' (the
  `RAAS_CHECK_RANKS` check must stop the server); other requests are untouched;
- `lost_page` (item 5 of the guarantees): for requests whose id starts with `LOST_RID`, the page about to be
  evicted is handed back to the allocator, and its row entries pointed at page 0, just before the eviction, as a
  stray free elsewhere would; the eviction must then neither free page 0 nor free the page twice, and abort only
  that request;
- `full_reprefill`: the prefill backend is taken as one that cannot skip holes (as flashinfer), so a retracted
  request with evictions is re-prefilled in full and trimmed back to its limit on adoption (the GPU-only path,
  run on CPU);
- `skip_tokenizer_check` (#22 item 4): requests whose `custom_params` hold `SKIP_KEY: true` skip the tokenizer-side
  validation, as through a front end that never runs it; the scheduler's own check must abort a bad one.

Hooks upstream: none (it patches the plugin's own functions).
"""

from __future__ import annotations

import logging
import os

ENV = "RAAS_TEST_FAULT"
FAULTS = ("double_free", "leak", "tree_adopts_hole", "rank_diverges", "lost_page", "skip_tokenizer_check",
          "full_reprefill")
TOKENIZER_FAULTS = ("skip_tokenizer_check",)
SKIP_KEY = "raas_test_skip_tokenizer_check"
DIVERGE_RID = "raas-test-diverge"
LOST_RID = "raas-test-lost"
logger = logging.getLogger("raas_sglang")


def install(tokenizer_side: bool = False) -> list[str]:
    """Apply the faults named by `RAAS_TEST_FAULT` (if any) that act in this process (the scheduler's, or with
    `tokenizer_side` the launcher's); returns their names."""
    faults = [f for f in os.environ.get(ENV, "").split(",") if f]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        raise ValueError(f"{ENV}: must be one of {', '.join(FAULTS)}, got {unknown[0]!r}")
    mine = [f for f in faults if (f in TOKENIZER_FAULTS) == tokenizer_side]
    for fault in mine:
        logger.warning("raas_sglang: test fault %r injected (%s)", fault, ENV)
        _apply(fault)
    return mine


def _apply(fault: str) -> None:
    from raas_sglang.patches import api, eviction, radix

    free_pages = eviction.free_pages
    if fault == "leak":
        eviction.free_pages = lambda allocator, page_ids, **kw: None
    elif fault == "double_free":

        def twice(allocator, page_ids, **kw):
            free_pages(allocator, page_ids, **kw)
            free_pages(allocator, page_ids, **kw)

        eviction.free_pages = twice
    elif fault == "rank_diverges":
        _diverge_on_rank_one()
    elif fault == "lost_page":
        _lose_page_before_eviction()
    elif fault == "full_reprefill":
        from raas_sglang.patches import reprefill

        reprefill.supported = lambda rt: False
    elif fault == "skip_tokenizer_check":
        check = api.tokenizer_check
        api.tokenizer_check = lambda sp, config: None if (sp.custom_params or {}).get(SKIP_KEY) else check(sp, config)
    else:
        radix.tree_cap = lambda rt, req, up_to: up_to


def _diverge_on_rank_one() -> None:
    from raas_sglang.core import RaasState
    from raas_sglang.patches import runtime

    observe = RaasState.observe

    def diverging(self, rows, scores, host_rows=None):
        observe(self, rows, scores, host_rows)
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

    def lose_then_evict(rt, rows, positions, req_to_token, allocator, host=None):
        ps = rt.config.page_size
        victims = rt.state.victims(rows, positions, host)  # pure: the real eviction below picks the same pages
        for row, page in zip(rows.tolist(), victims.page.tolist()):
            info = rt.rows.get(row)
            if page == EMPTY or info is None or not info.rid.startswith(LOST_RID) or info.rid in done:
                continue
            done.add(info.rid)
            first = int(req_to_token[row, page * ps])
            eviction.free_pages(allocator, torch.tensor([first // ps], dtype=torch.int64, device=req_to_token.device))
            req_to_token[row, page * ps:page * ps + ps] = 0
        return evict(rt, rows, positions, req_to_token, allocator, host)

    eviction.evict = lose_then_evict
