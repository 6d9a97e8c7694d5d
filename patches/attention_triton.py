"""Seam: SGLang's triton attention backend reads only resident tokens under RaaS.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/layers/attention/triton_backend.py`, `TritonAttnBackend`):
- `__init__`, AFTER: wrap the instance's `decode_attention_fwd` (upstream binds
  `sglang.kernels.ops.attention.decode_attention.decode_attention_fwd` there; `forward_decode` calls it with
  `(q, k_buffer, v_buffer, o, kv_indptr, kv_indices, attn_logits, attn_lse, num_kv_splits, max_kv_splits,
  sm_scale, k_scale, v_scale, logit_cap=, sinks=, xai_temperature_len=, ...)` after writing the KV). With
  `--raas-score exact` and a decode forward that needs the resident set, the wrapper runs the plugin's kernel
  (`raas_sglang.kernels.sparse_decode`, via `kernel_decode` below) instead: it reads the resident pages from
  the RaaS state and `req_to_token` directly and emits each page's exact attention mass in the same pass.
- `init_forward_metadata(self, forward_batch)`, AFTER: once per forward, shared by all layers. With Quest scores
  (the default on this backend), for a decode batch with evicted pages, replace `forward_metadata.kv_indptr/
  kv_indices` (built by upstream from `req_to_token[row, :seq_len]`) with the ragged resident lists, and
  recompute `num_kv_splits` from the resident lengths. The decode kernel (`decode_attention_fwd`, also its Lean
  variant) takes every length from `kv_indptr`, so this is all it needs; positions stay logical (RoPE was
  applied before the KV write). With exact scores no list is built (the kernel needs none). A model with
  sliding-window layers (`self.sliding_window_size` > 0; one pool, `--disable-hybrid-swa-memory` or Gemma 3) has
  `window_kv_indptr/window_kv_indices` too, built upstream by `update_sliding_window_buffer` from the row's last
  `sliding_window_size` entries (a hole there would read the padding slot): replaced by the resident slots at
  positions >= seq_len - sliding_window_size. NOTE: that is upstream's decode window, one token shorter than its
  extend's and torch_native's (the query at p attends [p - window + 1, p]); RaaS keeps it, to stay identical to a
  dense request on the same server. `forward_decode` passes `num_kv_splits` to window layers too.
- `forward_decode` / `forward_extend`, AROUND: key folding and Quest page scoring (`attention.layer_hooks`).

NOTE: CUDA-graph decode is refused at startup under RaaS (a startup refusal), so the eager path above is
the only decode path. On the hybrid sliding-window pool (`SWAKVPool`, gpt-oss's default) window layers keep their
KV in their own pool: the window lists hold the SWA twins of the resident slots (`full_to_swa_index_mapping`;
every slot inside a window has a live twin: SGLang's sweep keeps at least the window behind the tail).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from raas_sglang.patches import attention, runtime, swa_pool
from raas_sglang.step import DecodeStep

MODULE = "sglang.srt.layers.attention.triton_backend"


def init(result, self, *args, **kwargs):
    self.decode_attention_fwd = functools.partial(decode_attention_fwd, self.decode_attention_fwd, self)
    return result


def decode_attention_fwd(orig, backend, q, k_buffer, v_buffer, o, kv_indptr, kv_indices, attn_logits, attn_lse,
                         num_kv_splits, max_kv_splits, sm_scale, k_scale=1.0, v_scale=1.0, logit_cap=0.0,
                         sinks=None, xai_temperature_len=-1, **kwargs):
    rt = attention._active()
    fwd = rt.forward if rt is not None else None
    if fwd is None or fwd.window is None:
        return orig(q, k_buffer, v_buffer, o, kv_indptr, kv_indices, attn_logits, attn_lse, num_kv_splits,
                    max_kv_splits, sm_scale, k_scale, v_scale, logit_cap=logit_cap, sinks=sinks,
                    xai_temperature_len=xai_temperature_len, **kwargs)
    if logit_cap or sinks is not None or xai_temperature_len > 0 or k_scale != 1.0 or v_scale != 1.0:
        raise NotImplementedError(
            "raas_sglang: --raas-score exact on the triton backend does not handle logit capping, attention sinks, "
            "xai temperature or scaled KV; restart with --raas-score quest"
        )
    kernel_decode(rt, fwd, q, k_buffer, v_buffer, o, sm_scale, backend.req_to_token_pool.req_to_token)
    return o


def kernel_decode(rt: runtime.Runtime, fwd: DecodeStep, q: torch.Tensor, k_buf: torch.Tensor, v_buf: torch.Tensor,
                  o: torch.Tensor, sm_scale: float, req_to_token: torch.Tensor) -> None:
    """One layer's decode attention over the resident pages, read straight from the state (no index list), into
    `o` [bs, q_heads, dv]; the layer's exact page mass is folded into the forward's scores when it scores.
    q [bs, q_heads, dk]; k_buf [num_slots, kv_heads, dk], v_buf [num_slots, kv_heads, dv] (the layer's pool; for
    MLA one latent head, dk = kv_lora_rank + rope, v_buf the view of its first dv = kv_lora_rank values)."""
    from raas_sglang.kernels.sparse_decode import Workspace, default_splits, sparse_decode

    state, (bs, heads), d = rt.state, q.shape[:2], o.shape[2]
    rt.totals.kernel_layer_calls += 1
    splits = default_splits(bs, k_buf.shape[1], q.device)
    if rt.kernel_ws is None or not rt.kernel_ws.fits(bs, heads, d, state.L, splits):
        rt.kernel_ws = Workspace.make(bs, heads, d, state.L, splits, q.device)
    scores = fwd.scores
    if scores is not None:
        mass, add = scores.kernel_target()  # [bs, L] float32
    else:
        mass, add = torch.zeros((bs, state.L), dtype=torch.float32, device=q.device), False
    sparse_decode(q, k_buf, v_buf, req_to_token, fwd.rows, fwd.seq_lens, state.pin_len, state.pages, sm_scale,
                  rt.config.page_size, out=o, mass=mass, accumulate=add, heads_reduce=scores.heads if scores else "mean",
                  workspace=rt.kernel_ws, splits=splits, window=fwd.window)
    if scores is not None:
        scores.kernel_done(mass, add)
        rt.layer_done(fwd, rt.layer_of(k_buf))


def init_forward_metadata(result, self, forward_batch):
    fwd = attention.begin_forward(self, forward_batch, attention.Backend.TRITON)
    if fwd is None or fwd.table is None:
        return result
    rt = runtime.get()
    with runtime.timed(rt, "tables"):
        md = self.forward_metadata
        kv_indptr, kv_indices = fwd.table.ragged()  # [bs + 1] int32, [sum n] int64
        n = fwd.table.n.to(forward_batch.seq_lens.dtype)  # [bs]
        num_kv_splits = torch.empty_like(md.num_kv_splits)  # [bs] int32
        if md.uneven_batch is not None:
            md.uneven_batch.zero_()
        self.get_num_kv_splits(num_kv_splits, n, md.uneven_batch)
        window = {}
        if self.sliding_window_size is not None and self.sliding_window_size > 0:
            width = int(self.sliding_window_size)  # NOTE: upstream's decode window is the last `width` tokens
            # NOTE: on a hybrid pool window layers read their own pool: the SWA twins of the slots
            mapping = swa_pool.window_mapping(getattr(self, "token_to_kv_pool", None))
            w_indptr, w_indices = fwd.table.window_ragged(fwd.seq_lens - width, width, mapping)  # [bs + 1], [sum m]
            window = dict(window_kv_indptr=w_indptr, window_kv_indices=w_indices)
        self.forward_metadata = dataclasses.replace(
            md, kv_indptr=kv_indptr, kv_indices=kv_indices, num_kv_splits=num_kv_splits, **window
        )
    return result


_C = MODULE + ".TritonAttnBackend"
HOOKS = (
    (_C + ".__init__", init, "AFTER"),
    (_C + ".init_forward_metadata", init_forward_metadata, "AFTER"),
    *attention.layer_hooks(_C, attention.Backend.TRITON),
)
