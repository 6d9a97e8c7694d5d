"""`python -m bench.scaleout --json P`: serving throughput measured with SGLang's own benchmark, one fixed KV pool per
server: (a) one dense server, (b) one RaaS server, (c) SGLang's router (cache-aware) in front of two RaaS servers;
plus a two-turn chat through the router.

Each setup is driven by `python -m sglang.benchmark.serving --backend sglang --dataset-name generated-shared-prefix`
(no download: prompts are generated from the tokenizer's vocabulary), a reasoning-shaped workload: short questions
sharing a system prompt per group, long outputs (`ignore_eos`), all requests sent at once. Every server gets the
same `--max-total-tokens` and page size 16; the RaaS servers `--kv-policy raas --raas-budget BUDGET`. Retractions
are read from SGLang's `sglang:num_retracted_requests_total` (`--enable-metrics`), leaks from each server's
`/get_server_info` after a flush. `router_radix_hit` is turn 2's `cached_tokens` of a chat whose turn 1 went
through the router, answered by the worker that holds turn 1's prompt.

The model (`--model`): the "bench" shape by default (hidden 512, 4 layers, 8 heads, random weights: attention and
the KV pool matter, unlike the 2-layer tiny model whose fixed per-step cost hides what RaaS changes), `smollm2`
(SmolLM2-135M, `make setup`), or `tiny`; the JSON names it with its shape. Defaults are a reasoning shape: 2,048
output tokens per request and a pool that holds only a few dense requests (8,192 tokens: three of 2,176).

Acceptance (exit 1 when missed): every setup completes every request, none fails, every server is leak-free, and
the router's turn 2 hits the cache. The goals (RaaS >= 3x dense output tokens/s; router + 2 RaaS >= 1.8x one RaaS)
are reported in `goals`, measured in this one run. On a CPU-only machine every server runs one core's worth of
threads (`OMP_NUM_THREADS=1`), the analog of one GPU per server: (c) has two cores' worth, (a) and (b) one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from bench.common import STRICT_ENV, leak_free, log, write_json
from raas_sglang.cpu_env import has_cuda, launch_env
from raas_sglang.dev import smollm2, tiny_model
from raas_sglang.dev.launch import Server, start_router, start_server


def _server(model, policy_args: list[str], pool: int, stack: ExitStack) -> Server:
    """A server with one fixed KV pool and, on a CPU-only machine, one core's worth of threads (`OMP_NUM_THREADS=1`):
    the analog of one GPU per server, so two replicas get twice the compute of one, as they would with a GPU each.
    NOTE: left at torch's default (every core) two replicas' OpenMP threads spin against each other and both
    stall (docs/research/session6-lessons.md)."""
    args = [*policy_args, "--page-size", "16", "--max-total-tokens", str(pool), "--enable-metrics",
            "--enable-cache-report", "--sleep-on-idle"]
    env = dict(STRICT_ENV)
    if not has_cuda():
        env["OMP_NUM_THREADS"] = "1"
    log(f"starting server: {' '.join(args)}")
    return stack.enter_context(start_server(model, args, env=env))


def _retractions(server: Server) -> int:
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("sglang:num_retracted_requests_total{")))


def _flushed_leak_free(server: Server) -> bool:
    """After a flush every slot is free (read from the allocator). A dense server reports no `raas` figures: there
    SGLang's strict idle check (on: STRICT_ENV) stops a server that leaked, so it must still be up."""
    deadline = time.monotonic() + 120
    while "Cache flushed" not in str(_try_flush(server)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)
    if "raas" in server.get("/get_server_info")["internal_states"][0]:
        return leak_free(server)
    time.sleep(1.0)
    return server.proc.poll() is None


def _try_flush(server: Server):
    try:
        return server.post("/flush_cache", {})
    except urllib.error.HTTPError as err:  # 400 while requests still run
        return err.code


def serving_bench(url: str, model: Path, a: argparse.Namespace) -> dict:
    """One run of SGLang's serving benchmark against `url`; returns its result record."""
    out = Path(tempfile.mkdtemp(prefix="scaleout-")) / "result.jsonl"
    cmd = [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang", "--base-url", url,
           "--model", str(model), "--tokenizer", str(model), "--dataset-name", "generated-shared-prefix",
           "--gsp-num-groups", str(a.groups), "--gsp-prompts-per-group", str(a.per_group),
           "--gsp-system-prompt-len", str(a.system_len), "--gsp-question-len", str(a.question_len),
           "--gsp-output-len", str(a.output_len), "--gsp-range-ratio", "1.0", "--request-rate", "inf",
           "--num-prompts", str(a.groups * a.per_group), "--seed", "1", "--output-file", str(out), "--disable-tqdm"]
    log(f"sglang.benchmark.serving -> {url}")
    done = subprocess.run(cmd, env=launch_env(), capture_output=True, text=True, timeout=a.timeout)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"sglang.benchmark.serving failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(out.read_text().splitlines()[-1])


def row(setup: str, result: dict, servers: list[Server], expected: int) -> dict:
    completed = int(result["completed"])
    return {
        "setup": setup,
        "completed": completed,
        "failed": expected - completed,
        "output_tok_s": round(float(result["output_throughput"]), 2),
        "p50_latency_s": round(float(result["median_e2e_latency_ms"]) / 1000, 3),
        "p99_latency_s": round(float(result["p99_e2e_latency_ms"]) / 1000, 3),
        "retractions": sum(_retractions(s) for s in servers),
        "leak_free": all(_flushed_leak_free(s) for s in servers),
        "duration_s": round(float(result["duration"]), 1),
    }


