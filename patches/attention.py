"""Seam: the torch-native attention backend reads only resident tokens, and scores pages by exact attention mass.

The backend-independent parts (`begin_forward`, and the Quest-scored `forward_decode` / `forward_extend`) are
shared with the triton and flashinfer seams (`attention_triton`, `attention_flashinfer`), whose kernels give no
attention probabilities: those backends score pages with Quest bounds (`raas_sglang.scoring`), except triton
with `--raas-score exact`, whose decode attention is the plugin's own kernel (`attention_triton`).

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/layers/attention/torch_native_backend.py`,
`TorchNativeAttnBackend`):
- `init_forward_metadata(self, forward_batch)`, AFTER: once per forward. For a decode batch with resident decode
  pages or evictions, build each row's resident KV slots (pinned prompt + resident decode pages, ascending
  logical order) and plan one batched gather for all layers; prepare the page score accumulator.
- `_run_sdpa_forward_decode(self, q, o, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, ...)`,
  AROUND: with a table, replace upstream's per-request loop (gather + SDPA per request) by one batched pass over
  the resident slots (`raas_sglang.resident_attention.ResidentDecode`) that also returns the softmax mass of
  each slot. Decode attention has no mask, so this is exact; positions stay logical (RoPE was applied before
  the KV write).
- `forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True)`, AROUND: add the layer's mass per
  resident decode page to the scores; after the last layer, refresh stamps.
"""

from __future__ import annotations

import torch

from raas_sglang.patches import runtime


def _active(forward_batch=None) -> runtime.Runtime | None:
    rt = runtime.get()
    return rt if rt is not None and rt.state is not None else None


def begin_forward(backend, forward_batch, exact: bool = False, batched: bool = False,
                  kernel: bool = False) -> runtime.Runtime | None:
    """Once per forward, on every backend: for a decode batch, set `rt.table` (the resident set; None when no
    row needs it, so every row reads all its KV as stock) and prepare page scoring. `exact`: scores come from
    this forward's attention probabilities (the torch-native path computes them), else from Quest bounds.
    `batched`: plan the torch-native batched decode over the table. `kernel`: the plugin's triton kernel reads
    the resident pages from the state itself (`rt.kernel_batch`; no table) and gives the exact scores.
    Returns the runtime when active."""
    rt = _active(forward_batch)
    if rt is None:
        return None
    rt.table = None
    rt.kernel_batch = None
    rt.scoring = None
    rt.layer_mass = None
    if forward_batch.forward_mode.is_decode():
        with runtime.timed(rt, "tables"):
            _build_tables(rt, backend, forward_batch, exact, batched, kernel)
    return rt


def init_forward_metadata(result, self, forward_batch):
    rt = runtime.get()
    begin_forward(self, forward_batch, exact=rt is not None and rt.config.score != "quest", batched=True)
    return result


def _build_tables(rt: runtime.Runtime, backend, forward_batch, exact: bool, batched: bool, kernel: bool) -> None:
    pool = backend.token_to_kv_pool
    rt.ensure_layers(pool)
    if not exact or rt.config.keeps_bounds:
        rt.ensure_bounds(pool)
    rows = forward_batch.req_pool_indices.to(torch.int64)  # [bs]
    seq_lens = forward_batch.seq_lens.to(torch.int64)  # [bs]
    req_to_token = backend.req_to_token_pool.req_to_token
    scoring = bool((rt.state.count[rows] > 0).any())
    cand_end = rt.selection_ends(rows, seq_lens) if batched and rt.config.keeps_bounds else None
    if kernel:  # NOTE: no selecting policy runs on such a server (config.exact_kernel)
        if scoring or bool((rt.state.evicted[rows] > 0).any()):
            rt.kernel_batch = (rows, seq_lens, rt.prompt_window(rows, seq_lens)[1])
    elif scoring or cand_end is not None or bool((rt.state.evicted[rows] > 0).any()):
        pos, n, col_slot = rt.resident_positions(rows, seq_lens)
        slots = req_to_token[rows[:, None], pos].to(torch.int64)  # [bs, n_max] KV slots
        rt.table = runtime.Resident(slots, n, col_slot, pos, rows, cand_end)
        if batched:
            rt.decode.plan(rt.table.slots, n, pool.get_key_buffer(pool.start_layer).shape[1])
    if scoring:
        rt.page_scores_begin(rows, req_to_token, quest=not exact)


