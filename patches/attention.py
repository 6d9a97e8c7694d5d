"""Seam: the torch-native attention backend reads only resident tokens, and scores pages by exact attention mass.

The backend-independent parts (`begin_forward`, which builds the forward's `DecodeStep`, and the per-layer
key folding / Quest scoring of `layer_hooks`) are shared with the triton and flashinfer seams
(`attention_triton`, `attention_flashinfer`). Each backend names itself with a `Backend` member; no hook needs
another hook of the same forward to have run, apart from `init_forward_metadata`, which SGLang always runs
before the layers.

Upstream symbols hooked (sglang 0.5.23, `sglang/srt/layers/attention/torch_native_backend.py`,
`TorchNativeAttnBackend`):
- `init_forward_metadata(self, forward_batch)`, AFTER: once per forward. For a decode batch with resident decode
  pages or evictions, build the `DecodeStep`: each row's resident KV slots (attended pinned prompt + resident
  decode pages, ascending logical order), one batched gather plan for all layers, the page score accumulator.
- `_run_sdpa_forward_decode(self, q, o, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, ...,
  sliding_window_size=)`, AROUND: with a table, replace upstream's per-request loop (gather + SDPA per request) by
  one batched pass over the resident slots (`raas_sglang.resident_attention.ResidentDecode`) that also returns
  the softmax mass of each slot, folded into the page scores (the layer is known from `k_cache`). Decode
  attention has no mask but a layer's sliding window, applied to the resident slots by their logical positions as
  upstream applies it (the query at p attends [p - window, p]), so this is exact; positions stay logical (RoPE was
  applied before the KV write).
- `forward_decode` / `forward_extend`, AROUND (`layer_hooks`): fold new keys into the Quest page bounds when they
  are kept; Quest page scores with `--raas-score quest`.
"""

from __future__ import annotations

import enum
import logging
import os

import numpy as np
import torch

from raas_sglang.host import HostBatch, check_mirror, host_batch, to_device
from raas_sglang.patches import reprefill_attention, runtime
from raas_sglang.step import (
    DecodeStep, PageScores, attends_subset, build_table, prompt_window, quest_keep, resident_lengths, selection_ends,
)

logger = logging.getLogger("raas_sglang")
CHECK_MIRRORS = os.environ.get("RAAS_CHECK_MIRRORS") == "1"  # debug: compare the host mirror each step (syncs)


class Backend(enum.Enum):
    """The attention backends RaaS runs on, and how each reads the resident set and scores pages."""

    TORCH_NATIVE = "torch_native"  # batched decode over the table; exact mass (or Quest with --raas-score quest)
    TRITON = "triton"  # upstream kernel over ragged lists + Quest; or the plugin's kernel (exact) with exact_kernel
    FLASHINFER = "flashinfer"  # upstream plan over ragged lists + Quest

    def exact_scores(self, config) -> bool:
        """Whether this backend's decode gives exact page mass (else pages are scored with Quest bounds)."""
        if self is Backend.TORCH_NATIVE:
            return config.score != "quest"
        return self is Backend.TRITON and config.exact_kernel

    def needs_bounds(self, config) -> bool:
        """Whether Quest page key bounds must be kept (folded from every key written)."""
        return config.keeps_bounds or not self.exact_scores(config)


def _active() -> runtime.Runtime | None:
    rt = runtime.get()
    return rt if rt is not None and rt.state is not None else None


def begin_forward(backend, forward_batch, kind: Backend) -> DecodeStep | None:
    """Once per forward, on every backend: for a decode batch, build `rt.forward` (None for other forwards, and
    for a dense server). Returns it."""
    rt = _active()
    if rt is None:
        return None
    rt.forward = None
    if forward_batch.forward_mode.is_decode():
        with runtime.timed(rt, "tables"):
            rt.forward = _build_step(rt, backend, forward_batch, kind)
    return rt.forward


