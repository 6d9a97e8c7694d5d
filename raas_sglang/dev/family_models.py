"""Tiny random-weight models of the families SGLang serves, built offline with transformers' own config classes
(the model matrix of docs/models.md; tests/test_model_matrix.py launches each through the real launcher).

    python -m raas_sglang.dev.family_models [FAMILY ...]      # into .models/family/<name>

Each model has 2 layers (gemma3: 6, 5 sliding + 1 full; gemma4: 6, 2 of 3 sliding), hidden 64, 4 query heads,
float32, vocab 512, and the tiny model's tokenizer (`raas_sglang.dev.tiny_model`). A family's entry gives its
config class, the fields that make it that family, and the `config.json` extras real checkpoints carry that SGLang
reads.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from raas_sglang.dev import tiny_model

ROOT = tiny_model.REPO_ROOT / ".models" / "family"
BUILD_VERSION = 1
BASE = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, vocab_size=512)


# a tiny text-only Gemma 4 (one head dim for both layer kinds: SGLang 0.5.23 cannot parse transformers' per-layer
# config of a `gemma4_text` model), and what SGLang's config parser adds for a multimodal `gemma4` checkpoint
_GEMMA4 = dict(num_hidden_layers=6, head_dim=16, global_head_dim=16, sliding_window=32, tie_word_embeddings=True,
               hidden_size_per_layer_input=16, vocab_size_per_layer_input=512,
               layer_types=(["sliding_attention"] * 2 + ["full_attention"]) * 2)
_GEMMA4_EXTRAS = dict(swa_head_dim=16, swa_v_head_dim=16, swa_num_key_value_heads=2, v_head_dim=16)


class Family(NamedTuple):
    config_class: str  # a transformers config class
    model_class: str  # its causal-LM class
    fields: dict[str, Any]  # beyond BASE
    extras: dict[str, Any] = {}  # written into config.json after save (what SGLang reads that transformers lacks)
    bf16: tuple[str, ...] = ()  # parameters (by name suffix) SGLang keeps in bfloat16: their values rounded to it


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM",
                    # a Qwen2 config names a window it does not use: SGLang's Qwen2 attends all tokens
                    dict(sliding_window=64, use_sliding_window=False)),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    "qwen3-moe": Family("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                        dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
                             decoder_sparse_step=1)),
    "mistral": Family("MistralConfig", "MistralForCausalLM", dict(sliding_window=64, head_dim=16)),
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM",
                     dict(head_dim=16, sliding_window=32, query_pre_attn_scalar=16),
                     extras=dict(hidden_act="gelu_pytorch_tanh")),  # SGLang's Gemma 2 reads the pre-v5 name
    # NOTE: tied, as every Gemma 3 checkpoint: SGLang's Gemma 3 always reads logits through the embeddings
    "gemma3": Family("Gemma3TextConfig", "Gemma3ForCausalLM",
                     dict(num_hidden_layers=6, head_dim=16, sliding_window=32, query_pre_attn_scalar=16,
                          tie_word_embeddings=True)),
    # Gemma 4: SGLang builds its hybrid SWA pool (window layers in their own pool), unlike Gemma 3's; its full
    # layers read V = K (`attention_k_eq_v`), and per-layer inputs feed every layer
    "gemma4": Family("Gemma4TextConfig", "Gemma4ForCausalLM", dict(**_GEMMA4, attention_k_eq_v=True),
                     extras=_GEMMA4_EXTRAS),
    # its on-device variants share KV between layers (`num_kv_shared_layers`): refused once loaded
    "gemma4-kv-shared": Family("Gemma4TextConfig", "Gemma4ForCausalLM", dict(**_GEMMA4, num_kv_shared_layers=2),
                               extras=_GEMMA4_EXTRAS),
    "olmo2": Family("Olmo2Config", "Olmo2ForCausalLM", {}),
    "deepseek-v2": Family("DeepseekV2Config", "DeepseekV2ForCausalLM",
                          dict(num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=256, qk_nope_head_dim=16,
                               qk_rope_head_dim=32,
                               v_head_dim=16, first_k_dense_replace=2, n_routed_experts=4, num_experts_per_tok=2,
                               moe_intermediate_size=64,
                               rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0,
                                                    original_max_position_embeddings=4096, beta_fast=32,
                                                    beta_slow=1, mscale=1.0, mscale_all_dim=1.0)),
                          extras=dict(moe_layer_freq=1)),
    "deepseek-v3": Family("DeepseekV3Config", "DeepseekV3ForCausalLM",
                          dict(num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=256, qk_nope_head_dim=16,
                               qk_rope_head_dim=32, v_head_dim=16, first_k_dense_replace=1, n_routed_experts=4,
                               num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
                               moe_intermediate_size=64,
                               rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=40.0,
                                                    original_max_position_embeddings=4096, beta_fast=32,
                                                    beta_slow=1, mscale=1.0, mscale_all_dim=1.0)),
                          extras=dict(moe_layer_freq=1, topk_method="noaux_tc", scoring_func="sigmoid")),
    # NOTE: SGLang holds gpt-oss's attention sinks in bfloat16 on every backend but trtllm_mha (as the checkpoints
    # ship them): rounded here, a float32 server computes what transformers does
    "gpt-oss": Family("GptOssConfig", "GptOssForCausalLM",
                      dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=32,
                           layer_types=["sliding_attention", "full_attention"]), bf16=("self_attn.sinks",)),
    "llama4": Family("Llama4TextConfig", "Llama4ForCausalLM",
                     dict(head_dim=16, attention_chunk_size=64, num_local_experts=2, num_experts_per_tok=1,
                          intermediate_size_mlp=176, interleave_moe_layer_step=2)),
    "qwen3-next": Family("Qwen3NextConfig", "Qwen3NextForCausalLM",
                         dict(head_dim=16, layer_types=["linear_attention", "full_attention"],
                              linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16,
                              linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2,
                              moe_intermediate_size=64, shared_expert_intermediate_size=64)),
}


def build(name: str, force: bool = False) -> Path:
    """The model of family `name` in .models/family/<name> (built unless a build of this version is there)."""
    family = FAMILIES[name]
    out = ROOT / name
    stamp = out / "raas_build.json"
    want = {"version": BUILD_VERSION, "family": family._asdict()}
    if not force and stamp.exists() and json.loads(stamp.read_text()) == json.loads(json.dumps(want)):
        return out
    import torch
    import transformers
    from transformers import AutoTokenizer

    tiny = tiny_model.build()
    tok = AutoTokenizer.from_pretrained(tiny)
    if out.exists():
        shutil.rmtree(out)
    config = getattr(transformers, family.config_class)(
        **{"tie_word_embeddings": False, **BASE, **family.fields}, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.25, torch_dtype="float32")
    torch.manual_seed(0)
    model = getattr(transformers, family.model_class)(config).to(torch.float32).eval()
    for name, param in model.named_parameters():
        if name.endswith(family.bf16):
            param.data = param.data.to(torch.bfloat16).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    if family.extras:
        cfg_path = out / "config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), **family.extras}, indent=2))
    stamp.write_text(json.dumps(want))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--force", action="store_true")
    for name in parser.parse_args().families:
        print(build(name, force=False))


if __name__ == "__main__":
    main()