def run_sdpa_forward_decode(orig, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, *a, **kw):
    """AROUND torch_native's decode attention: with a resident table, one batched pass over the resident slots
    (`ResidentDecode`) that also yields the layer's exact attention mass per slot."""
    rt = runtime.get()
    if rt is None or rt.table is None:
        return orig(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, *a, **kw)
    scaling = kw.get("scaling")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    keep = rt.select(rt.current_layer, query, scaling) if rt.table.cand_end is not None else None
    out, rt.layer_mass = rt.decode(query, k_cache, v_cache, scaling, keep)
    output.copy_(out)
    return output


def forward_decode_exact(orig, self, q, k, v, layer, forward_batch, *a, **kw):
    """AROUND torch_native's `forward_decode`: fold the new keys when Quest bounds are kept; add the layer's
    page scores (its attention mass, or Quest estimates with --raas-score quest); refresh stamps after the last
    layer."""
    rt = _active(forward_batch)
    if rt is None:
        return orig(self, q, k, v, layer, forward_batch, *a, **kw)
    lid = layer.layer_id - rt.start_layer
    rt.current_layer = lid
    out = orig(self, q, k, v, layer, forward_batch, *a, **kw)
    with runtime.timed(rt, "layers"):
        _fold_keys(rt, layer, forward_batch, k)
        if rt.scoring is not None:
            if rt.config.score == "quest":
                rt.score_layer(lid, q.reshape(q.shape[0], layer.tp_q_head_num, layer.qk_head_dim), layer.scaling)
            elif rt.layer_mass is not None:
                rt.add_mass(rt.layer_mass)
            if lid == rt.num_layers - 1:
                rt.page_scores_end()
        rt.layer_mass = None
    return out


def _fold_keys(rt: runtime.Runtime, layer, forward_batch, k) -> None:
    if k is None or rt.bounds is None:
        return
    kk = k.reshape(-1, layer.tp_k_head_num, layer.qk_head_dim)
    rt.bounds.update(layer.layer_id - rt.start_layer, forward_batch.out_cache_loc.to(torch.int64), kk)


def forward_decode(orig, self, q, k, v, layer, forward_batch, *a, **kw):
    """AROUND a Quest-scored backend's `forward_decode` (its KV write and attention run first)."""
    out = orig(self, q, k, v, layer, forward_batch, *a, **kw)
    rt = _active(forward_batch)
    if rt is None:
        return out
    with runtime.timed(rt, "layers"):
        _fold_keys(rt, layer, forward_batch, k)
        if rt.scoring is not None:
            lid = layer.layer_id - rt.start_layer
            if rt.kernel_batch is None:  # else the kernel already added this layer's exact mass
                qh = q.reshape(q.shape[0], layer.tp_q_head_num, layer.qk_head_dim)
                rt.score_layer(lid, qh, layer.scaling)
            if lid == rt.num_layers - 1:
                rt.page_scores_end()
    return out


def forward_extend(orig, self, q, k, v, layer, forward_batch, *a, **kw):
    """AROUND a Quest-scored backend's `forward_extend`: fold prefill keys into the page bounds."""
    out = orig(self, q, k, v, layer, forward_batch, *a, **kw)
    rt = runtime.get()
    if rt is not None and (rt.config.keeps_bounds or not _exact_backend(self)):
        rt.ensure_bounds(self.token_to_kv_pool)
        _fold_keys(rt, layer, forward_batch, k)
    return out


def _exact_backend(backend) -> bool:
    """Whether this backend scores pages exactly (no Quest bounds needed for its requests)."""
    rt = runtime.get()
    kernel = rt is not None and rt.config.exact_kernel and type(backend).__name__ == "TritonAttnBackend"
    return kernel or type(backend).__name__ == "TorchNativeAttnBackend"


def layer_hooks(cls_path: str) -> tuple:
    """The per-layer hooks of a Quest-scored backend class: key folding and page scoring around decode/extend."""
    return ((cls_path + ".forward_decode", forward_decode, "AROUND"), (cls_path + ".forward_extend", forward_extend, "AROUND"))


_T = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend"
HOOKS = (
    (_T + ".init_forward_metadata", init_forward_metadata, "AFTER"),
    (_T + "._run_sdpa_forward_decode", run_sdpa_forward_decode, "AROUND"),
    (_T + ".forward_decode", forward_decode_exact, "AROUND"),
    (_T + ".forward_extend", forward_extend, "AROUND"),  # folds keys only when Quest bounds are in use
)
