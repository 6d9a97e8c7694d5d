"""`python -m bench.fidelity --json f.json`: toy-reasoner accuracy per KV policy x budget x task kind, served.

One `--kv-policy raas` server with the committed toy reasoner (`models/toy-reasoner`, see
`raas_sglang/dev/toy_reasoner.py`); every request picks its policy and budget through `custom_params`, so all
policies answer the same held-out problems (fixed seed, equal thirds over the kinds recent / prompt / early of
`raas_sglang.dev.toy_task`) on the same engine, greedy. Budgets are fractions of the mean dense trace length,
rounded up to whole pages. Writes JSON (+ CSV and a PNG of accuracy vs budget next to it).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import leak_free, log, plot, raas_server, write_json
from raas_sglang.dev import toy_task
from raas_sglang.config import SELECTING
from raas_sglang.dev.toy_reasoner import MODEL_DIR

SEED = 11  # held-out: differs from the training seeds (>= 1000) and the training script's eval seed (7)
FRACTIONS = (0.05, 0.125, 0.25, 0.5)
POLICIES = ("raas", "streaming", "h2o", "quest", "raas+quest")
PAGE = 16


def vocab(model: Path) -> tuple[dict[str, int], dict[int, str]]:
    table = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    return table, {i: t for t, i in table.items()}


def ask(server, to_id: dict, to_tok: dict, prompt: str, policy: str, budget: int | None) -> str:
    custom = {"kv_policy": policy}
    if budget is not None:
        custom["raas_budget"] = budget
    body = {
        "input_ids": [to_id["<s>"], *(to_id[c] for c in prompt)],
        "sampling_params": {"max_new_tokens": 900, "temperature": 0, "custom_params": custom},
    }
    out = server.post("/generate", body, timeout=3600)
    return "".join(to_tok.get(i, "") for i in out["output_ids"] if to_tok.get(i) not in toy_task.SPECIAL)


def run_cell(server, to_id, to_tok, probs, policy, budget, workers) -> list[tuple[toy_task.Problem, str]]:
    with ThreadPoolExecutor(workers) as pool:
        texts = list(pool.map(lambda p: ask(server, to_id, to_tok, p.prompt, policy, budget), probs))
    return list(zip(probs, texts))


def summarize(policy: str, budget: int | None, answered) -> list[dict]:
    rows = []
    for kind in [*toy_task.KINDS, "all"]:
        cell = [(p, t) for p, t in answered if kind in ("all", p.kind)]
        rows.append({
            "policy": policy,
            "budget_tokens": budget,
            "task": kind,
            "accuracy": round(sum(toy_task.extract(t) == p.answer for p, t in cell) / len(cell), 4),
            "n": len(cell),
            "mean_output_tokens": round(statistics.mean(len(t) + 1 for _, t in cell), 1),
        })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--problems", type=int, default=102, help="per (policy, budget) cell, in equal thirds")
    ap.add_argument("--model", type=Path, default=MODEL_DIR)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--workers", type=int, default=34)
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="budgets as fractions of the mean trace")
    ap.add_argument("--server-args", default="", help="extra server flags, e.g. '--raas-reduce max-mean'")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense cell (a study of one policy's variants)")
    args = ap.parse_args(argv)
    to_id, to_tok = vocab(args.model)
    probs = toy_task.problems(SEED, args.problems)
    mean_trace = statistics.mean(len(p.trace) + 1 for p in probs)  # + </s>
    fractions = [float(f) for f in args.fractions.split(",")]
    budgets = sorted({max(2, -(-int(f * mean_trace) // PAGE)) * PAGE for f in fractions})
    pool = args.workers * (40 + 900 + 2 * PAGE) + 8192
    results: list[dict] = []
    extra = ["--max-running-requests", str(args.workers), "--context-length", "1024"]
    if SELECTING & set(args.policies.split(",")):
        extra += ["--kv-policy", "raas+quest"]  # keeps Quest page key bounds; every request names its policy
    extra += args.server_args.split()
    with raas_server(max(budgets), pool, model=args.model, extra=extra) as server:
        if not args.no_dense:
            log(f"dense: {len(probs)} problems")
            dense = run_cell(server, to_id, to_tok, probs, "dense", None, args.workers)
            results += summarize("dense", None, dense)
            log(f"  dense accuracy {results[-1]['accuracy']:.3f}")
        for policy in args.policies.split(","):
            for budget in budgets:
                log(f"{policy} budget {budget}: {len(probs)} problems")
                results += summarize(policy, budget, run_cell(server, to_id, to_tok, probs, policy, budget,
                                                              args.workers))
                log(f"  accuracy {results[-1]['accuracy']:.3f}, mean output {results[-1]['mean_output_tokens']}")
        free = leak_free(server)
    data = {
        "model": str(args.model.name),
        "server_args": args.server_args,
        "tasks": list(toy_task.KINDS),
        "problems_per_cell": len(probs),
        "mean_trace_tokens": round(mean_trace, 1),
        "budget_25pct_tokens": max(2, -(-int(0.25 * mean_trace) // PAGE)) * PAGE,
        "budgets": budgets,
        "leak_free": free,
        "results": results,
    }
    write_json(args.json, data)
    out = Path(args.json)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    pooled = [r for r in results if r["task"] == "all"]
    series = {}
    if not args.no_dense:
        dense_acc = next(r["accuracy"] for r in pooled if r["policy"] == "dense")
        series["dense"] = (budgets, [dense_acc] * len(budgets))
    for policy in args.policies.split(","):
        series[policy] = (budgets, [r["accuracy"] for r in pooled if r["policy"] == policy])
    plot(out.with_suffix(".png"), f"toy reasoner accuracy (mean trace {mean_trace:.0f} tokens)",
         "decode KV budget (tokens)", "accuracy (pooled over task kinds)", series)
    for r in pooled:
        print(f"{r['policy']:>10} budget {r['budget_tokens']}: accuracy {r['accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
