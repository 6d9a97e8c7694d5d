"""The checks behind I1-I3 really fire: a server with a fault injected on purpose (RAAS_TEST_FAULT, test-only)
breaks one invariant, and SGLang's strict KV checks report it.

- I1 double free: the evicted page is freed twice -> the allocator's duplicate-page check fails.
- I2 the tree adopts evicted slots: the insert cap is skipped -> the pool accounting no longer balances.
- I3 leak: the evicted page is never freed -> the pool accounting reports a leak.
"""

from __future__ import annotations

import re
import time
import urllib.error

import pytest

from conftest import STRICT_ENV, serve_all
from raas_helpers import gen

PROMPT = [1] + list(range(30, 70))

# what SGLang's strict checks print when they fire (busy check, idle check, allocator debug check)
LEAK = r"(?i)leak detected"
FAULTS = {
    "double_free": r"_debug_check_no_duplicate_pages",
    "tree_adopts_hole": LEAK,
    "leak": LEAK,
}


@pytest.fixture(scope="module")
def faulty(model_dir, tmp_path_factory):
    """One server per fault, started side by side (each start is ~25 s of imports)."""
    args = ("--kv-policy", "raas", "--raas-budget", "64")
    srvs = serve_all(model_dir, {
        fault: (args, tmp_path_factory.mktemp(fault), {**STRICT_ENV, "RAAS_TEST_FAULT": fault}) for fault in FAULTS
    })
    yield srvs
    for srv in srvs.values():
        srv.stop()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_check_fires_on_injected_fault(fault, faulty):
    srv = faulty[fault]
    with pytest.raises((urllib.error.URLError, ConnectionError, TimeoutError, OSError)):
        for _ in range(3):  # evict, finish, go idle: each check gets its chance
            gen(srv, PROMPT, 200)
            time.sleep(1.0)
    deadline = time.monotonic() + 30
    while not re.search(FAULTS[fault], srv.log_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert re.search(FAULTS[fault], srv.log_text()), srv.log_text()[-3000:]
