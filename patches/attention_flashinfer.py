"""Seam: SGLang's flashinfer attention backend plans decode over resident tokens only under RaaS.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/layers/attention/flashinfer_backend.py`):
- `FlashInferAttnBackend.init_forward_metadata(self, forward_batch)`, BEFORE: build the resident set of the
  decode batch (`attention.begin_forward`) before upstream plans its decode wrappers.
- `FlashInferIndicesUpdaterDecode.call_begin_forward(self, wrapper, paged_kernel_lens, paged_kernel_lens_sum,
  kv_indptr, kv_start_idx, spec_info, seq_lens_cpu, ...)`, AROUND: hand upstream the resident lists through the
  `spec_info.kv_indptr/kv_indices` branch it already has (a plan with given lists), with the resident lengths,
  so the wrapper's one plan per step (page size 1, token slots) is shared by all layers.
- `FlashInferAttnBackend.forward_decode` / `forward_extend`, AROUND: key folding and page scoring.

NOTE: applies to the full-attention wrapper only (sliding-window / cross-attention models are refused at
startup, and so are CUDA graphs, whose fixed index buffer this would have to fill in place).
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import torch

from raas_sglang.patches import attention

MODULE = "sglang.srt.layers.attention.flashinfer_backend"


class GivenLists(NamedTuple):
    """Duck-types the two fields of `spec_info` that `call_begin_forward` reads when lists are given."""

    kv_indptr: torch.Tensor  # [bs + 1] int32
    kv_indices: torch.Tensor  # [sum n] int32


def init_forward_metadata(self, forward_batch):
    attention.begin_forward(self, forward_batch, attention.Backend.FLASHINFER)


_SIGNATURES: dict = {}


def call_begin_forward(orig, self, *args, **kwargs):
    rt = attention._active()
    fwd = rt.forward if rt is not None else None
    if fwd is None or fwd.table is None:
        return orig(self, *args, **kwargs)
    sig = _SIGNATURES.setdefault(orig, inspect.signature(orig))
    call = sig.bind(self, *args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    if a["spec_info"] is not None or a["kv_start_idx"] is not None or a["use_sliding_window_kv_pool"]:
        return orig(self, *args, **kwargs)
    table = fwd.table
    bs = len(table.n)
    kv_indptr, kv_indices = table.ragged()  # [bs + 1] int32, [sum n] int64
    buf = a["kv_indptr"]
    buf[: bs + 1] = kv_indptr.to(buf.dtype)
    a["kv_indptr"] = buf[: bs + 1]
    a["spec_info"] = GivenLists(a["kv_indptr"], kv_indices.to(torch.int32))
    a["paged_kernel_lens"] = table.n.to(a["paged_kernel_lens"].dtype)
    n_cpu = torch.from_numpy(table.n_host) if table.n_exact else table.n.cpu()  # [bs] (a sync only if not exact)
    a["paged_kernel_lens_sum"] = int(n_cpu.sum())
    if a["seq_lens_cpu"] is not None:
        a["seq_lens_cpu"] = n_cpu.to(a["seq_lens_cpu"].dtype)
    return orig(*call.args, **call.kwargs)


_B = MODULE + ".FlashInferAttnBackend"
HOOKS = (
    (_B + ".init_forward_metadata", init_forward_metadata, "BEFORE"),
    (MODULE + ".FlashInferIndicesUpdaterDecode.call_begin_forward", call_begin_forward, "AROUND"),
    *attention.layer_hooks(_B, attention.Backend.FLASHINFER),
)
