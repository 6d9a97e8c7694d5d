"""`make demo`: one long reasoning-style request through a real `--kv-policy raas` server.

Starts `python -m sglang.launch_server --kv-policy raas` on the tiny local model (CPU engine when there is no
CUDA device), sends one long greedy request (`ignore_eos`), prints a short summary, stops the server.

    python -m raas_sglang.dev.demo [--new-tokens 1536] [--budget 256] [--model DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from raas_sglang.dev import tiny_model
from raas_sglang.dev.launch import start_server

PROMPT = (
    "Problem: a number plus its square equals 156. Find the number. Think step by step, check each case, "
    "and give the final answer."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=1536)
    parser.add_argument("--budget", type=int, default=256, help="--raas-budget in tokens")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: the tiny model)")
    args = parser.parse_args(argv)

    model = args.model or tiny_model.build()
    print(f"[demo] starting python -m sglang.launch_server --kv-policy raas --raas-budget {args.budget} ({model})")
    t0 = time.monotonic()
    with start_server(
        model, ["--kv-policy", "raas", "--raas-budget", str(args.budget), "--max-total-tokens", "8192"]
    ) as server:
        print(f"[demo] server ready in {time.monotonic() - t0:.1f} s at {server.url}")
        print(f"[demo] one request: {args.new_tokens} new tokens, greedy, ignore_eos ...")
        t1 = time.monotonic()
        out = server.post(
            "/generate",
            {
                "text": PROMPT,
                "sampling_params": {"max_new_tokens": args.new_tokens, "temperature": 0, "ignore_eos": True},
            },
        )
        seconds = time.monotonic() - t1
        page = server.get("/get_server_info")["page_size"]
    meta = out["meta_info"]
    raas = meta["raas"]  # read by the server from the request's actual KV slots
    dense = meta["prompt_tokens"] + meta["completion_tokens"]
    bound = -(-meta["prompt_tokens"] // page) * page + raas["budget_tokens"] + page
    print("[demo] summary")
    print(f"  prompt tokens         {meta['prompt_tokens']}")
    print(f"  tokens generated      {meta['completion_tokens']}")
    print(f"  seconds               {seconds:.1f}  ({meta['completion_tokens'] / seconds:.0f} tok/s)")
    print(f"  page size             {page}")
    print(f"  KV tokens held (peak) {raas['peak_kv_tokens']}  (bound: prompt pages + budget + one page = {bound})")
    print(f"  pages evicted         {raas['evicted_pages']}")
    print(f"  dense would hold      {dense}  ({dense / raas['peak_kv_tokens']:.1f}x more)")
    ok = meta["completion_tokens"] == args.new_tokens and raas["peak_kv_tokens"] <= bound
    if not ok:
        print(f"[demo] expected {args.new_tokens} tokens, got {meta['completion_tokens']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