def _build_step(rt: runtime.Runtime, backend, forward_batch, kind: Backend) -> DecodeStep:
    pool, config, state = backend.token_to_kv_pool, rt.config, rt.state
    rt.ensure_layers(pool)
    exact = kind.exact_scores(config)
    if kind.needs_bounds(config):
        rt.ensure_bounds(pool)
    rows = forward_batch.req_pool_indices.to(torch.int64)  # [bs]
    seq_lens = forward_batch.seq_lens.to(torch.int64)  # [bs]
    req_to_token = backend.req_to_token_pool.req_to_token
    host = _host_batch(rt, forward_batch, rows, seq_lens)
    fwd = DecodeStep(rows, seq_lens, host, last_layer=rt.num_layers - 1)
    if CHECK_MIRRORS:
        check_mirror(state, rows, host.rows)
    scoring = bool((state.host.count[host.rows] > 0).any())
    holes = bool((state.host.evicted[host.rows] > 0).any())
    cand_end, window = None, None
    if kind is Backend.TRITON and config.exact_kernel:  # NOTE: no selecting policy runs on such a server
        if scoring or holes:
            window = prompt_window(state, rows, seq_lens, host.rows)
            fwd.window = window[1]
    else:
        ends = selection_ends(state, host) if kind is Backend.TORCH_NATIVE and config.keeps_bounds else None
        cand_end = None if ends is None else to_device(ends, rows.device)  # [bs] int64
        if scoring or holes or cand_end is not None:
            window = prompt_window(state, rows, seq_lens, host.rows)  # NOTE: once per forward (table, marking)
            lengths = resident_lengths(state, host)  # ([bs] int64, exact)
            fwd.table = build_table(state, rows, seq_lens, req_to_token, lengths, cand_end, window,
                                    0 if ends is None else int(ends.max()))
            if CHECK_MIRRORS:
                _check_lengths(fwd.table)
            if kind is Backend.TORCH_NATIVE:
                rt.decode.plan(fwd.table.slots, fwd.table.n, pool.get_key_buffer(pool.start_layer).shape[1])
    if window is not None:  # NOTE: KV written under sparse attention stays out of the radix tree
        state.mark_sparse(rows, seq_lens - 1, attends_subset(state, rows, window, cand_end))
    if scoring:
        fwd.scores = PageScores(state, rows, config.reduce, None if exact else req_to_token, ranks=config.tp_size)
    return fwd


def _check_lengths(table) -> None:
    """Debug (syncs): the host's resident lengths equal the device's (or bound them, for a policy without a host
    prompt window)."""
    n, n_host = table.n.tolist(), table.n_host.tolist()
    if (n != n_host) if table.n_exact else any(a > b for a, b in zip(n, n_host)):
        raise RuntimeError(f"raas_sglang: resident lengths {n} on the device, {n_host} on the host")


def _host_batch(rt: runtime.Runtime, forward_batch, rows: torch.Tensor, seq_lens: torch.Tensor) -> HostBatch:
    """The forward's batch on the host: the one `alloc_for_decode` just allocated (NOTE: the overlap scheduler is
    off, so a decode forward runs right after its own allocation), matched against SGLang's CPU `seq_lens`; if it
    does not match (a path that did not allocate through the seam), read back from the device (a sync)."""
    host, seq_cpu = rt.step_host, getattr(forward_batch, "seq_lens_cpu", None)
    if (host is not None and seq_cpu is not None and len(host.rows) == len(seq_cpu)
            and np.array_equal(seq_cpu.numpy(), host.positions + 1)):
        return host
    if not rt.warned_readback:
        rt.warned_readback = True
        logger.warning("raas_sglang: a decode forward's batch was not the one just allocated; reading it back")
    return host_batch(rows, seq_lens - 1)


def init_forward_metadata(result, self, forward_batch):
    begin_forward(self, forward_batch, Backend.TORCH_NATIVE)
    return result


def run_sdpa_forward_decode(orig, self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, *a, **kw):
    """AROUND torch_native's decode attention: with a resident table, one batched pass over the resident slots
    (`ResidentDecode`; Quest selection first for selecting rows) whose softmax mass scores the pages."""
    rt = _active()
    fwd = rt.forward if rt is not None else None
    if fwd is None or fwd.table is None:
        return orig(self, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, *a, **kw)
    scaling = kw.get("scaling")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    layer = rt.layer_of(k_cache)
    table = fwd.table
    window = kw.get("sliding_window_size")
    lo = fwd.seq_lens - 1 - window if window is not None and window > -1 else None  # [bs] first attended position
    keep = None
    if table.cand_end is not None:  # NOTE: a windowed layer selects among the pages inside its window
        keep = quest_keep(table, rt.bounds, layer, query, scaling, rt.state.limit[table.rows], lo)
    if lo is not None:  # as upstream: the query at p attends positions [p - window, p]
        inside = table.pos >= lo[:, None]  # [bs, n_max] bool
        keep = inside if keep is None else keep & inside
    out, probs = rt.decode(query, k_cache, v_cache, scaling, keep)
    output.copy_(out)
    if fwd.scores is not None and fwd.scores.phys is None:  # exact scores: this layer's attention mass
        with runtime.timed(rt, "layers"):
            fwd.scores.add_mass(probs, table.col_slot)
            rt.layer_done(fwd, layer)
    return output


