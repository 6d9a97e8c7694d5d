"""Helpers shared by the benchmarks: one RaaS server per run, requests, idle/leak checks, JSON and plots."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from raas_sglang.dev import tiny_model
from raas_sglang.dev.launch import STRICT_KV_CHECKS, Server, start_server

# the busy/idle pool identities only: the per-page ownership and duplicate-page sweeps cost O(pool) per step,
# which would distort timings (tests run with all of STRICT_KV_CHECKS)
STRICT_ENV = {k: v for k, v in STRICT_KV_CHECKS.items() if "STRICT_MEM_CHECK" in k}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raas_server(budget: int, max_total_tokens: int, page_size: int = 16, extra=(), model=None) -> Server:
    """A `--kv-policy raas` server; dense baselines run on it per request (`custom_params.kv_policy=dense`),
    which takes SGLang's stock path for that request, so both policies are measured by the same accounting."""
    model = model or tiny_model.build()
    args = ["--kv-policy", "raas", "--raas-budget", str(budget), "--page-size", str(page_size),
            "--max-total-tokens", str(max_total_tokens), *extra]
    log(f"starting server: {' '.join(args)}")
    # a benchmark stopped by SIGTERM (timeout, CI) unwinds its `with` block, which stops the server's group;
    # once the server runs, the handler stops it first, so client threads blocked on requests fail at once
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = start_server(model, args, env=STRICT_ENV)

    def stop_then_exit(*_):
        server.stop()
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop_then_exit)
    return server


def generate(server: Server, ids: list[int], new_tokens: int, policy: str, **custom) -> dict:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0, "ignore_eos": True,
                            "custom_params": {"kv_policy": policy, **custom}},
    }
    return server.post("/generate", body, timeout=3600)


def raas_summary(server: Server) -> dict:
    return server.get("/get_server_info")["internal_states"][0]["raas"]


def wait_idle(server: Server, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = raas_summary(server)
        if info.get("running_requests", 0) == 0 and info.get("protected_tokens", 0) == 0:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not idle after {timeout} s: {info}")
        time.sleep(0.3)


def leak_free(server: Server) -> bool:
    """Every slot is free or held by the radix tree once no request runs (read from the allocator)."""
    info = wait_idle(server)
    return info["free_tokens"] + info["evictable_tokens"] == info["pool_tokens"]


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2))
    log(f"wrote {path}")


def plot(path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, tuple[list, list]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")
