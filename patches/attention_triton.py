"""Seam: SGLang's triton attention backend reads only resident tokens under RaaS.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/layers/attention/triton_backend.py`, `TritonAttnBackend`):
- `init_forward_metadata(self, forward_batch)`, AFTER: once per forward, shared by all layers. For a decode batch
  with evicted pages, replace `forward_metadata.kv_indptr/kv_indices` (built by upstream from
  `req_to_token[row, :seq_len]`) with the ragged resident lists, and recompute `num_kv_splits` from the resident
  lengths. The decode kernel (`decode_attention_fwd`, also its Lean variant) takes every length from `kv_indptr`,
  so this is all it needs; positions stay logical (RoPE was applied before the KV write).
- `forward_decode` / `forward_extend`, AROUND: key folding and page scoring (`attention.layer_hooks`).

NOTE: CUDA-graph decode is refused at startup under RaaS (server_args.unsupported), so the eager path above is
the only decode path; sliding-window models are refused too (no window lists to rebuild).
"""

from __future__ import annotations

import dataclasses

import torch

from raas_sglang.patches import attention, runtime

MODULE = "sglang.srt.layers.attention.triton_backend"


def init_forward_metadata(result, self, forward_batch):
    rt = attention.begin_forward(self, forward_batch)
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
HOOKS = ((_C + ".init_forward_metadata", init_forward_metadata, "AFTER"), *attention.layer_hooks(_C))
