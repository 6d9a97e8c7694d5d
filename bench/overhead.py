"""`python -m bench.overhead --json o.json`: share of a decode step spent in RaaS bookkeeping.

The "bench" model shape on one `--kv-policy raas` server; `--batch` identical requests decode together until
their contexts reach `--context` tokens (budget 1024). The server times its own RaaS code on the decode path
(admission of rows, victim choice and eviction, page opening and peak reads, resident tables, key bounds,
page scores, stamp refresh) and the wall time of each decode step; both are read from `/get_server_info`
at two points of the last `--window` steps and differenced.
"""

from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.common import generate, leak_free, log, raas_server, raas_summary, write_json
from raas_sglang.dev import tiny_model

PROMPT = [1] + [40 + i for i in range(20)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--window", type=int, default=256)
    args = ap.parse_args(argv)
    new = args.context - len(PROMPT)
    pool = args.batch * (args.context + 64) + 4096
    snaps: list[dict] = []
    done = threading.Event()
    with raas_server(args.budget, pool, model=tiny_model.build_bench(),
                     extra=["--max-running-requests", str(args.batch)]) as server:

        def poll():
            while not done.is_set():
                s = raas_summary(server)
                if s["running_requests"] == args.batch:
                    snaps.append(s)
                    if len(snaps) % 60 == 0:
                        log(f"  step {s['decode_steps']}: {s['step_seconds'] / max(s['decode_steps'], 1) * 1e3:.0f} ms/step")
                time.sleep(1.0)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        log(f"{args.batch} requests decoding to {args.context} tokens of context ...")
        with ThreadPoolExecutor(args.batch) as ex:
            outs = list(ex.map(lambda i: generate(server, PROMPT, new, "raas", raas_budget=args.budget),
                               range(args.batch)))
        done.set()
        poller.join()
        free = leak_free(server)
    end = snaps[-1]
    start = next(s for s in snaps if s["decode_steps"] >= end["decode_steps"] - args.window)
    steps = end["decode_steps"] - start["decode_steps"]
    step_ms = (end["step_seconds"] - start["step_seconds"]) / steps * 1e3
    raas_ms = (end["raas_seconds"] - start["raas_seconds"]) / steps * 1e3
    data = {
        "batch": args.batch,
        "context_tokens": args.context,
        "budget_tokens": args.budget,
        "window_steps": steps,
        "step_ms": round(step_ms, 3),
        "raas_ms": round(raas_ms, 3),
        "share": round(raas_ms / step_ms, 4),
        "raas_ms_by_part": {
            part: round((end["raas_seconds_by_part"].get(part, 0.0) - start["raas_seconds_by_part"].get(part, 0.0))
                        / steps * 1e3, 3)
            for part in end["raas_seconds_by_part"]
        },
        "evicted_pages": sum(o["meta_info"]["raas"]["evicted_pages"] for o in outs),
        "leak_free": free,
    }
    write_json(args.json, data)
    print(f"batch {args.batch}, context ~{args.context}: step {step_ms:.1f} ms, raas {raas_ms:.2f} ms, "
          f"share {data['share']:.3f} (by part, ms: {data['raas_ms_by_part']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
