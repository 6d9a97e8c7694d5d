"""`sgl.Engine(kv_policy="raas", raas_budget=...)`: the offline engine takes the RaaS keywords and generates."""

from __future__ import annotations

import json
import subprocess
import sys

from raas_helpers import gen
from raas_sglang.cpu_env import launch_env

SCRIPT = r"""
import json, sys
import sglang as sgl
from raas_sglang.config import ConfigError

if __name__ == "__main__":
    model = sys.argv[1]
    cpu = dict(device="cpu", attention_backend="torch_native", dtype="float32") if sys.argv[2] == "cpu" else {}
    engine = sgl.Engine(model_path=model, max_total_tokens=2048, kv_policy="raas", raas_budget=40, **cpu)
    out = engine.generate(input_ids=[1, 5, 6, 7], sampling_params={"max_new_tokens": 120, "temperature": 0,
                                                                    "ignore_eos": True})
    cfg = engine.server_args._raas_config
    engine.shutdown()
    try:
        sgl.Engine(model_path=model, kv_policy="raas", raas_budget=8, **cpu)
        refused = None
    except ConfigError as err:
        refused = str(err)
    print("RESULT " + json.dumps({"output_ids": out["output_ids"], "raas": out["meta_info"]["raas"],
                                  "overlap_off": engine.server_args.disable_overlap_schedule, "page_size": cfg.page_size,
                                  "budget_tokens": cfg.budget_tokens, "policy": cfg.policy, "refused": refused}))
"""


def test_engine_kv_policy_raas(model_dir, tmp_path, raas_server):
    """The engine evicts (budget 40 -> 3 pages, 120 new tokens) and gives the same tokens as the HTTP server with the
    same budget; its overlap scheduler is off; a bad budget raises ConfigError."""
    from raas_sglang.cpu_env import has_cuda

    script = tmp_path / "engine_run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(model_dir), "gpu" if has_cuda() else "cpu"],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(lines[-1][7:])
    assert len(res["output_ids"]) == 120 and res["raas"]["evicted_pages"] >= 4 and res["overlap_off"] is True
    served = gen(raas_server, [1, 5, 6, 7], 120, raas_budget=48)
    assert res["output_ids"] == served["output_ids"]
    assert res["raas"]["evicted_pages"] == served["meta_info"]["raas"]["evicted_pages"]
    assert (res["policy"], res["page_size"], res["budget_tokens"]) == ("raas", 16, 48)
    assert res["refused"] == "--raas-budget: must be at least 2 pages = 32 tokens at page size 16, got 8"
