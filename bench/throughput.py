"""`python -m bench.throughput --json t.json`: decode tokens/s of one long reasoning-style request, dense vs raas.

The "bench" model shape (hidden 512, 4 layers, 8 heads, random weights) on one `--kv-policy raas` server; the
dense run asks for `custom_params.kv_policy = dense`. One request with a short prompt decodes (`ignore_eos`)
until its context is `--context` tokens (kept under 16,384: past that the CPU gather allocator cliff in
docs/benchmarks.md would inflate the ratio); tokens/s is measured over the last 1024 tokens from the stream.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time

from bench.common import leak_free, log, raas_server, write_json
from raas_sglang.dev import tiny_model

PROMPT = [1] + [40 + i for i in range(20)]  # 21 tokens


def stream_times(server, ids: list[int], new_tokens: int, policy: str, budget: int) -> tuple[list, dict]:
    """(completion_tokens, arrival seconds) per streamed chunk, and the final meta_info."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=7200)
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True,
                            "custom_params": {"kv_policy": policy, "raas_budget": budget}},
        "stream": True,
    }
    conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    points, meta, t0, last_log = [], {}, time.monotonic(), 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        meta = json.loads(line[6:])["meta_info"]
        n = meta["completion_tokens"]
        points.append((n, time.monotonic() - t0))
        if n - last_log >= 2000:
            last_log = n
            log(f"  {policy}: {n}/{new_tokens} tokens, {points[-1][1]:.0f} s")
    conn.close()
    return points, meta


def tok_s_last(points: list, window: int) -> float:
    end_n, end_t = points[-1]
    start = next((n, t) for n, t in points if n >= end_n - window)
    return (end_n - start[0]) / (end_t - start[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--context", type=int, default=16100, help="prompt + output tokens (< 16384)")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--order", default="dense,raas", help="which policy runs first (both run in one server)")
    args = ap.parse_args(argv)
    new = args.context - len(PROMPT)
    model = tiny_model.build_bench()
    res = {}
    with raas_server(args.budget, max_total_tokens=args.context + 1024, model=model,
                     extra=["--stream-interval", "8"]) as server:
        for policy in args.order.split(","):
            log(f"{policy}: decoding to {args.context} tokens of context ...")
            points, meta = stream_times(server, PROMPT, new, policy, args.budget)
            assert meta["completion_tokens"] == new, meta
            res[policy] = {"tok_s": round(tok_s_last(points, args.window), 2), "seconds": round(points[-1][1], 1),
                           "peak_kv_tokens": meta["raas"]["peak_kv_tokens"],
                           "evicted_pages": meta["raas"]["evicted_pages"]}
            log(f"{policy}: {res[policy]}")
        free = leak_free(server)
    data = {
        "context_tokens": args.context,
        "budget_tokens": args.budget,
        "window_tokens": args.window,
        "model": "bench shape: hidden 512, intermediate 1408, 4 layers, 8 heads, 8 KV heads, float32",
        **res,
        "speedup": round(res["raas"]["tok_s"] / res["dense"]["tok_s"], 2),
        "leak_free": free,
    }
    write_json(args.json, data)
    print(f"context {args.context}: dense {res['dense']['tok_s']} tok/s, raas {res['raas']['tok_s']} tok/s, "
          f"speedup {data['speedup']}x (last {args.window} tokens)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
