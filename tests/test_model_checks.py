"""The loaded rows of the refusal registry on what SGLang builds: real `RadixAttention` layers (read by
`patches/model_checks.attention_layers`, the scheduler's own reader) and SGLang's pool and allocator classes.
Through the real launcher, on tiny models of each family: tests/test_model_matrix.py."""

from __future__ import annotations

import pytest
import torch

from bad_inputs import BASE_LAYER, BUILT
from raas_sglang.config import resolve
from raas_sglang.patches.model_checks import attention_layers
from raas_sglang.refusals import Loaded, loaded_refusal


class _Block(torch.nn.Module):
    """An attention block as the model files write it: a `RadixAttention` child, and optionally sink logits."""

    def __init__(self, attn, sinks: bool):
        super().__init__()
        self.attn = attn
        self.sinks = torch.nn.Parameter(torch.zeros(4), requires_grad=False) if sinks else None


def _model(case) -> torch.nn.Module:
    from sglang.srt.layers.radix_attention import RadixAttention

    return torch.nn.Sequential(*[_Block(RadixAttention(**{**BASE_LAYER, **kw}), case.sinks) for kw in case.layers])


def _classes_exist(case) -> None:
    from sglang.srt.mem_cache import memory_pool, swa_memory_pool
    from sglang.srt.mem_cache.allocator import paged, swa, token

    assert any(hasattr(m, case.pool) for m in (memory_pool, swa_memory_pool)), case.pool
    assert any(hasattr(m, case.allocator) for m in (paged, swa, token)), case.allocator


@pytest.mark.parametrize("case", sorted(BUILT))
def test_built_case(case):
    c = BUILT[case]
    _classes_exist(c)
    config = resolve(c.flags, 16)
    if c.exact_kernel:
        import dataclasses

        config = dataclasses.replace(config, exact_kernel=True)
    layers = attention_layers(_model(c))
    pool_layers = tuple(x.layer_id for x in layers) if c.pool_layers is None else c.pool_layers
    loaded = Loaded(config, c.pool, c.allocator, c.page_size, pool_layers, layers, frozenset(c.backends))
    message = loaded_refusal(loaded)
    assert message is not None and message.startswith(c.message) and "\n" not in message, message


def test_layers_must_cover_the_pool_one_to_one():
    """A layer the pool holds KV for but the module tree does not show (SGLang's Transformers backend keeps its
    attention in a plain dict), or shows twice, is refused: its window would be unknown."""
    from sglang.srt.layers.radix_attention import RadixAttention

    twice = attention_layers(torch.nn.Sequential(_Block(RadixAttention(**BASE_LAYER), False),
                                                 _Block(RadixAttention(**BASE_LAYER), False)))
    for layers, pool_layers, unread in (((), (0, 1), "0, 1"), (twice, (0,), "0"), (twice[:1], (0, 1), "1")):
        loaded = Loaded(resolve({"kv_policy": "raas"}, 16), "MHATokenToKVPool", "PagedTokenToKVPoolAllocator", 16,
                        pool_layers, layers)
        assert loaded.unread_layers == unread and "cannot read" in loaded_refusal(loaded)


def test_plain_layers_pass():
    """The layers of a plain GQA model refuse nothing under any budgeted policy; the window and cap a layer really
    applies are read from the layer."""
    from sglang.srt.layers.radix_attention import RadixAttention

    plain = torch.nn.Sequential(_Block(RadixAttention(**BASE_LAYER), False))
    layers = attention_layers(plain)
    assert [(x.window, x.logit_cap, x.sinks) for x in layers] == [(-1, 0.0, False)]
    for policy in ("raas", "streaming", "h2o", "quest", "raas+quest"):
        loaded = Loaded(resolve({"kv_policy": policy}, 16), "MHATokenToKVPool", "PagedTokenToKVPoolAllocator", 16,
                        (0,), layers)
        assert loaded_refusal(loaded) is None, policy
    windowed = attention_layers(torch.nn.Sequential(_Block(RadixAttention(**BASE_LAYER, sliding_window_size=7), True)))
    assert [(x.window, x.sinks) for x in windowed] == [(7, True)]
    dense = Loaded(resolve({}, 16), "MLATokenToKVPool", "SWATokenToKVPoolAllocator", 64, (0, 1), windowed)
    assert loaded_refusal(dense) is None  # dense is stock SGLang: never checked
