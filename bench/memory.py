"""`python -m bench.memory --json m.json`: one long greedy decode under dense and under raas, KV held per step.

Both runs go through one `--kv-policy raas` server (page 16, budget 256); the dense run asks for
`custom_params.kv_policy = dense`. Each run is alone on the server after a cache flush, so the KV it holds after
each decode step is the pool's free count before it minus SGLang's allocator free count right after that step's
allocation (`meta_info.raas.kv_free`, read from `available_size()`): both curves in the PNG and both peaks
(`allocator_peak_kv_tokens`) are measured by the allocator, not rebuilt. `peak_kv_tokens` is the server's per-request
figure (from the request's KV slots), `evicted_pages` its eviction count; the curve rebuilt from the eviction
trace is kept as a cross-check (`trace_matches_allocator`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import generate, leak_free, log, plot, raas_server, raas_summary, wait_idle, write_json

PROMPT = [1] + [30 + (i * 7) % 400 for i in range(79)]  # 80 tokens


def held_per_step(prompt: int, new: int, ps: int, trace: list) -> list[int]:
    """KV tokens held after writing each decode token: whole pages written minus evicted pages."""
    evicted_at = sorted(pos for pos, _, _ in trace)
    out, k = [], 0
    for t in range(new):
        pos = prompt + t
        while k < len(evicted_at) and evicted_at[k] <= pos:
            k += 1
        out.append((-(-(pos + 1) // ps) - k) * ps)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--new-tokens", type=int, default=2048)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--page-size", type=int, default=16)
    args = ap.parse_args(argv)
    ps, n = args.page_size, args.new_tokens
    with raas_server(args.budget, max_total_tokens=len(PROMPT) + n + 1024, page_size=ps) as server:
        res = {}
        for policy in ("dense", "raas"):
            wait_idle(server)
            server.post("/flush_cache", {})
            free0 = raas_summary(server)["free_tokens"]
            log(f"{policy}: {n} new tokens ...")
            out = generate(server, PROMPT, n, policy, raas_trace=True)
            meta = out["meta_info"]
            assert meta["completion_tokens"] == n, meta
            # NOTE: kv_free[i] is read after the allocation of decode step i, which writes token i + 1's KV
            held = [free0 - f for f in meta["raas"]["kv_free"]]
            res[policy] = {**meta["raas"], "new_tokens": meta["completion_tokens"], "held": held}
        free = leak_free(server)
    raas = res["raas"]
    bound = -(-len(PROMPT) // ps) * ps + raas["budget_tokens"]  # I4: no page of slack
    data = {
        "page_size": ps,
        "budget_tokens": raas["budget_tokens"],
        "prompt_tokens": len(PROMPT),
        "new_tokens": n,
        "dense": {"peak_kv_tokens": res["dense"]["peak_kv_tokens"], "evicted_pages": res["dense"]["evicted_pages"],
                  "allocator_peak_kv_tokens": max(res["dense"]["held"])},
        "raas": {"peak_kv_tokens": raas["peak_kv_tokens"], "bound_tokens": bound,
                 "evicted_pages": raas["evicted_pages"], "allocator_peak_kv_tokens": max(raas["held"])},
        "trace_matches_allocator": all(
            res[p]["held"] == held_per_step(len(PROMPT), n, ps, res[p]["trace"])[: len(res[p]["held"])]
            for p in ("dense", "raas")),
        "leak_free": free,
        "ratio_dense_over_raas_peak": round(res["dense"]["peak_kv_tokens"] / raas["peak_kv_tokens"], 2),
    }
    write_json(args.json, data)
    steps = list(range(1, len(raas["held"]) + 1))
    plot(
        Path(args.json).with_suffix(".png"),
        f"KV tokens held per decode step, SGLang's allocator (prompt {len(PROMPT)}, page {ps}, budget {raas['budget_tokens']})",
        "decode step", "KV tokens held",
        {"dense": (steps, res["dense"]["held"]), "raas": (steps, raas["held"]), "raas bound": (steps, [bound] * len(steps))},
    )
    print(f"{'policy':8} {'peak_kv_tokens':>15} {'evicted_pages':>14}")
    for p in ("dense", "raas"):
        print(f"{p:8} {data[p]['peak_kv_tokens']:>15} {data[p]['evicted_pages']:>14}")
    print(f"raas bound {bound}, leak_free {free}, dense/raas peak {data['ratio_dense_over_raas_peak']}x")
    print(f"allocator peaks: dense {data['dense']['allocator_peak_kv_tokens']}, raas {data['raas']['allocator_peak_kv_tokens']}")
    ok = (raas["peak_kv_tokens"] <= bound and max(raas["held"]) <= bound and raas["evicted_pages"] > 0 and free)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