def _fold_keys(rt: runtime.Runtime, layer, forward_batch, k, pool=None) -> None:
    """Fold the keys this layer just wrote into the Quest bounds. NOTE: an MLA model's prefill on triton runs
    through its MHA attention (per-head K rebuilt from the latent, `save_kv_cache=False`) after the model wrote the
    latent rows itself: those rows are read back from the pool (`pool` given), the only keys decode will see. On
    torch_native every extend is absorbed (`patches/mla_torch_native.py`): `k` is the latent row itself."""
    if rt.bounds is None:
        return
    loc = forward_batch.out_cache_loc.to(torch.int64)  # [tokens]
    kv_heads, dim = rt.bounds.kb[0].shape[1], rt.bounds.head_dim
    if pool is not None and (layer.tp_k_head_num, layer.qk_head_dim) != (kv_heads, dim):
        k = pool.get_key_buffer(layer.layer_id)[loc]  # [tokens, 1, kv_lora_rank + rope]: the latent rows written
    if k is None:
        return
    rt.bounds.update(layer.layer_id - rt.start_layer, loc, k.reshape(-1, kv_heads, dim))


def _window_lo(kind: Backend, layer, fwd: DecodeStep) -> torch.Tensor | None:
    """[bs] int64: the first position a sliding-window layer attends at this decode step (None: no window). NOTE:
    upstream's windows differ by one: torch_native attends [p - window, p], triton's decode [p - window + 1, p]."""
    window = getattr(layer, "sliding_window_size", None)
    if window is None or window < 0:
        return None
    return fwd.seq_lens - window - (1 if kind is Backend.TORCH_NATIVE else 0)


def layer_hooks(cls_path: str, kind: Backend) -> tuple:
    """The per-layer hooks of one backend class: key folding into the Quest bounds (decode and extend) and Quest
    page scores (when this backend's scores are not exact)."""

    def forward_decode(orig, self, q, k, v, layer, forward_batch, *a, **kw):
        out = orig(self, q, k, v, layer, forward_batch, *a, **kw)  # the KV write and attention run first
        rt = _active()
        fwd = rt.forward if rt is not None else None
        if fwd is None:
            return out
        with runtime.timed(rt, "layers"):
            _fold_keys(rt, layer, forward_batch, k)
            if fwd.scores is not None and fwd.scores.phys is not None:  # Quest scores
                lid = layer.layer_id - rt.start_layer
                fwd.scores.add_bounds(rt.bounds, lid, q.reshape(q.shape[0], layer.tp_q_head_num, layer.qk_head_dim),
                                      layer.scaling, _window_lo(kind, layer, fwd))
                rt.layer_done(fwd, lid)
        return out

    def forward_extend(orig, self, q, k, v, layer, forward_batch, *a, **kw):
        out = orig(self, q, k, v, layer, forward_batch, *a, **kw)
        rt = runtime.get()
        if (kind is Backend.TRITON and (layer.sliding_window_size or -1) > -1
                and reprefill_attention.holey_extend(rt, forward_batch)):
            sinks = kw.get("sinks", a[1] if len(a) > 1 else None)  # (save_kv_cache, sinks, ...)
            reprefill_attention.triton_windowed_extend(rt, self, q, out, layer, forward_batch, sinks)
        if rt is not None and kind.needs_bounds(rt.config):
            rt.ensure_bounds(self.token_to_kv_pool)
            _fold_keys(rt, layer, forward_batch, k, self.token_to_kv_pool)
        return out

    return ((cls_path + ".forward_decode", forward_decode, "AROUND"),
            (cls_path + ".forward_extend", forward_extend, "AROUND"))


_T = "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend"
HOOKS = (
    (_T + ".init_forward_metadata", init_forward_metadata, "AFTER"),
    (_T + "._run_sdpa_forward_decode", run_sdpa_forward_decode, "AROUND"),
    *layer_hooks(_T, Backend.TORCH_NATIVE),
)
