"""`python -m bench.load --json l.json`: 64 concurrent streaming clients for 10 minutes against one CPU server.

One `--kv-policy raas` server (tiny model, page 16, radix on). Each client loops until the deadline: it streams
one request, chosen in turn from `/generate` (input ids, a per-request policy and budget), `/v1/completions` and
`/v1/chat/completions`, reads every chunk up to the end of the stream, and checks it got the tokens it asked for
(`ignore_eos`). Any HTTP error, broken stream or short answer counts as a failed request.

The server's resident memory (RSS of the launch process and all its children, from /proc via psutil) is sampled
every `--sample-s` seconds; `rss_start_mb` is taken once the warm-up (`--warmup-s`) is over, `rss_end_mb` after
the last client stopped. Fields: clients, seconds, requests, failed, tokens, tokens_per_s, rss_start_mb,
rss_end_mb, rss_ratio (end / start: the acceptance is <= 1.1), rss_max_mb, leak_free, rss_samples [[s, mb]].
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.common import leak_free, log, plot, raas_server, write_json

BUDGET = 256
POLICIES = ("raas", "raas", "dense", "streaming", "h2o")  # per /generate request; OpenAI requests use the default


@dataclass
class LoadTally:
    requests: int = 0
    failed: int = 0
    tokens: int = 0
    failures: list[str] = field(default_factory=list)


def server_rss_mb(pid: int) -> float:
    """Resident memory of the server process and all its children (scheduler, detokenizer), in MiB."""
    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


class Client:
    """One streaming client: `run` loops over requests until the deadline."""

    def __init__(self, port: int, idx: int, seed: int, tally: LoadTally, lock: threading.Lock):
        self.port, self.idx, self.tally, self.lock = port, idx, tally, lock
        self.rng = random.Random(seed * 1000 + idx)

    def request(self, n: int) -> tuple[str, dict, int]:
        """(path, body, tokens expected) for the n-th request of this client."""
        rng = self.rng
        new = rng.randint(16, 320)
        kind = (self.idx + n) % 3
        if kind == 0:
            policy = rng.choice(POLICIES)
            custom = {"kv_policy": policy}
            if policy != "dense":
                custom["raas_budget"] = rng.randrange(2, BUDGET // 16 + 1) * 16
            ids = [1] + [rng.randrange(3, 500) for _ in range(rng.randint(8, 600))]
            body = {"input_ids": ids, "stream": True, "sampling_params": {
                "max_new_tokens": new, "temperature": 0, "ignore_eos": True, "custom_params": custom}}
            return "/generate", body, new
        words = " ".join(rng.choice(("step", "think", "carry", "sum", "then", "next")) for _ in range(rng.randint(3, 80)))
        common = {"model": "tiny", "max_tokens": new, "temperature": 0, "ignore_eos": True, "stream": True,
                  "stream_options": {"include_usage": True}}
        if kind == 1:
            return "/v1/completions", {**common, "prompt": words}, new
        return "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": words}]}, new

    def stream(self, path: str, body: dict) -> int:
        """Send one streaming request and read it to the end; returns the completion tokens received."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
            last, done = None, False
            for line in resp:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                last = json.loads(data)
            if not done or last is None:
                raise RuntimeError("stream ended without [DONE]")
            return _completion_tokens(path, last)
        finally:
            conn.close()

    def run(self, deadline: float) -> None:
        n = 0
        while time.monotonic() < deadline:
            path, body, want = self.request(n)
            n += 1
            try:
                got = self.stream(path, body)
                if got != want:
                    raise RuntimeError(f"{got} tokens, asked for {want}")
                ok, tokens = True, want
            except Exception as err:  # a failed request: recorded, the client goes on
                ok, tokens = False, 0
                with self.lock:
                    self.tally.failures.append(f"client {self.idx} {path}: {type(err).__name__}: {err}"[:300])
            with self.lock:
                self.tally.requests += 1
                self.tally.failed += not ok
                self.tally.tokens += tokens


def _completion_tokens(path: str, last: dict) -> int:
    """Tokens of the finished request from its last chunk (OpenAI: the usage chunk `include_usage` asks for)."""
    if path == "/generate":
        return last["meta_info"]["completion_tokens"]
    return last["usage"]["completion_tokens"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS start is sampled after this")
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--pool", type=int, default=16384, help="--max-total-tokens")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    server = raas_server(BUDGET, args.pool, extra=["--max-running-requests", str(args.clients)])
    tally, lock = LoadTally(), threading.Lock()
    samples: list[list[float]] = []
    with server:
        t0 = time.monotonic()
        deadline = t0 + args.minutes * 60
        threads = [threading.Thread(target=Client(server.port, i, args.seed, tally, lock).run, args=(deadline,))
                   for i in range(args.clients)]
        for th in threads:
            th.start()
        rss_start = None
        next_log = t0 + 60
        while any(th.is_alive() for th in threads):
            now = time.monotonic() - t0
            samples.append([round(now, 1), round(server_rss_mb(server.proc.pid), 1)])
            if rss_start is None and now >= min(args.warmup_s, args.minutes * 30):
                rss_start = samples[-1][1]
            if time.monotonic() >= next_log:
                next_log += 60
                log(f"{now:.0f} s: {tally.requests} requests, {tally.failed} failed, {tally.tokens} tokens, "
                    f"server RSS {samples[-1][1]:.0f} MiB")
            time.sleep(args.sample_s if time.monotonic() < deadline else 0.5)
        seconds = time.monotonic() - t0
        rss_end = round(server_rss_mb(server.proc.pid), 1)
        samples.append([round(seconds, 1), rss_end])
        clean = leak_free(server)
    for line in tally.failures[:10]:
        log(line)
    rss_start = rss_start or samples[0][1]
    data = {"clients": args.clients, "seconds": round(seconds, 1), "requests": tally.requests,
            "failed": tally.failed, "tokens": tally.tokens, "tokens_per_s": round(tally.tokens / seconds, 1),
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_ratio": round(rss_end / rss_start, 3),
            "rss_max_mb": max(mb for _, mb in samples), "leak_free": clean, "warmup_s": args.warmup_s,
            "pool_tokens": args.pool, "seed": args.seed, "rss_samples": samples}
    write_json(args.json, data)
    png = Path(args.json).with_suffix(".png")
    plot(png, f"server RSS under {args.clients} streaming clients", "seconds", "RSS (MiB)",
         {"server + children": ([s for s, _ in samples], [mb for _, mb in samples])})
    print(json.dumps({k: v for k, v in data.items() if k != "rss_samples"}, indent=1))
    return 0 if tally.failed == 0 and clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
