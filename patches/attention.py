"""Seam: the torch-native attention backend reads only resident tokens; page key bounds and scores per layer.

The backend-independent parts (`begin_forward`, `forward_decode`, `forward_extend`) are shared with the triton
and flashinfer seams (`attention_triton`, `attention_flashinfer`).

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/layers/attention/torch_native_backend.py`,
`TorchNativeAttnBackend`):
- `init_forward_metadata(self, forward_batch)`, AFTER: once per forward. For a decode batch whose rows have
  evicted pages, build a compacted table of each row's resident KV slots (pinned prompt + resident decode pages,
  ascending logical order); prepare page scoring of the resident decode pages.
- `_run_sdpa_forward_decode(self, q, o, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, ...)`,
  AROUND: hand it the compacted table (rows `arange(bs)`, lengths = resident counts) instead of
  `req_to_token[row, :seq_len]`. Decode attention has no mask, so this is exact; positions stay logical (RoPE was
  applied before the KV write).
- `forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True)`, AROUND: after the layer's KV write
  and attention, fold the new keys into the page bounds and add the layer's page shares; after the last layer,
  refresh stamps.
- `forward_extend(...)`, AROUND: fold prefill keys into the page bounds (a re-prefilled request's decode pages
  are scored later).
"""

from __future__ import annotations

import torch

from raas_sglang.patches import runtime


def _active(forward_batch=None) -> runtime.Runtime | None:
    rt = runtime.get()
    return rt if rt is not None and rt.state is not None else None


def begin_forward(backend, forward_batch) -> runtime.Runtime | None:
    """Once per forward, on every backend: for a decode batch, set `rt.table` (None when no row has evicted a
    page, so every row reads all its KV as stock) and prepare page scoring. Returns the runtime when active."""
    rt = _active(forward_batch)
    if rt is None:
        return None
    rt.table = None
    rt.scoring = None
    if forward_batch.forward_mode.is_decode():
        with runtime.timed(rt):
            _build_tables(rt, backend, forward_batch)
    return rt


def init_forward_metadata(result, self, forward_batch):
    begin_forward(self, forward_batch)
    return result


def _build_tables(rt: runtime.Runtime, backend, forward_batch) -> None:
    rt.ensure_bounds(backend.token_to_kv_pool)
    rows = forward_batch.req_pool_indices.to(torch.int64)  # [bs]
    req_to_token = backend.req_to_token_pool.req_to_token
    if bool((rt.state.evicted[rows] > 0).any()):
        pos, n = rt.resident_positions(rows, forward_batch.seq_lens.to(torch.int64))
        rt.table = runtime.Resident(req_to_token[rows[:, None], pos].to(torch.int64), n)  # [bs, n_max] KV slots
    if bool((rt.state.count[rows] > 0).any()):
        rt.page_scores_begin(rows, req_to_token)


def run_sdpa_forward_decode(orig, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, *a, **kw):
    rt = runtime.get()
    if rt is None or rt.table is None:
        return orig(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, *a, **kw)
    table = rt.table
    rows = torch.arange(table.slots.shape[0], device=table.slots.device)
    return orig(self, query, output, k_cache, v_cache, table.slots, rows, table.n, *a, **kw)


def _fold_keys(rt: runtime.Runtime, layer, forward_batch, k) -> None:
    if k is None or rt.bounds is None:
        return
    kk = k.reshape(-1, layer.tp_k_head_num, layer.qk_head_dim)
    rt.bounds.update(layer.layer_id - rt.start_layer, forward_batch.out_cache_loc.to(torch.int64), kk)


def forward_decode(orig, self, q, k, v, layer, forward_batch, *a, **kw):
    """AROUND any backend's `forward_decode` (its KV write and attention run first)."""
    out = orig(self, q, k, v, layer, forward_batch, *a, **kw)
    rt = _active(forward_batch)
    if rt is None:
        return out
    with runtime.timed(rt):
        _fold_keys(rt, layer, forward_batch, k)
        if rt.scoring is not None:
            lid = layer.layer_id - rt.start_layer
            qh = q.reshape(q.shape[0], layer.tp_q_head_num, layer.qk_head_dim)
            rt.score_layer(lid, qh, layer.scaling)
            if lid == rt.num_layers - 1:
                rt.page_scores_end()
    return out


def forward_extend(orig, self, q, k, v, layer, forward_batch, *a, **kw):
    """AROUND any backend's `forward_extend`."""
    out = orig(self, q, k, v, layer, forward_batch, *a, **kw)
    rt = runtime.get()
    if rt is not None:
        rt.ensure_bounds(self.token_to_kv_pool)
        _fold_keys(rt, layer, forward_batch, k)
    return out


def layer_hooks(cls_path: str) -> tuple:
    """The per-layer hooks every backend class gets: key folding and page scoring around its decode/extend."""
    return ((cls_path + ".forward_decode", forward_decode, "AROUND"), (cls_path + ".forward_extend", forward_extend, "AROUND"))


_T = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend"
HOOKS = (
    (_T + ".init_forward_metadata", init_forward_metadata, "AFTER"),
    (_T + "._run_sdpa_forward_decode", run_sdpa_forward_decode, "AROUND"),
    *layer_hooks(_T),
)
