"""Seam: the extend attention of a retracted request resuming with holes (`patches/reprefill.py`): each recomputed
token attends to its row without the hole entries, so causal attention = causal minus the evicted pages.

Upstream symbols hooked (sglang 0.5.23):
- `sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend._run_sdpa_forward_extend`, AROUND:
  rows with holes attend to their row without the hole entries (compacted; queries stay at the tail); a layer
  with `sliding_window_size` masks its window by logical positions instead (`windowed_extend`).
- `sglang.srt.layers.attention.triton_backend.TritonAttnBackend.init_forward_metadata`, AFTER (extend only): the
  same, by dropping hole entries from the prefix `kv_indices` (registered with the triton seam's hooks on that
  target, in one call: `patches/__init__.py`). A sliding-window layer reads its prefix from window lists instead
  (with holes): its output is recomputed by `triton_windowed_extend`, called from the triton seam's
  `forward_extend` hook (`attention.layer_hooks`).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from raas_sglang.patches import runtime, swa_pool


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
    window = kw.get("sliding_window_size")
    if window is not None and window > -1:
        return windowed_extend(query, output, k_cache, v_cache, req_to_token, req_pool_indices.tolist(),
                               seq_lens.tolist(), extend_seq_lens.tolist(), set(rt.reprefilling), rt.config.page_size,
                               window, kw.get("scaling"), bool(kw.get("enable_gqa")))
    table, lens = compact_rows(req_to_token, req_pool_indices.tolist(), seq_lens.tolist(), set(rt.reprefilling),
                               rt.config.page_size)
    lens = torch.tensor(lens, dtype=seq_lens.dtype, device=seq_lens.device)  # [bs]
    rows = torch.arange(len(lens), dtype=req_pool_indices.dtype, device=req_pool_indices.device)
    # NOTE: the new tokens stay at the tail of each compacted row, so causal attention = causal minus holes
    return orig(self, query, output, k_cache, v_cache, table, rows, lens, lens - extend_seq_lens, extend_seq_lens,
                *a, **kw)


def windowed_extend(query, output, k_cache, v_cache, req_to_token, rows: list[int], seq_lens: list[int],
                    extend_lens: list[int], holey: set[int], ps: int, window: int, scaling, enable_gqa: bool,
                    sinks: torch.Tensor | None = None, mapping: torch.Tensor | None = None):
    """A sliding-window layer's extend over rows with holes: compacting the rows (above) would bring keys before a
    hole closer than they are, so each row attends its non-hole slots under a mask of their logical positions, as
    upstream's extend masks a window (the query at p attends [p - window, p]; torch_native and triton alike).
    query/output [tokens, heads, d]; k_cache, v_cache [slots, kv_heads, d]; sinks [heads] (gpt-oss): one more
    logit per head in each softmax, attending nothing (as upstream's kernels apply it). mapping [full slots]: a
    hybrid pool's full -> window slot mapping (the caches are the window pool's); a key outside the window may have
    no twin left (0, SGLang's sweep), it is masked out."""
    from torch.nn.functional import scaled_dot_product_attention

    if sinks is not None:
        scaled_dot_product_attention = functools.partial(_sdpa_with_sinks, sinks=sinks)
    start = 0
    for row, n, ext in zip(rows, seq_lens, extend_lens):
        toks = req_to_token[row, :n].to(torch.int64)  # [n] slots
        pos = torch.arange(n, device=toks.device)  # [n] logical positions
        keep = toks >= ps if row in holey else torch.ones_like(toks, dtype=torch.bool)  # NOTE: holes -> page 0
        kpos, kslots = pos[keep], toks[keep]  # [m]
        qpos = pos[n - ext:]  # [ext]: the new tokens, never holes
        mask = (kpos[None, :] <= qpos[:, None]) & (kpos[None, :] >= qpos[:, None] - window)  # [ext, m]
        q = query[start:start + ext].movedim(0, 1)  # [heads, ext, d]
        kids = kslots if mapping is None else mapping[kslots]  # [m] the ids in the layer's own pool
        k, v = (c[kids].movedim(0, 1).to(q.dtype) for c in (k_cache, v_cache))  # [kv_heads, m, d]
        out = scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scaling,
                                           enable_gqa=enable_gqa)[0]  # [heads, ext, dv]
        output[start:start + ext] = out.movedim(1, 0)
        start += ext
    return output


def _sdpa_with_sinks(q, k, v, attn_mask, scale, enable_gqa, sinks):
    """`scaled_dot_product_attention` with a sink logit per head. q [1, heads, ext, d]; k, v [1, kv_heads, m, d];
    attn_mask [ext, m] bool; sinks [heads]."""
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    logits = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)  # [1, h, ext, m]
    logits = logits.masked_fill(~attn_mask, float("-inf"))
    sink = sinks.to(logits.dtype)[None, :, None, None].expand(*logits.shape[:3], 1)  # [1, h, ext, 1]
    probs = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]
    return probs @ v  # [1, h, ext, dv]


def triton_windowed_extend(rt: runtime.Runtime, backend, q, out, layer, forward_batch, sinks=None) -> None:
    """After triton's extend of a sliding-window layer in a forward re-prefilling rows with holes: its window lists
    (`update_sliding_window_buffer`, the last tokens of each row) would read the holes' padding slot, so the
    layer's output is recomputed here over the non-hole slots (`windowed_extend`) and written over it. The KV write
    stays upstream's. q [tokens, heads * d]; out [tokens, heads * dv]."""
    heads, d, dv = layer.tp_q_head_num, layer.qk_head_dim, layer.v_head_dim
    pool = backend.token_to_kv_pool
    windowed_extend(q.reshape(-1, heads, d), out.view(-1, heads, dv), pool.get_key_buffer(layer.layer_id),
                    pool.get_value_buffer(layer.layer_id), backend.req_to_token_pool.req_to_token,
                    forward_batch.req_pool_indices.tolist(), forward_batch.seq_lens.tolist(),
                    forward_batch.extend_seq_lens.tolist(), set(rt.reprefilling), rt.config.page_size,
                    layer.sliding_window_size, layer.scaling, heads != layer.tp_k_head_num, sinks,
                    mapping=swa_pool.window_mapping(pool))


def holey_extend(rt: runtime.Runtime | None, forward_batch) -> bool:
    """Whether this is an extend forward re-prefilling a row with holes."""
    return forward_batch.forward_mode.is_extend() and _holey_rows(rt, forward_batch.req_pool_indices)


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
