"""Seam: an MLA model (DeepSeek V2/V3/R1, Kimi K2) on the torch_native backend prefills through the absorbed path.

SGLang's `AttentionBackendRegistry` has no torch_native handler, so torch_native falls back to triton's: an extend
with no cached prefix runs DeepSeek's MHA prefill (`attn_mha`: per-head K/V rebuilt from the latent through
`kv_b_proj`, `save_kv_cache=False`). torch_native's `forward_extend` ignores the K/V it is handed and reads the pool
instead (one latent head of kv_lora_rank + rope), so stock SGLang fails at the first prefill (a bmm shape error).
Under a budgeted `--kv-policy`, every extend of such a model on torch_native runs the absorbed path
(`attn_mqa`: q_nope·W_UK against the one-head latent rows, V = their first kv_lora_rank values, then W_UV), the
path every decode and every cached-prefix extend already takes: the same logits (W_UK is folded into the query
instead of the keys), written and read from the latent pool as decode reads it. NOTE: this is what SGLang itself
does under `--enable-deterministic-inference` on triton (`_dispatch_mla_subtype`).

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/models/deepseek_v2.py`):
- `DeepseekV2AttentionMLA.dispatch_attn_forward_method(self, forward_batch)`, AROUND: when the backend it resolved
  (`self.current_attention_backend`, set by that call) is torch_native, return
  `deepseek_common.attention_backend_handler._dispatch_mla_subtype(self, forward_batch)` (the absorbed `MLA`, or
  SGLang's fused-rope CPU variant of it on an AMX CPU: not run here, the test machine has no AMX), mapped through
  `resolve_rocm_forward_method` as upstream's dispatch maps its own. A server whose `--kv-policy` is dense is left
  as stock (its torch_native still fails at the first MLA prefill).
"""

from __future__ import annotations

import functools

from raas_sglang.patches import runtime

MODULE = "sglang.srt.models.deepseek_v2"
TORCH_NATIVE = "torch_native"


@functools.cache
def _upstream():
    """(`_dispatch_mla_subtype`, `resolve_rocm_forward_method`), imported once (the hook runs per layer and forward;
    the module is imported only by a DeepSeek server)."""
    from sglang.srt.models.deepseek_common import attention_backend_handler as h

    return h._dispatch_mla_subtype, h.resolve_rocm_forward_method


def dispatch_attn_forward_method(orig, self, forward_batch):
    """AROUND hook: the absorbed MLA path for every forward of an MLA layer on torch_native under RaaS."""
    method = orig(self, forward_batch)  # NOTE: first: it stamps `current_attention_backend` for this forward
    if getattr(self, "current_attention_backend", None) != TORCH_NATIVE or runtime.get() is None:
        return method
    dispatch_mla, resolve_rocm = _upstream()
    return resolve_rocm(dispatch_mla(self, forward_batch))


HOOKS = ((MODULE + ".DeepseekV2AttentionMLA.dispatch_attn_forward_method", dispatch_attn_forward_method, "AROUND"),)
