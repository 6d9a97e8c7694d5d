"""Device-to-host syncs per decode step (#25), counted in the real server with torch's `TorchFunctionMode`
(`tests/sync_counter.py`, loaded into the server's processes through `RAAS_POLICY_MODULES`).

On a GPU each sync stalls the launch queue; on this CPU they cost nothing, so they are counted, not timed. The
budget, per scheduler process (each rank under tensor parallel): a decode step that opens no page makes no sync in
RaaS code; a step that opens pages at most one (the eviction's found/lost check); a step that admits requests
none. A request that finishes costs a few at its release (its holes and its dense prefix for the radix tree, its
peak for the response): bounded per request. Rows of every policy share the batches: raas, h2o, streaming and quest
(quest at tp 1 only: refused at tp > 1).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO, serve
from raas_helpers import gen

COUNTER = REPO / "tests" / "sync_counter.py"
BUDGET = {"plain": 0, "open": 1, "admit": 0}  # most syncs in one step of each kind
PER_FINISHED_REQUEST = 3  # the release of a request with holes: resident pages, dense prefix, peak


def counted_run(model_dir, tmp: Path, args: tuple[str, ...], policies: list[str]) -> list[dict]:
    """One server under the counter; requests of `policies` side by side, each evicting (budget 32, 150 tokens
    after a 50-token prompt); returns each scheduler process's summary."""
    out = tmp / "syncs"
    env = {"RAAS_POLICY_MODULES": str(COUNTER), "RAAS_SYNC_COUNT_OUT": str(out), "RAAS_CHECK_MIRRORS": "0"}
    srv = serve(model_dir, "--raas-budget", "32", *args, tmp=tmp, env=env)
    try:
        jobs = [([1] + list(range(40 + 30 * i, 90 + 30 * i)), 150 + 10 * i, p) for i, p in enumerate(policies)]
        with ThreadPoolExecutor(len(jobs)) as pool:
            outs = list(pool.map(lambda j: gen(srv, j[0], j[1], kv_policy=j[2]), jobs))
        for (_, _, policy), o in zip(jobs, outs):
            assert o["meta_info"]["raas"]["policy"] == policy
            assert policy == "quest" or o["meta_info"]["raas"]["evicted_pages"] > 0
    finally:
        srv.stop()
    files = sorted(tmp.glob("syncs.*.json"))
    assert files, "the counter wrote nothing: it was not loaded into the scheduler"
    return [json.loads(f.read_text()) for f in files]


def check(summaries: list[dict]) -> None:
    for summary in summaries:
        assert {"plain", "open", "admit", "finish"} <= set(summary), summary.keys()
        for kind, most in BUDGET.items():
            assert summary[kind]["max_syncs"] <= most, (kind, summary[kind])
        assert summary["finish"]["max_syncs_per_request"] <= PER_FINISHED_REQUEST, summary["finish"]


def test_sync_budget_per_decode_step(model_dir, tmp_path):
    check(counted_run(model_dir, tmp_path, ("--kv-policy", "raas+quest"), ["raas", "h2o", "streaming", "quest"]))


@pytest.mark.slow  # ~60 s (two ranks on two cores); run in session 11: passes, the same budget per rank
def test_sync_budget_per_decode_step_tensor_parallel(model_dir, tmp_path):
    summaries = counted_run(model_dir, tmp_path, ("--kv-policy", "raas", "--tp-size", "2"), ["raas", "h2o", "streaming"])
    assert len(summaries) == 2  # one per rank
    check(summaries)
