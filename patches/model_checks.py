"""Seam: the loaded-model refusals — what SGLang actually built for this model, checked in every scheduler process
before it serves.

The startup rows (`patches/startup_checks.py`) read the model's config before any child starts; they catch what
the config says for sure (MLA, a hybrid SWA pool, linear attention). What a config cannot say for sure is decided
here, from the objects SGLang built: each `RadixAttention` layer (its sliding window, logit cap, KV scales, xai
temperature, and whether its attention module holds sink logits), the KV pool and allocator classes, and the
allocator's page size. A Qwen2 config's `sliding_window` is unused by SGLang's Qwen2 (served), a Gemma 3 layer's
window is applied (refused): only the loaded layers tell them apart.

Upstream symbols hooked (sglang 0.5.23): `sglang.srt.managers.scheduler.Scheduler.__init__`, AFTER: the model,
pool and allocator exist (`self.tp_worker.model_runner`: `.model`, `.token_to_kv_pool` with `start_layer` and
`layer_num`, `.token_to_kv_pool_allocator` with `page_size`), no request has been served. A refused server raises
`ModelRefused` there: SGLang's `run_scheduler_process` logs it ("Scheduler hit an exception") and stops the
launcher, so the launch fails with the message in its log. Under tensor parallel the ranks first compare their
RaaS settings and verdicts (`tensor_parallel.check_settings_agree`), dense servers included: nodes started with
different flags or `RAAS_*` environments stop on every rank, none waits in a collective.
The layers read must cover the KV pool's layers one to one (`pool.layer_num` layers from `pool.start_layer`): a
backend that keeps its attention outside the module tree (SGLang's Transformers backend) is refused, not taken as
windowless.
Read: `sglang.srt.layers.radix_attention.RadixAttention` (`layer_id`, `sliding_window_size`, `logit_cap`,
`k_scale_float`, `v_scale_float`, `xai_temperature_len`); any module's `sinks` / `attention_sink_bias` / `sink_k`.
"""

from __future__ import annotations

import logging

from raas_sglang.patches import tensor_parallel
from raas_sglang.patches.server_args import config_of
from raas_sglang.refusal_context import arg
from raas_sglang.refusals import AttnLayer, Loaded, VersionMismatch, loaded_refusal

logger = logging.getLogger("raas_sglang")

_SINK_ATTRS = ("sinks", "attention_sink_bias", "sink_k")


class ModelRefused(RuntimeError):
    """The loaded model (or what SGLang built for it) cannot be served exactly under the budgeted policy."""


def _scaled(value) -> bool:
    return value is not None and float(value) != 1.0


def attention_layers(model) -> tuple[AttnLayer, ...]:
    """Every `RadixAttention` in the loaded model's module tree, as `AttnLayer` facts. NOTE: sink logits are
    looked for on every module (a layer list may sit between them and the attention): one anywhere marks every
    layer, which only makes `--raas-score exact` on triton refuse."""
    from sglang.srt.layers.radix_attention import RadixAttention

    modules = list(model.modules())
    sinks = any(getattr(m, a, None) is not None for m in modules for a in _SINK_ATTRS)
    return tuple(_layer(m, sinks) for m in modules if isinstance(m, RadixAttention))


def _layer(attn, sinks: bool) -> AttnLayer:
    try:
        window = attn.sliding_window_size
        return AttnLayer(
            layer_id=int(attn.layer_id), window=int(window) if window is not None else -1,
            logit_cap=float(attn.logit_cap or 0.0), sinks=sinks,
            scaled_kv=_scaled(attn.k_scale_float) or _scaled(attn.v_scale_float),
            xai_temperature=int(attn.xai_temperature_len or -1) > 0,
        )
    except AttributeError as err:
        raise VersionMismatch(f"raas_sglang: SGLang's RadixAttention has no {err} (is this SGLang 0.5.23?); "
                              "refusing to serve without checking the model") from None


def pool_name(pool) -> str:
    """The pool's class name; a hybrid sliding-window pool reads `SWAKVPool` only when both its sub-pools are
    per-head with one KV shape (`SWAKVPool(<full>, <window>)` otherwise, which no refusal row supports). NOTE: the
    Quest page bounds hold one key shape for every layer (indexed by full slots), so window layers whose heads
    differ from the full layers' (the released Gemma 4 checkpoints: head_dim 256 vs 512) are refused."""
    name = type(pool).__name__
    full, swa = getattr(pool, "full_kv_pool", None), getattr(pool, "swa_kv_pool", None)
    if full is None and swa is None:
        return name
    parts = (type(full).__name__, type(swa).__name__)
    if parts != ("MHATokenToKVPool", "MHATokenToKVPool"):
        return f"{name}({', '.join(parts)})"
    shapes = [_kv_shape(p) for p in (full, swa)]
    return name if shapes[0] == shapes[1] else f"{name}({', '.join(f'{c}: K/V {s}' for c, s in zip(parts, shapes))})"


def _kv_shape(pool) -> str:
    """`heads x head_dim / v_head_dim` of a per-head pool."""
    return f"{pool.head_num} x {pool.head_dim}/{pool.v_head_dim}"


def loaded_view(scheduler) -> Loaded:
    """What the loaded rows read, from a scheduler whose model runner is built."""
    runner = scheduler.tp_worker.model_runner
    pool, allocator = runner.token_to_kv_pool, runner.token_to_kv_pool_allocator
    pool_layers = tuple(range(int(pool.start_layer), int(pool.start_layer) + int(pool.layer_num)))  # end: exclusive
    from sglang.srt.arg_groups.overrides import resolving_view

    args = scheduler.server_args
    view = resolving_view(args)  # the resolved backends (the record's own fields may still be unset)
    backends = {arg(view, n) for n in ("attention_backend", "decode_attention_backend",
                                       "prefill_attention_backend")} - {None}
    if not backends:  # NOTE: the backend rows would read nothing: stop rather than serve unchecked
        raise VersionMismatch("raas_sglang: SGLang resolved no attention backend (is this SGLang 0.5.23?); "
                              "refusing to serve without checking what the backend applies")
    return Loaded(config_of(args), pool_name(pool), type(allocator).__name__, int(allocator.page_size),
                  pool_layers, attention_layers(runner.model), frozenset(backends))


def scheduler_init(result, self, *args, **kwargs):
    """AFTER hook on `Scheduler.__init__`, on every server (a dense one only takes part in the ranks' check)."""
    config = config_of(self.server_args)
    loaded = loaded_view(self) if config.enabled else None
    refused = loaded_refusal(loaded) if loaded is not None else None
    # NOTE: under tensor parallel every rank exchanges its settings and verdict before any rank raises: a rank that
    # raised alone would leave the others waiting in the next collective (nodes launch with their own flags)
    tensor_parallel.check_settings_agree(config, int(self.server_args.tp_size or 1), refused)
    if refused is not None:
        logger.error("raas_sglang: %s", refused)
        raise ModelRefused(f"raas_sglang: {refused}")
    return result


HOOKS = (("sglang.srt.managers.scheduler.Scheduler.__init__", scheduler_init, "AFTER"),)
