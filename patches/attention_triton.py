"""Seam: SGLang's triton attention backend reads only resident tokens under RaaS.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/layers/attention/triton_backend.py`, `TritonAttnBackend`):
- `__init__`, AFTER: wrap the instance's `decode_attention_fwd` (upstream binds
  `sglang.kernels.ops.attention.decode_attention.decode_attention_fwd` there; `forward_decode` calls it with
  `(q, k_buffer, v_buffer, o, kv_indptr, kv_indices, attn_logits, attn_lse, num_kv_splits, max_kv_splits,
  sm_scale, k_scale, v_scale, logit_cap=, sinks=, xai_temperature_len=, ...)` after writing the KV). With
  `--raas-score exact` and a decode forward that needs the resident set, the wrapper runs the plugin's kernel
  (`raas_sglang.kernels.sparse_decode`, via `Runtime.kernel_decode`) instead: it reads the resident pages from
  the RaaS state and `req_to_token` directly and emits each page's exact attention mass in the same pass.
- `init_forward_metadata(self, forward_batch)`, AFTER: once per forward, shared by all layers. With Quest scores
  (the default on this backend), for a decode batch with evicted pages, replace `forward_metadata.kv_indptr/
  kv_indices` (built by upstream from `req_to_token[row, :seq_len]`) with the ragged resident lists, and
  recompute `num_kv_splits` from the resident lengths. The decode kernel (`decode_attention_fwd`, also its Lean
  variant) takes every length from `kv_indptr`, so this is all it needs; positions stay logical (RoPE was
  applied before the KV write). With exact scores no list is built (the kernel needs none).
- `forward_decode` / `forward_extend`, AROUND: key folding and page scoring (`attention.layer_hooks`).

NOTE: CUDA-graph decode is refused at startup under RaaS (server_args.unsupported), so the eager path above is
the only decode path; sliding-window models are refused too (no window lists to rebuild).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from raas_sglang.patches import attention, runtime

MODULE = "sglang.srt.layers.attention.triton_backend"


def init(result, self, *args, **kwargs):
    self.decode_attention_fwd = functools.partial(decode_attention_fwd, self.decode_attention_fwd, self)
    return result


def decode_attention_fwd(orig, backend, q, k_buffer, v_buffer, o, kv_indptr, kv_indices, attn_logits, attn_lse,
                         num_kv_splits, max_kv_splits, sm_scale, k_scale=1.0, v_scale=1.0, logit_cap=0.0,
                         sinks=None, xai_temperature_len=-1, **kwargs):
    rt = runtime.get()
    if rt is None or rt.kernel_batch is None:
        return orig(q, k_buffer, v_buffer, o, kv_indptr, kv_indices, attn_logits, attn_lse, num_kv_splits,
                    max_kv_splits, sm_scale, k_scale, v_scale, logit_cap=logit_cap, sinks=sinks,
                    xai_temperature_len=xai_temperature_len, **kwargs)
    if logit_cap or sinks is not None or xai_temperature_len > 0 or k_scale != 1.0 or v_scale != 1.0:
        raise NotImplementedError(
            "raas_sglang: --raas-score exact on the triton backend does not handle logit capping, attention sinks, "
            "xai temperature or scaled KV; restart with --raas-score quest"
        )
    rt.kernel_decode(q, k_buffer, v_buffer, o, sm_scale, backend.req_to_token_pool.req_to_token)
    return o


def init_forward_metadata(result, self, forward_batch):
    rt = runtime.get()
    kernel = rt is not None and rt.config.exact_kernel
    rt = attention.begin_forward(self, forward_batch, exact=kernel, kernel=kernel)
    if rt is None or rt.table is None:
        return result
    with runtime.timed(rt, "tables"):
        md = self.forward_metadata
        kv_indptr, kv_indices = rt.table.ragged()  # [bs + 1] int32, [sum n] int64
        n = rt.table.n.to(forward_batch.seq_lens.dtype)  # [bs]
        num_kv_splits = torch.empty_like(md.num_kv_splits)  # [bs] int32
        if md.uneven_batch is not None:
            md.uneven_batch.zero_()
        self.get_num_kv_splits(num_kv_splits, n, md.uneven_batch)
        self.forward_metadata = dataclasses.replace(
            md, kv_indptr=kv_indptr, kv_indices=kv_indices, num_kv_splits=num_kv_splits
        )
    return result


_C = MODULE + ".TritonAttnBackend"
HOOKS = (
    (_C + ".__init__", init, "AFTER"),
    (_C + ".init_forward_metadata", init_forward_metadata, "AFTER"),
    *attention.layer_hooks(_C),
)
