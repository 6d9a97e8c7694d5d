"""The CI-sized soak: bench.soak's randomized mix (policies, budgets, shared prefixes, client aborts, long decodes
under a small pool, deliberate bad requests) against one server, with the same checks as the full run."""

from __future__ import annotations

import json

from bench import soak


def test_ci_sized_soak(tmp_path):
    out = tmp_path / "soak.json"
    soak.main(["--json", str(out), "--requests", "160", "--workers", "12", "--pool", "3072", "--long-every", "16",
               "--long-tokens", "500,800", "--max-new", "120", "--seed", "1"])
    s = json.loads(out.read_text())
    assert s["requests"] == 160
    assert s["errors"] == 0 and s["leaked_slots"] == 0 and s["invariant_violations"] == 0
    assert s["bad_requests_rejected"] >= 2 and s["aborted"] >= 6
    assert s["evicted_pages"] > 0 and s["radix_hit_requests"] >= 16
