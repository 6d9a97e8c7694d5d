"""Seam: the extend attention of a retracted request resuming with holes (`patches/reprefill.py`): each recomputed
token attends to its row without the hole entries, so causal attention = causal minus the evicted pages.

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_extend`, AROUND:
  rows with holes attend to their row without the hole entries (compacted; queries stay at the tail).
- `sglang.srt.layers.attention.triton_backend.TritonAttnBackend.init_forward_metadata`, AFTER (extend only): the
  same, by dropping hole entries from the prefix `kv_indices` (registered with the triton seam's hooks on that
  target, in one call: `patches/__init__.py`).
"""

from __future__ import annotations

import dataclasses

import torch

from raas_sglang.patches import runtime


def _holey_rows(rt: runtime.Runtime | None, req_pool_indices: torch.Tensor) -> bool:
    if rt is None or not rt.reprefilling:
        return False
    return any(r in rt.reprefilling for r in req_pool_indices.tolist())


def compact_rows(req_to_token: torch.Tensor, rows: list[int], seq_lens: list[int], holey: set[int], ps: int):
    """A [bs, max n'] table of each row's slots without its hole entries (rows in `holey`; others as they are),
    and the new lengths [bs]. NOTE: hole entries point at the padding page 0, which the allocator never hands out,
    so `slot < ps` marks exactly the holes."""
    lists = []
    for row, n in zip(rows, seq_lens):
        toks = req_to_token[row, :n]  # [n]
        lists.append(toks[toks >= ps] if row in holey else toks)
    lens = [len(t) for t in lists]
    table = torch.zeros((len(lists), max(lens)), dtype=req_to_token.dtype, device=req_to_token.device)
    for i, t in enumerate(lists):
        table[i, : len(t)] = t
    return table, lens


def drop_holes(kv_indptr: torch.Tensor, kv_indices: torch.Tensor, ps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prefix slot lists without hole entries (slot < ps). kv_indptr [bs + 1], kv_indices [>= indptr[-1]]."""
    bs = kv_indptr.numel() - 1
    idx = kv_indices[: int(kv_indptr[-1])]  # [sum n]
    keep = idx >= ps
    owner = torch.repeat_interleave(torch.arange(bs, device=idx.device), kv_indptr[1:] - kv_indptr[:-1])
    indptr = torch.zeros_like(kv_indptr)
    indptr[1:] = torch.cumsum(torch.bincount(owner[keep], minlength=bs), 0)
    return indptr, idx[keep]


def run_sdpa_forward_extend(orig, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                            extend_prefix_lens, extend_seq_lens, *a, **kw):
    rt = runtime.get()
    if not _holey_rows(rt, req_pool_indices):
        return orig(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                    extend_prefix_lens, extend_seq_lens, *a, **kw)
    table, lens = compact_rows(req_to_token, req_pool_indices.tolist(), seq_lens.tolist(), set(rt.reprefilling),
                               rt.config.page_size)
    lens = torch.tensor(lens, dtype=seq_lens.dtype, device=seq_lens.device)  # [bs]
    rows = torch.arange(len(lens), dtype=req_pool_indices.dtype, device=req_pool_indices.device)
    # NOTE: the new tokens stay at the tail of each compacted row, so causal attention = causal minus holes
    return orig(self, query, output, k_cache, v_cache, table, rows, lens, lens - extend_seq_lens, extend_seq_lens,
                *a, **kw)


def triton_init_forward_metadata(result, self, forward_batch):
    rt = runtime.get()
    if not forward_batch.forward_mode.is_extend() or not _holey_rows(rt, forward_batch.req_pool_indices):
        return result
    md = self.forward_metadata
    bs = len(forward_batch.req_pool_indices)
    indptr, indices = drop_holes(md.kv_indptr[: bs + 1], md.kv_indices, rt.config.page_size)
    self.forward_metadata = dataclasses.replace(md, kv_indptr=indptr, kv_indices=indices)
    return result


HOOKS = (
    ("sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_extend",
     run_sdpa_forward_extend, "AROUND"),
)
TRITON_MODULE = "sglang.srt.layers.attention.triton_backend"
TRITON_HOOKS = ((TRITON_MODULE + ".TritonAttnBackend.init_forward_metadata", triton_init_forward_metadata, "AFTER"),)
