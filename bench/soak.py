"""`python -m bench.soak --json s.json`: randomized requests against one CPU server; nothing may leak or break.

One server (tiny model, page 16, radix on, SGLang's strict busy/idle KV checks, a small `--max-total-tokens` so
long decodes force retraction) started with `--kv-policy raas+quest`, so every policy can be asked for per
request. Each request draws (fixed seed): a prompt of 1..2K tokens, often behind one of a few shared prefixes
(radix hits); a policy (dense, raas, streaming, h2o, quest, raas+quest) and a budget from two pages up to the
server's; 1..300 new tokens, or a long decode that ignores EOS; a streamed request aborted by the client after a
random number of chunks; or a deliberate bad request from the bad-input table (it must get its 400).

After draining and flushing the cache: every slot is free again (`leaked_slots`), the server log holds no
invariant violation (SGLang's strict checks raise into the log and kill the scheduler), and the server still
answers. Fields: requests, errors (unexpected only), bad_requests_rejected, aborted, evicted_pages,
retractions, bounded_reprefills (resumptions of a request with evicted pages that recomputed only its pinned prompt
and kept pages), radix_hit_requests, leaked_slots, invariant_violations.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import log, raas_summary, wait_idle, write_json
from raas_sglang.dev import tiny_model
from raas_sglang.dev.launch import ALL_KV_CHECKS, start_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bad_inputs import REQUESTS  # noqa: E402  (the deliberate bad requests: the table the tests run)

# the rows that are bad on any server (this one keeps page key bounds, so a quest request is fine here)
BAD = {name: row for name, row in REQUESTS.items() if "needs page key bounds" not in row[1]}

POLICIES = ("dense", "raas", "streaming", "h2o", "quest", "raas+quest")
SERVER_BUDGET = 256
VIOLATIONS = ("Traceback", "memory leak", "AssertionError", "KV page invariant", "double free", "use-after-free",
              "Scheduler hit an exception")


@dataclass
class Tally:
    requests: int = 0
    errors: int = 0
    bad_requests_rejected: int = 0
    aborted: int = 0
    evicted_pages: int = 0
    retractions: int = 0
    bounded_reprefills: int = 0
    radix_hit_requests: int = 0
    leaked_slots: int = 0
    invariant_violations: int = 0


class Soak:
    def __init__(self, server, seed: int, long_every: int, max_new: int, long_tokens: tuple[int, int]):
        self.server, self.long_every = server, long_every
        self.max_new, self.long_tokens = max_new, long_tokens
        self.rng = random.Random(seed)
        self.prefixes = [[1] + [self.rng.randrange(3, 500) for _ in range(self.rng.choice((40, 200, 700)))]
                         for _ in range(6)]
        self.tally = Tally()
        self.lock = threading.Lock()
        self.failures: list[str] = []

    def draw(self, i: int) -> dict:
        """One request's plan (drawn under the lock: the sequence is fixed by the seed)."""
        rng = self.rng
        kind = rng.random()
        plan = {"i": i, "bad": None, "abort": None}
        if kind < 0.03:
            plan["bad"] = rng.choice(sorted(BAD))
        elif kind < 0.11:
            plan["abort"] = rng.randint(1, 40)
        body_len = min(2048, int(rng.paretovariate(1.2) * 20))
        prefix = rng.choice(self.prefixes) if rng.random() < 0.5 else [1]
        plan["ids"] = (prefix + [rng.randrange(3, 500) for _ in range(body_len)])[:2048]
        plan["policy"] = rng.choice(POLICIES)
        plan["budget"] = rng.choice([None, rng.randrange(2, SERVER_BUDGET // 16 + 1) * 16])
        long = self.long_every and i % self.long_every == 0
        plan["new"] = rng.randint(*self.long_tokens) if long else rng.randint(1, self.max_new)
        # NOTE: SGLang 0.5.23 reserves an `ignore_eos` request's whole max_new_tokens at admission (ratio 1.0), so
        # those never outgrow the pool. A long decode is sent with `min_new_tokens` = its length instead: EOS is
        # masked just the same, but admission reserves it at the decaying new-token ratio, so it outgrows its
        # reservation and SGLang retracts.
        plan["long"] = bool(long)
        plan["ignore_eos"] = not long and rng.random() < 0.5
        return plan

    def body(self, plan: dict, stream: bool = False) -> dict:
        custom = {"kv_policy": plan["policy"]}
        if plan["budget"] is not None and plan["policy"] != "dense":
            custom["raas_budget"] = plan["budget"]
        if plan["bad"]:
            custom = dict(BAD[plan["bad"]][0])
        return {
            "input_ids": plan["ids"],
            "sampling_params": {"max_new_tokens": plan["new"], "temperature": 0, "ignore_eos": plan["ignore_eos"],
                                "min_new_tokens": plan["new"] if plan.get("long") else 0, "custom_params": custom},
            "stream": stream,
        }

    def run_one(self, plan: dict) -> None:
        try:
            if plan["bad"]:
                self._bad(plan)
            elif plan["abort"]:
                self._abort(plan)
            else:
                self._normal(plan)
        except Exception as err:  # an unexpected failure of this request
            with self.lock:
                self.tally.errors += 1
                self.failures.append(f"request {plan['i']}: {type(err).__name__}: {err}"[:300])
        with self.lock:
            self.tally.requests += 1

    def _normal(self, plan: dict) -> None:
        out = self.server.post("/generate", self.body(plan), timeout=1800)
        meta = out["meta_info"]
        with self.lock:
            self.tally.evicted_pages += (meta.get("raas") or {}).get("evicted_pages", 0)
            self.tally.retractions += meta.get("num_retractions", 0) or 0
            self.tally.bounded_reprefills += (meta.get("raas") or {}).get("bounded_reprefills", 0)
            self.tally.radix_hit_requests += int((meta.get("cached_tokens") or 0) > 0)

    def _bad(self, plan: dict) -> None:
        try:
            self.server.post("/generate", self.body(plan), timeout=60)
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            if err.code == 400 and BAD[plan["bad"]][1] in text:
                with self.lock:
                    self.tally.bad_requests_rejected += 1
                return
            raise RuntimeError(f"bad request {plan['bad']}: HTTP {err.code}: {text[:200]}") from None
        raise RuntimeError(f"bad request {plan['bad']} was accepted")

    def _abort(self, plan: dict) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=600)
        conn.request("POST", "/generate", json.dumps(self.body(plan, stream=True)),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"stream: HTTP {resp.status}")
        chunks = 0
        while chunks < plan["abort"]:
            line = resp.readline()
            if not line:
                break
            chunks += line.startswith(b"data:")
        conn.close()  # the client goes away mid-stream
        with self.lock:
            self.tally.aborted += 1


def healthy(server) -> bool:
    """`/health_generate` runs a one-token generation through the scheduler."""
    try:
        with urllib.request.urlopen(server.url + "/health_generate", timeout=120) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def violations(log_text: str) -> int:
    return sum(log_text.count(marker) for marker in VIOLATIONS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=24)
    ap.add_argument("--pool", type=int, default=4096, help="--max-total-tokens: small, so long decodes retract")
    ap.add_argument("--long-every", type=int, default=30, help="every Nth request is a long decode (EOS masked by min_new_tokens)")
    ap.add_argument("--long-tokens", default="1000,2000", help="range of a long decode's new tokens")
    ap.add_argument("--max-new", type=int, default=300, help="new tokens of the other requests: 1..this")
    ap.add_argument("--conservativeness", type=float, default=0.3,
                    help="--schedule-conservativeness: below 1 admits optimistically, so decodes outgrow the pool "
                         "and SGLang retracts")
    ap.add_argument("--min-retractions", type=int, default=10,
                    help="acceptance: at least this many retractions (the run must exercise them)")
    args = ap.parse_args(argv)
    server_args = ["--kv-policy", "raas+quest", "--raas-budget", str(SERVER_BUDGET), "--page-size", "16",
                   "--max-total-tokens", str(args.pool), "--max-running-requests", str(args.workers),
                   "--context-length", "4096",
                   "--schedule-conservativeness", str(args.conservativeness)]
    log(f"starting server: {' '.join(server_args)}")
    env = dict(ALL_KV_CHECKS)  # every KV / tree check SGLang has; recorded in the JSON
    t0 = time.monotonic()
    with start_server(tiny_model.build(), server_args, env=env) as server:
        lo, hi = (int(x) for x in args.long_tokens.split(","))
        soak = Soak(server, args.seed, args.long_every, args.max_new, (lo, hi))
        plans = [soak.draw(i) for i in range(args.requests)]
        step = max(1, args.requests // 20)
        with ThreadPoolExecutor(args.workers) as pool:
            for done, _ in enumerate(pool.map(soak.run_one, plans), 1):
                if done % step == 0:
                    t = soak.tally
                    log(f"{done}/{args.requests} requests, {t.errors} errors, {t.retractions} retractions, "
                        f"{t.evicted_pages} pages evicted, {time.monotonic() - t0:.0f} s")
        tally = soak.tally
        info = wait_idle(server, timeout=300)
        held = info["pool_tokens"] - info["free_tokens"] - info["evictable_tokens"]
        server.post("/flush_cache", {})
        time.sleep(1.0)
        after = raas_summary(server)
        tally.leaked_slots = max(held, after["pool_tokens"] - after["free_tokens"])
        tally.invariant_violations = violations(server.log_text()) + (0 if healthy(server) else 1)
        for line in soak.failures[:10]:
            log(line)
    data = {**asdict(tally), "seconds": round(time.monotonic() - t0, 1), "seed": args.seed, "workers": args.workers,
            "pool_tokens": args.pool, "checks": env}
    failed = [name for name, ok in (("errors", tally.errors == 0), ("leaked_slots", tally.leaked_slots == 0),
                                    ("invariant_violations", tally.invariant_violations == 0),
                                    ("retractions", tally.retractions >= args.min_retractions)) if not ok]
    data["acceptance"] = {"passed": not failed, "failed": failed, "min_retractions": args.min_retractions}
    write_json(args.json, data)
    print(json.dumps(data, indent=1))
    if failed:
        log(f"FAILED its acceptance line: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
