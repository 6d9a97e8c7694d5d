"""`python -m bench.capacity --json c.json`: how many long decodes run at once in a fixed KV pool, dense vs raas.

One `--kv-policy raas` server with a fixed `--max-total-tokens`; for each policy (dense = per-request
`custom_params.kv_policy=dense`, SGLang's stock admission for that request) M identical requests (short prompt,
`ignore_eos`) are submitted at once. `max_running` is the largest M for which the server reports all M running at
the same time (polled from `/get_server_info`) and no request was retracted (`meta_info.num_retractions`),
found by doubling then bisection.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import generate, leak_free, log, plot, raas_server, raas_summary, write_json

PROMPT = [1, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54]  # 16 tokens


def trial(server, m: int, policy: str, new_tokens: int) -> dict:
    """Submit m requests at once; return peak concurrency, retractions and the running count over time."""
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    t0 = time.monotonic()

    def poll():
        while not done.is_set():
            samples.append((time.monotonic() - t0, raas_summary(server)["running_requests"]))
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with ThreadPoolExecutor(max_workers=m) as pool:
        outs = list(pool.map(lambda i: generate(server, PROMPT, new_tokens, policy), range(m)))
    done.set()
    poller.join()
    retractions = sum(o["meta_info"]["num_retractions"] for o in outs)
    peak = max(n for _, n in samples)
    ok = peak >= m and retractions == 0
    log(f"{policy:5} M={m:3}: peak running {peak:3}, retractions {retractions} -> {'fits' if ok else 'does not fit'}")
    return {"m": m, "peak": peak, "retractions": retractions, "ok": ok, "samples": samples}


def search(server, policy: str, new_tokens: int, limit: int) -> tuple[int, dict, dict]:
    """Largest M that fits (doubling, then bisection); returns (M, trial at M, trial at M + 1)."""
    trials: dict[int, dict] = {}

    def run(m):
        if m not in trials:
            trials[m] = trial(server, m, policy, new_tokens)
        return trials[m]["ok"]

    lo, hi = 0, None
    m = 1
    while m <= limit and run(m):
        lo, m = m, m * 2
    hi = min(m, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if run(mid) else (lo, mid)
    run(lo + 1)
    return lo, trials.get(lo, {"samples": []}), trials[lo + 1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--max-total-tokens", type=int, default=8192)
    ap.add_argument("--new-tokens", type=int, default=2048)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--limit", type=int, default=64, help="largest M tried")
    args = ap.parse_args(argv)
    ps = 16
    res = {}
    with raas_server(args.budget, args.max_total_tokens, ps, extra=["--max-running-requests", "256"]) as server:
        for policy in ("dense", "raas"):
            m, at, above = search(server, policy, args.new_tokens, args.limit)
            res[policy] = {"max_running": m, "peak_running_at_max_plus_one": above["peak"],
                           "retractions_at_max_plus_one": above["retractions"], "samples": at["samples"]}
        free = leak_free(server)
    expected = (len(PROMPT) + args.new_tokens) / (-(-len(PROMPT) // ps) * ps + args.budget + ps)
    ratio = res["raas"]["max_running"] / max(res["dense"]["max_running"], 1)
    data = {
        "max_total_tokens": args.max_total_tokens,
        "prompt_tokens": len(PROMPT),
        "budget_tokens": args.budget,
        "new_tokens": args.new_tokens,
        "page_size": ps,
        **{p: {k: v for k, v in res[p].items() if k != "samples"} for p in res},
        "expected_ratio": round(expected, 3),
        "ratio": round(ratio, 3),
        "leak_free": free,
    }
    write_json(args.json, data)
    plot(
        Path(args.json).with_suffix(".png"),
        f"Running requests over time at each policy's max M (pool {args.max_total_tokens} tokens)",
        "seconds", "running requests",
        {f"{p} (M={res[p]['max_running']})": ([t for t, _ in res[p]["samples"]], [n for _, n in res[p]["samples"]])
         for p in res},
    )
    print(f"{'policy':8} {'max_running':>11} {'peak at M+1':>12}")
    for p in ("dense", "raas"):
        print(f"{p:8} {res[p]['max_running']:>11} {res[p]['peak_running_at_max_plus_one']:>12}")
    print(f"ratio {ratio:.2f} (expected {expected:.2f}), leak_free {free}")
    return 0 if ratio >= 0.9 * expected and free else 1


if __name__ == "__main__":
    raise SystemExit(main())
