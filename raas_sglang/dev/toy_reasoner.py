"""Train the toy reasoner: a small Llama that solves `raas_sglang.dev.toy_task` problems step by step, on CPU.

    python -m raas_sglang.dev.toy_reasoner [--minutes 35] [--out models/toy-reasoner]

Character-level tokenizer (`tokenizers` WordLevel, one token per character), LlamaForCausalLM (4 layers, hidden
128, 4 heads / 2 KV heads), float32, AdamW. What made this train on 2 cores (see docs/benchmarks.md): the trace
writes every looked-up value explicitly; a curriculum lengthens the countdown from 20 to 125 steps over the first
60% of the time; milestone and answer tokens weigh 10x in the loss. Ends with a greedy evaluation of held-out
problems (`EVAL_SEED`) and writes `train_log.json` next to the weights. Fixed seeds; the result is committed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

from raas_sglang.dev import toy_task

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "models" / "toy-reasoner"
EVAL_SEED = 7  # held-out problems: training problems come from seeds >= 1000
SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)
ANSWER_WEIGHT = 10.0


def build_tokenizer(out: Path | None = None):
    """One token per character of `toy_task.CHARS`, plus <pad>, <s>, </s>."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate([*toy_task.SPECIAL, *toy_task.CHARS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if out is not None:
        fast.save_pretrained(out)
    return fast


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(text))


def sample(tokenizer, rng: random.Random, max_steps: int):
    """(ids, weights) of one training sequence: <s> prompt trace </s>; loss weights 0 on the prompt."""
    kind = rng.choice(list(toy_task.KINDS))
    p = toy_task.make(rng, kind, rng.randint(10, max_steps))
    prompt = [tokenizer.bos_token_id, *encode(tokenizer, p.prompt)]
    trace = [*encode(tokenizer, p.trace), tokenizer.eos_token_id]
    weights = [0.0] * len(prompt) + [1.0] * len(trace)
    text = p.trace
    for i, ch in enumerate(text):  # milestone digits and the answer weigh more
        if ch in "FR" and i + 1 < len(text) or ch == "=":
            for j in range(i + 1, min(i + 3, len(text))):
                weights[len(prompt) + j] = ANSWER_WEIGHT
    return prompt + trace, weights


def batch(tokenizer, rng: random.Random, size: int, max_steps: int):
    import torch

    seqs = [sample(tokenizer, rng, max_steps) for _ in range(size)]
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((size, width), tokenizer.pad_token_id, dtype=torch.long)
    w = torch.zeros((size, width))
    for i, (s, ws) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        w[i, : len(ws)] = torch.tensor(ws)
    return ids, w


def curriculum(frac: float) -> int:
    """Longest countdown sampled at `frac` of the training time."""
    return int(20 + (125 - 20) * min(1.0, frac / 0.6))


def greedy(model, tokenizer, prompts: list[str], max_new: int = 800) -> list[str]:
    """Batched greedy decoding of equal-length prompts (all toy prompts have the same length)."""
    import torch

    ids = torch.tensor([[tokenizer.bos_token_id, *encode(tokenizer, p)] for p in prompts])
    out = torch.empty((len(prompts), 0), dtype=torch.long)
    done = torch.zeros(len(prompts), dtype=torch.bool)
    past, step_in = None, ids
    with torch.no_grad():
        for _ in range(max_new):
            res = model(input_ids=step_in, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = res.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, tokenizer.pad_token_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == tokenizer.eos_token_id
            if bool(done.all()):
                break
            step_in = nxt[:, None]
    texts = []
    for row in out.tolist():
        row = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
        texts.append("".join(tokenizer.convert_ids_to_tokens(row)))
    return texts


def evaluate(model, tokenizer, n: int = 60, seed: int = EVAL_SEED, batch_size: int = 30) -> dict:
    """Greedy accuracy of the final answer on held-out problems, per kind and pooled."""
    probs = toy_task.problems(seed, n)
    right: dict[str, list[int]] = {k: [] for k in toy_task.KINDS}
    exact = 0
    for i in range(0, n, batch_size):
        chunk = probs[i : i + batch_size]
        for p, text in zip(chunk, greedy(model, tokenizer, [p.prompt for p in chunk])):
            right[p.kind].append(int(toy_task.extract(text) == p.answer))
            exact += int(text == p.trace)
    flat = [x for v in right.values() for x in v]
    return {
        "accuracy": sum(flat) / len(flat),
        "by_kind": {k: sum(v) / len(v) for k, v in right.items()},
        "exact_traces": exact / n,
        "n": n,
    }


def train(out: Path, minutes: float, seed: int = 0, batch_size: int = 8, lr: float = 1e-3) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out)
    config = LlamaConfig(
        **SHAPE, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, rope_theta=10000.0, tie_word_embeddings=False, torch_dtype="float32",
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(1000 + seed)
    budget = minutes * 60.0
    t0 = time.monotonic()
    step, tokens, log = 0, 0, []
    while (elapsed := time.monotonic() - t0) < budget:
        frac = elapsed / budget
        for group in opt.param_groups:  # warmup, then cosine to lr/10
            group["lr"] = lr * min(1.0, (step + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * frac))
        ids, w = batch(tokenizer, rng, batch_size, curriculum(frac))
        logits = model(input_ids=ids).logits[:, :-1]
        loss_tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (loss_tok * w[:, 1:]).sum() / w[:, 1:].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += int((ids != tokenizer.pad_token_id).sum())
        if step % 50 == 0:
            rate = tokens / (time.monotonic() - t0)
            log.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": round(loss.item(), 4),
                        "max_steps": curriculum(frac)})
            print(f"[{elapsed / 60:5.1f} min] step {step} loss {loss.item():.4f} "
                  f"countdown <= {curriculum(frac)} ({rate:.0f} tokens/s)", flush=True)
    model.eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)
    print("evaluating held-out problems (greedy) ...", flush=True)
    result = evaluate(model, tokenizer)
    record = {"shape": SHAPE, "minutes": minutes, "steps": step, "tokens": tokens, "eval": result, "log": log}
    (out / "train_log.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    ap.add_argument("--minutes", type=float, default=35.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    record = train(args.out, args.minutes, args.seed)
    print(json.dumps(record["eval"], indent=1))


if __name__ == "__main__":
    main()
