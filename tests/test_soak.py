"""The CI-sized soak, with every SGLang KV and tree check on: bench.soak's randomized mix (policies, budgets, shared prefixes, client aborts, long decodes
under a small pool, deliberate bad requests) against one server, with the same checks as the full run."""

from __future__ import annotations

import json

from bench import soak
from raas_sglang.dev.launch import ALL_KV_CHECKS


def test_ci_sized_soak(tmp_path):
    out = tmp_path / "soak.json"
    rc = soak.main(["--json", str(out), "--requests", "160", "--workers", "12", "--pool", "2048", "--long-every", "8",
                    "--long-tokens", "500,800", "--max-new", "120", "--seed", "1", "--min-retractions", "1"])
    s = json.loads(out.read_text())
    assert rc == 0 and s["acceptance"]["passed"], s["acceptance"]
    assert s["checks"] == ALL_KV_CHECKS  # every SGLang KV / tree check was on
    assert s["requests"] == 160
    assert s["errors"] == 0 and s["leaked_slots"] == 0 and s["invariant_violations"] == 0
    assert s["bad_requests_rejected"] >= 2 and s["aborted"] >= 6
    assert s["evicted_pages"] > 0 and s["radix_hit_requests"] >= 16
    assert s["retractions"] >= 1, s["retractions"]  # the scheduler retracted at least once, under every check