def router_chat(router: Server) -> int:
    """Turn 2's cached_tokens of a two-turn chat through the router."""
    messages = [{"role": "system", "content": "You are a careful reasoner; think step by step."},
                {"role": "user", "content": "A tank holds 120 litres and loses 7 litres an hour while a pump adds "
                                            "4 litres every 40 minutes. When is it half empty? Check each step."}]
    first = router.post("/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 160,
                                                 "temperature": 0, "ignore_eos": True})
    messages += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]},
                 {"role": "user", "content": "Now check it once more."}]
    second = router.post("/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 32,
                                                  "temperature": 0, "ignore_eos": True})
    return int(second["usage"]["prompt_tokens_details"]["cached_tokens"])


MODELS = {"bench": tiny_model.build_bench, "tiny": tiny_model.build, "smollm2": smollm2.build}
SHAPE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "vocab_size")


def model_record(name: str, path: Path) -> dict:
    """What the JSON says about the model: its name, directory and shape (from its config.json)."""
    config = json.loads((path / "config.json").read_text())
    where = path.resolve()
    where = where.relative_to(tiny_model.REPO_ROOT) if where.is_relative_to(tiny_model.REPO_ROOT) else where
    return {"name": name, "path": str(where), **{k: config.get(k) for k in SHAPE_KEYS}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", required=True)
    p.add_argument("--model", choices=sorted(MODELS), default="bench")
    p.add_argument("--pool", type=int, default=8192, help="--max-total-tokens of every server")
    p.add_argument("--budget", type=int, default=256, help="--raas-budget of the RaaS servers")
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--per-group", type=int, default=8)
    p.add_argument("--system-len", type=int, default=96)
    p.add_argument("--question-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark run")
    a = p.parse_args()
    model = Path(MODELS[a.model]())
    log(f"model {a.model} ({model}); {a.groups * a.per_group} requests of {a.system_len + a.question_len} prompt + "
        f"{a.output_len} output tokens; pool {a.pool}, budget {a.budget}")
    n = a.groups * a.per_group
    raas = ["--kv-policy", "raas", "--raas-budget", str(a.budget)]
    rows = []
    with ExitStack() as stack:
        dense = _server(model, ["--kv-policy", "dense"], a.pool, stack)
        rows.append(row("dense", serving_bench(dense.url, model, a), [dense], n))
        dense.stop()
        one = _server(model, raas, a.pool, stack)
        rows.append(row("raas", serving_bench(one.url, model, a), [one], n))
        one.stop()
        workers = [_server(model, raas, a.pool, stack) for _ in range(2)]
        router = stack.enter_context(start_router([w.url for w in workers], ("--policy", "cache_aware")))
        rows.append(row("router+2raas", serving_bench(router.url, model, a), workers, n))
        hit = router_chat(router)
    for r in rows:
        log(f"{r['setup']:13} completed {r['completed']}/{n}, {r['output_tok_s']:8.1f} output tok/s, p50 "
            f"{r['p50_latency_s']:.1f} s, p99 {r['p99_latency_s']:.1f} s, retractions {r['retractions']}, "
            f"leak-free {r['leak_free']}")
    by = {r["setup"]: r["output_tok_s"] for r in rows}
    goals = {
        "raas_over_dense": round(by["raas"] / by["dense"], 3),
        "raas_over_dense_goal": 3.0,
        "router_over_raas": round(by["router+2raas"] / by["raas"], 3),
        "router_over_raas_goal": 1.8,
    }
    goals["met"] = goals["raas_over_dense"] >= 3.0 and goals["router_over_raas"] >= 1.8
    acceptance = all(r["failed"] == 0 and r["completed"] == n and r["leak_free"] for r in rows) and hit > 0
    log(f"raas/dense {goals['raas_over_dense']}x (goal 3), router+2raas/raas {goals['router_over_raas']}x (goal 1.8); "
        f"router turn-2 cached tokens {hit}; acceptance {'met' if acceptance else 'MISSED'}")
    data = {
        "benchmark": "sglang.benchmark.serving --backend sglang --dataset-name generated-shared-prefix "
                     "--request-rate inf",
        "model": model_record(a.model, model), "pool_tokens": a.pool, "budget_tokens": a.budget, "page_size": 16, "requests": n,
        "groups": a.groups, "system_prompt_tokens": a.system_len, "question_tokens": a.question_len,
        "output_tokens": a.output_len, "rows": rows, "router_radix_hit": hit, "goals": goals,
        "acceptance": acceptance,
    }
    write_json(a.json, data)
    plot_path = Path(a.json).with_suffix(".png")
    _bar(plot_path, rows, a.model)
    sys.exit(0 if acceptance else 1)


def _bar(path: Path, rows: list[dict], model_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    names = [r["setup"] for r in rows]
    ax.bar(names, [r["output_tok_s"] for r in rows], color=["#888", "#2a7", "#27a"])
    for i, r in enumerate(rows):
        ax.text(i, r["output_tok_s"], f"{r['output_tok_s']:.0f}", ha="center", va="bottom")
    ax.set(title=f"Output tokens/s, same KV pool per server ({model_name})", ylabel="output tok/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
