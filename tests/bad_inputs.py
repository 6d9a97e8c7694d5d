"""The bad-input table: every row is one test (startup rows in test_cli.py, request rows in
test_raas_eviction.py) and one line of docs/bad-input.md (test_bad_input_doc.py keeps them in step).

Startup rows: (extra launch flags, the one-line message the launcher prints after `error: `).
Request rows: (a change to a valid `/generate` body, the message the HTTP 400 carries); the same change goes
through `/v1/chat/completions` too, and the server must keep serving.
"""

from __future__ import annotations

FLAGS = {
    "unknown-policy": (["--kv-policy", "lru"], "--kv-policy: must be one of dense, raas, streaming, h2o, quest, raas+quest"),
    "budget-not-int": (["--kv-policy", "raas", "--raas-budget", "lots"], "--raas-budget: must be a positive integer"),
    "budget-zero": (["--kv-policy", "raas", "--raas-budget", "0"], "--raas-budget: must be a positive integer"),
    "budget-negative": (["--kv-policy", "raas", "--raas-budget=-64"], "--raas-budget: must be a positive integer"),
    "budget-fraction": (["--kv-policy", "raas", "--raas-budget", "64.5"], "--raas-budget: must be a positive integer"),
    "budget-one-page": (["--kv-policy", "raas", "--raas-budget", "16"], "--raas-budget: must be at least 2 pages = 32 tokens"),
    "budget-one-page-p64": (
        ["--kv-policy", "raas", "--page-size", "64", "--raas-budget", "64"],
        "--raas-budget: must be at least 2 pages = 128 tokens at page size 64",
    ),
    "budget-huge": (
        ["--kv-policy", "raas", "--raas-budget", str(10**12), "--max-total-tokens", "4096"],
        "--raas-budget: must be at most the context length (32768 tokens), got 1000000000000",
    ),
    "ratio-zero": (["--kv-policy", "raas", "--raas-refresh-ratio", "0"], "--raas-refresh-ratio: must be a number in (0, 1]"),
    "ratio-above-one": (["--kv-policy", "raas", "--raas-refresh-ratio", "1.5"], "--raas-refresh-ratio: must be a number in (0, 1]"),
    "ratio-not-number": (["--kv-policy", "raas", "--raas-refresh-ratio", "half"], "--raas-refresh-ratio: must be a number in (0, 1]"),
    "ratio-nan": (["--kv-policy", "raas", "--raas-refresh-ratio", "nan"], "--raas-refresh-ratio: must be a number in (0, 1]"),
    "raas-flag-with-dense": (
        ["--kv-policy", "dense", "--raas-budget", "256"],
        "--raas-budget: only allowed with --kv-policy raas",
    ),
    "raas-flag-without-policy": (["--raas-refresh-ratio", "0.25"], "--raas-refresh-ratio: only allowed with --kv-policy raas"),
    "score-without-policy": (["--raas-score", "quest"], "--raas-score: only allowed with --kv-policy raas"),
    "score-unknown": (["--kv-policy", "raas", "--raas-score", "max"], "--raas-score: must be one of auto, exact, quest"),
    "reduce-unknown": (
        ["--kv-policy", "raas", "--raas-reduce", "sum"],
        "--raas-reduce: must be one of mean-mean, max-mean, mean-max, max-max",
    ),
    "reserve-one": (["--kv-policy", "raas", "--raas-reserve", "1"], "--raas-reserve: must be a number in [0, 1)"),
    # combinations RaaS does not support yet: refused after resolution, before any child process starts
    "raas-with-fa3": (
        ["--kv-policy", "raas", "--attention-backend", "fa3", "--max-total-tokens", "4096"],
        "--kv-policy raas does not support attention backend fa3; use --attention-backend flashinfer or",
    ),
    "exact-on-flashinfer": (
        ["--kv-policy", "raas", "--raas-score", "exact", "--attention-backend", "flashinfer", "--max-total-tokens", "4096"],
        "--kv-policy raas does not support --raas-score exact on the flashinfer backend",
    ),
    "quest-on-triton": (
        ["--kv-policy", "quest", "--attention-backend", "triton", "--max-total-tokens", "4096"],
        "--kv-policy quest does not support Quest page selection on the triton/flashinfer backends",
    ),
    "raas-with-hicache": (
        ["--kv-policy", "raas", "--enable-hierarchical-cache", "--max-total-tokens", "4096"],
        "--kv-policy raas does not support the hierarchical cache; drop --enable-hierarchical-cache",
    ),
    "streaming-with-mixed-chunk": (
        ["--kv-policy", "streaming", "--enable-mixed-chunk", "--max-total-tokens", "4096"],
        "--kv-policy streaming does not support mixed chunked prefill",
    ),
}

# name -> (custom_params of the request, or a whole-body change under "body", expected message)
REQUESTS = {
    "budget-above-server": ({"raas_budget": 10**9}, "custom_params.raas_budget: must be at most"),
    "budget-astronomic": ({"raas_budget": 10**40}, "custom_params.raas_budget: must be at most"),
    "budget-one-page": ({"raas_budget": 16}, "custom_params.raas_budget: must be at least 2 pages"),
    "budget-string": ({"raas_budget": "64"}, "custom_params.raas_budget: must be a positive integer"),
    "budget-negative": ({"raas_budget": -64}, "custom_params.raas_budget: must be a positive integer"),
    "budget-float": ({"raas_budget": 64.5}, "custom_params.raas_budget: must be a positive integer"),
    "budget-bool": ({"raas_budget": True}, "custom_params.raas_budget: must be a positive integer"),
    "policy-unknown": ({"kv_policy": "lru"}, "custom_params.kv_policy: must be one of dense, raas"),
    "policy-not-string": ({"kv_policy": 3}, "custom_params.kv_policy: must be one of dense, raas"),
    "quest-without-bounds": ({"kv_policy": "quest"}, "custom_params.kv_policy: 'quest' needs page key bounds"),
    "trace-not-bool": ({"raas_trace": "yes"}, "custom_params.raas_trace: must be true or false"),
    "trace-number": ({"raas_trace": 1}, "custom_params.raas_trace: must be true or false"),
}


def render() -> str:
    """docs/bad-input.md (regenerate: `python tests/bad_inputs.py > docs/bad-input.md`)."""
    lines = [
        "# Bad input: what RaaS refuses, and how",
        "",
        "Generated from `tests/bad_inputs.py`; each row is a test. Startup rows: `python -m sglang.launch_server`",
        "exits non-zero and prints one line, `error: ` + the message (no traceback; `sgl.Engine` raises",
        "`raas_sglang.config.ConfigError` with the same text). Request rows: `/generate` and",
        "`/v1/chat/completions` answer HTTP 400 with the message, and the server keeps serving.",
        "",
        "| kind | case | input | message (prefix) |",
        "|---|---|---|---|",
    ]
    for name, (args, msg) in FLAGS.items():
        lines.append(f"| startup | {name} | `{' '.join(args)}` | `{msg}` |")
    for name, (custom, msg) in REQUESTS.items():
        lines.append(f"| request | {name} | `custom_params: {custom}` | `{msg}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
