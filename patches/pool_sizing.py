"""Seam: the KV pool is sized with the Quest page key bounds counted, so the plugin allocates no memory SGLang's
sizing did not know about.

A server that keeps page key bounds (`PageKeyBounds`: float32 max and min of the keys per page, per KV head, per
layer; kept by the selecting policies, `--raas-score quest`, and wherever pages are scored by Quest estimates)
allocates them after SGLang sized the KV pool. Here the pool is shrunk by their size at sizing time: with T tokens
decided by SGLang (profiled, or `--max-total-tokens`), the pool gets the largest whole number of pages T' with

    T' * cell + bounds(T') <= T * cell,   bounds(T') = (T' / page_size + 2) * bytes_per_page

(cell = SGLang's KV bytes per token for this model, one latent row per layer for MLA; the bounds hold one entry
per page of the pool buffer,
which has one padding page, plus one spare). So pool + bounds fit what the pool alone would have taken.
`/get_server_info` reports `key_bounds_bytes` (the bounds' tensors, once allocated) and
`pool_tokens_before_bounds` (T).

Upstream symbols hooked (sglang 0.5.23): `sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.
config_from_budget(self, budget_bytes, *, cap_tokens=None)`, AROUND: both sizing paths (profiled and capped) end
there (a call with `cap_tokens`, SGLang's later re-size of a sized pool, is left alone). Read: `self.use_mla_backend`, `self.model_config` (`get_num_kv_heads(tp, dcp)`, `head_dim`, `v_head_dim`;
MLA: `kv_lora_rank`, `qk_rope_head_dim`), `self.layer_info.
num_effective_layers`, `self.kv_cache_dtype`; `get_parallel().attn_tp_size`/`attn_dcp_size`;
`sglang.srt.model_executor.pool_configurator.create_memory_pool_configurator(kvc).
calculate_pool_sizes_from_max_tokens(tokens, page_size)`; `sglang.srt.runtime_context.attention_backends()`.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from raas_sglang.patches import runtime

logger = logging.getLogger("raas_sglang")


class PoolPlan(NamedTuple):
    """What the pool was sized for: SGLang's token count, the one kept, and the bounds' bytes per page."""

    tokens_before: int
    tokens: int
    bounds_bytes_per_page: int
    cell_bytes: int


def tokens_with_bounds(tokens: int, cell: int, bounds_per_page: int, page_size: int) -> int:
    """The largest whole-page T' with T' * cell + (T' / ps + 2) * bounds_per_page <= tokens * cell."""
    budget = tokens * cell - 2 * bounds_per_page
    pages = max(0, budget // (page_size * cell + bounds_per_page))
    return pages * page_size


def _keeps_bounds(rt: runtime.Runtime) -> bool:
    """Whether this server keeps Quest page key bounds. NOTE: read from the resolved backends
    (`runtime_context.attention_backends()`: the raw args hold None when SGLang picks the backend itself)."""
    from sglang.srt.runtime_context import attention_backends

    from raas_sglang.patches.attention import Backend

    name = attention_backends()[1]  # (prefill, decode)
    try:
        return Backend(name).needs_bounds(rt.config)
    except ValueError:
        return False  # a backend RaaS refuses at startup


def config_from_budget(orig, self, budget_bytes, *args, **kwargs):
    config = orig(self, budget_bytes, *args, **kwargs)
    rt = runtime.get()
    if rt is None or not _keeps_bounds(rt) or kwargs.get("cap_tokens") is not None:
        return config  # NOTE: a capped call re-sizes an already sized (and shrunk) pool: shrink only once
    from sglang.srt.model_executor.pool_configurator import create_memory_pool_configurator
    from sglang.srt.runtime_context import get_parallel

    mc, ps = self.model_config, rt.config.page_size
    layers = self.layer_info.num_effective_layers
    elt = torch._utils._element_size(self.kv_cache_dtype)
    if self.use_mla_backend:  # MLATokenToKVPool: one latent row per token and layer (V is a view of it)
        heads, key_dim = 1, mc.kv_lora_rank + mc.qk_rope_head_dim
        cell = key_dim * layers * elt
    else:
        par = get_parallel()
        heads, key_dim = mc.get_num_kv_heads(par.attn_tp_size, par.attn_dcp_size), mc.head_dim
        cell = heads * (mc.head_dim + mc.v_head_dim) * layers * elt
    configurator = create_memory_pool_configurator(self)
    if type(configurator).__name__ == "HybridSWAPoolConfigurator":
        # NOTE: a token less in the full pool is `swa_full_tokens_ratio` less in the window pool: SGLang's own
        # bytes per full-pool token (full layers + ratio * window layers), not every layer at full price
        cell = int(configurator._cell_size)
    per_page = layers * heads * 2 * key_dim * 4  # PageKeyBounds: float32 [kv_heads, 2 * key_dim] per layer
    before = int(config.max_total_num_tokens)
    kept = tokens_with_bounds(before, cell, per_page, ps)
    rt.pool_plan = PoolPlan(before, kept, per_page, cell)
    if kept < before:
        logger.warning("raas_sglang: KV pool %d -> %d tokens to hold the Quest page key bounds (%d bytes per page)",
                       before, kept, per_page)
        config = configurator.calculate_pool_sizes_from_max_tokens(kept, ps)
    return config


HOOKS = (
    ("sglang.srt.mem_cache.kv_cache_configurator.KVCacheConfigurator.config_from_budget", config_from_budget, "AROUND"),
)
