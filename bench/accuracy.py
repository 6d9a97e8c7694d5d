"""`python -m bench.accuracy --dataset FILE.jsonl --base-url URL --k K`: pass@1 over k samples per problem,
for a sweep of KV budgets, against a running SGLang server (started with `--kv-policy raas`, or any budgeted
policy, for budgets other than `dense`).

Dataset: JSON lines with the problem under `problem` (or `question` / `prompt`) and the reference under
`answer` (MATH500, AIME and GPQA-style files; for multiple choice put the letter in `answer`). Answers are checked
with Hugging Face's math-verify (`math_verify.parse` + `verify`: symbolic equivalence, so `\\dfrac{1}{2}`, `0.5`
and `\\boxed{1/2}` agree): by default on the whole completion (math-verify finds the last `\\boxed{}` or final
answer itself), or on what `--extract "regex:PATTERN"` captures (group 1). A reference math-verify cannot parse
(e.g. a letter) is compared as a string after stripping spaces, `$` and parentheses.

pass@1 of a problem = the fraction of its k samples that are right; the reported pass@1 is the mean over
problems. `--api chat` (default) sends the problem as one user message to `/v1/chat/completions` (the
model's chat template applies); `--api generate` sends the raw text to `/generate`.

Example, an R1-distilled model on a GPU:

    python -m sglang.launch_server --model-path deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --kv-policy raas \\
        --raas-budget 4096 --page-size 16 --port 30000
    python -m bench.accuracy --dataset math500.jsonl --base-url http://127.0.0.1:30000 --k 4 \\
        --budgets dense,1024,2048,4096 --max-tokens 16384 --json math500.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


def extractor(spec: str):
    """None (math-verify reads the whole completion) for "auto"; a regex's last group-1 capture for "regex:P"."""
    if spec == "auto":
        return None
    if spec.startswith("regex:"):
        pattern = re.compile(spec[len("regex:") :])

        def by_regex(text: str) -> str | None:
            found = pattern.findall(text)
            return found[-1] if found else None

        return by_regex
    raise SystemExit(f"error: --extract: must be 'auto' or 'regex:PATTERN', got {spec!r}")


def _plain(s: str) -> str:
    return re.sub(r"[\s$()]", "", s)


def correct(text: str, gold: str, get=None) -> bool:
    """Is the completion `text` right against the reference `gold`? (math-verify; see the module docstring).
    NOTE: main thread only: math-verify's parse/verify time out through signal.alarm (they raise in a thread)."""
    from math_verify import parse, verify

    pred = text if get is None else get(text)
    if pred is None:
        return False
    wrap = (lambda s: s) if "$" in gold else (lambda s: f"${s}$")
    want = parse(wrap(gold))
    if not want:
        return _plain(pred) == _plain(gold) if get is not None else False
    got = parse(pred if get is None else wrap(pred))
    return bool(got) and bool(verify(want, got))


def load(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        problem = row.get("problem") or row.get("question") or row.get("prompt")
        if problem is None or "answer" not in row:
            raise SystemExit(f"error: {path}:{n}: needs 'problem' (or 'question'/'prompt') and 'answer'")
        rows.append({"problem": problem, "answer": str(row["answer"])})
    return rows


def post(url: str, body: dict, timeout: float = 7200) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def sample(args, problem: str, budget: str, seed: int) -> tuple[str, int]:
    """One completion: (text, output tokens)."""
    custom = {} if budget == "dense" else {"kv_policy": args.policy, "raas_budget": int(budget)}
    if budget == "dense":
        custom = {"kv_policy": "dense"} if args.policy != "dense" else {}
    greedy = args.temperature == 0
    if args.api == "chat":
        body = {
            "model": "default", "messages": [{"role": "user", "content": problem + args.suffix}],
            "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": 1.0 if greedy else args.top_p,
            "seed": seed, "custom_params": custom,
        }
        out = post(args.base_url.rstrip("/") + "/v1/chat/completions", body)
        return out["choices"][0]["message"]["content"] or "", out["usage"]["completion_tokens"]
    params = {"max_new_tokens": args.max_tokens, "temperature": args.temperature, "custom_params": custom}
    if not greedy:
        params.update(top_p=args.top_p, sampling_seed=seed)
    out = post(args.base_url.rstrip("/") + "/generate", {"text": problem + args.suffix, "sampling_params": params})
    return out["text"], out["meta_info"]["completion_tokens"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--k", type=int, default=1, help="samples per problem")
    ap.add_argument("--budgets", default="dense", help="comma list: 'dense' and/or budgets in tokens")
    ap.add_argument("--policy", default="raas", help="the budgeted policy the budgets apply to")
    ap.add_argument("--api", choices=("chat", "generate"), default="chat")
    ap.add_argument("--extract", default="auto", help="'auto' (math-verify) or 'regex:PATTERN'")
    ap.add_argument("--suffix", default=PROMPT_SUFFIX, help="appended to every problem")
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--limit", type=int, default=0, help="first N problems only")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    get = extractor(args.extract)
    rows = load(args.dataset)[: args.limit or None]
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    for b in budgets:
        if b != "dense" and not b.isdigit():
            raise SystemExit(f"error: --budgets: each must be 'dense' or a number of tokens, got {b!r}")
    results = []
    for budget in budgets:
        jobs = [(i, s) for i in range(len(rows)) for s in range(args.k)]
        t0, done = time.monotonic(), [0]

        def one(job):
            i, s = job
            text, tokens = sample(args, rows[i]["problem"], budget, seed=1000 * i + s)
            done[0] += 1
            if done[0] % max(1, len(jobs) // 10) == 0:
                print(f"  budget {budget}: {done[0]}/{len(jobs)} samples", file=sys.stderr, flush=True)
            return i, text, tokens

        with ThreadPoolExecutor(args.workers) as pool:
            texts = list(pool.map(one, jobs))
        outs = [(i, correct(text, rows[i]["answer"], get), tokens) for i, text, tokens in texts]  # main thread
        per_problem = [statistics.mean(ok for i, ok, _ in outs if i == j) for j in range(len(rows))]
        results.append({
            "budget": budget,
            "pass_at_1": round(statistics.mean(per_problem), 4),
            "problems": len(rows),
            "k": args.k,
            "mean_output_tokens": round(statistics.mean(t for _, _, t in outs), 1),
            "seconds": round(time.monotonic() - t0, 1),
        })
        print(f"budget {budget}: pass@1 {results[-1]['pass_at_1']:.4f} over {len(rows)} problems x {args.k} samples")
    if args.json:
        args.json.write_text(json.dumps({"dataset": str(args.dataset), "policy": args.policy, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
