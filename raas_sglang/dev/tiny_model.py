"""Build the tiny test model offline and deterministically.

A byte-level BPE tokenizer trained with `tokenizers` on a corpus this module writes, a random-weight Llama in
float32, and a chat template, saved with `save_pretrained` under a git-ignored cache folder. No hub access.

    python -m raas_sglang.dev.tiny_model [--out .models/tiny] [--force]

Rebuilding gives byte-identical weights (fixed seed) and the same tokenizer (fixed corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO_ROOT / ".models" / "tiny"
BUILD_VERSION = 1  # bump when anything below changes, so cached models get rebuilt

SHAPE = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA 2:1, so grouped-head code paths are exercised
    max_position_embeddings=32768,
    vocab_size=512,
)
# "bench" shape of docs/benchmarks.md: large enough that attention matters on CPU (random weights)
BENCH_SHAPE = dict(
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    max_position_embeddings=32768,
    vocab_size=512,
)
BENCH_DIR = REPO_ROOT / ".models" / "bench"
SPECIAL = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = (
    "the a of to and in is we so then let step first next check sum add multiply carry digit result answer "
    "because therefore thus hence wait but maybe try again prime number even odd total value x y z n k "
    "equation solve compute find proof lemma case assume suppose given note recall since each one two three "
    "four five six seven eight nine ten plus minus times equals square root remainder divide"
).split()


def corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """Reasoning-flavoured sentences with numbers and arithmetic, fixed by `seed`."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 16))]
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        out.append(f"{' '.join(words)}: {a} + {b} = {a + b}. {rng.choice(WORDS).capitalize()}?")
    return out


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SHAPE["vocab_size"],
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, tokenizer, shape: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # NOTE: a wide init keeps the greedy top-1 well separated from the runner-up, so float32 reorderings
        # between SGLang and transformers cannot flip an argmax; the model is random either way.
        initializer_range=0.25,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config.do_sample = False
    model.save_pretrained(out, safe_serialization=True)


def build(out: Path = DEFAULT_DIR, force: bool = False, shape: dict | None = None) -> Path:
    """Build the model into `out` unless a complete build of this version and shape is already there."""
    out = Path(out)
    shape = shape or SHAPE
    stamp = out / "raas_build.json"
    if not force and stamp.exists():
        built = json.loads(stamp.read_text())
        if built.get("version") == BUILD_VERSION and built.get("shape") == shape:
            return out
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = build_tokenizer(out)
    build_model(out, tokenizer, shape)
    stamp.write_text(json.dumps({"version": BUILD_VERSION, "shape": shape}))
    return out


def build_bench(force: bool = False) -> Path:
    """The "bench" model shape (hidden 512, 4 layers, 8 heads) used by the throughput/overhead benchmarks."""
    return build(BENCH_DIR, force, BENCH_SHAPE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--bench", action="store_true", help="build the bench shape into .models/bench")
    args = parser.parse_args(argv)
    print(build_bench(args.force) if args.bench else build(args.out, args.force))


if __name__ == "__main__":
    main()
