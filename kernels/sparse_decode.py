"""Kernel (c): decode attention over each request's resident pages, read straight from the RaaS state, also
emitting each resident decode page's attention mass (the exact page score comes with the attention pass: no
extra KV read), with a torch reference.

No index list is built and nothing is synced to the host: the kernel walks a *virtual* page list per row,
  entry e <  n_pin               -> logical page e                 (pinned prompt pages)
  entry e =  n_pin + j, j < L    -> logical page pages[row, j]     (resident decode page j; EMPTY (< 0) = skip)
with n_pin = min(ceil(pin_len[row] / ps), ceil(seq_len / ps)); token t of logical page p is position p*ps + t
(read only if < seq_len) in KV slot req_to_token[row, p*ps + t]. Every shape is fixed by the batch size, the
head counts and L, so a step can be captured in a CUDA graph with buffers sized by the server's budget.

Inputs (SGLang's and RaasState's tensors, as they are):
  q            [bs, q_heads, dk]                  this step's queries (RoPE applied)
  k_buf        [num_slots, kv_heads, dk]          one layer's keys
  v_buf        [num_slots, kv_heads, dv]          one layer's values: dv = dk (MHA), or for MLA dv = kv_lora_rank
                                                  < dk = kv_lora_rank + rope, a view of the first dv values of
                                                  the same latent rows (one KV head, all query heads one group)
  req_to_token [num_rows, max_ctx] int32/int64    ReqToTokenPool.req_to_token
  rows         [bs] int64                         request-pool rows of the batch
  seq_lens     [bs] int64                         tokens per row, the one written this step included
  pin_len      [num_rows] int64                   RaasState.pin_len (tokens [0, pin_len) pinned)
  pages        [num_rows, L] int64                RaasState.pages (logical decode pages, EMPTY = -1)
  window       optional (lo [bs], hi [bs]) int64  pinned positions in [lo, hi) are skipped (streaming)
Outputs:
  out          [bs, q_heads, dv]                  softmax(q K^T * sm_scale) V over the resident tokens
  mass         [bs, L] float32                    per decode slot j: the probability mass of page pages[row, j],
                                                  reduced over query heads (mean or max); 0 for EMPTY slots.
                                                  `accumulate=True` adds to `mass` (the fold over layers).

Kernel A (grid bs x (kv_heads x head blocks) x splits) runs flash-decoding over a split of the virtual list for a
block of the GQA group at once (one K/V read per KV head and head block, tensor-core dots; an MLA group of 16-128
heads is cut into blocks of 16), and saves per split (max, sum, acc) and, per decode page, its probability sum
relative to the running max at that page. For MLA the logit is the latent part's dot plus the rope part's
(`DR` = dk - dv columns after the first dv; both widths powers of two). Kernel B (grid bs x (q_heads + page
blocks)) merges the splits into `out` and turns the page sums into `mass`.
NOTE: page size must be a power of two; a tile (BLOCK_N tokens) holds whole pages (BLOCK_N >= page size), so
split and tile boundaries are page boundaries.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

EMPTY = -1


def resident_positions(seq_len: int, pin_len: int, pages_row: torch.Tensor, page_size: int,
                       window: tuple[int, int] | None = None):
    """(positions [n] int64, slot_of [n] int64): the logical positions a row attends, and for each the decode
    slot j whose page holds it (-1 for pinned positions). `window` (lo, hi): of the pinned positions only those
    < lo or >= hi (a prompt-narrowing policy such as streaming). The definition shared by the reference and
    tests."""
    ps = page_size
    n_pin = min(-(-pin_len // ps), -(-seq_len // ps))
    pinned = torch.arange(n_pin * ps)
    if window is not None:
        pinned = pinned[(pinned < window[0]) | (pinned >= window[1])]
    pos = [pinned]
    slot = [torch.full((len(pinned),), -1, dtype=torch.int64)]
    for j, p in enumerate(pages_row.tolist()):
        if p >= 0:
            pos.append(torch.arange(p * ps, (p + 1) * ps))
            slot.append(torch.full((ps,), j, dtype=torch.int64))
    pos, slot = torch.cat(pos), torch.cat(slot)
    keep = pos < seq_len
    return pos[keep], slot[keep]


def sparse_decode_ref(q, k_buf, v_buf, req_to_token, rows, seq_lens, pin_len, pages, sm_scale: float,
                      page_size: int, heads_reduce: str = "mean", window=None):
    """(out [bs, q_heads, dv] float32, mass [bs, L] float32), computed row by row in float32. `window`: None or
    (lo [bs], hi [bs]) as in `sparse_decode`."""
    bs, q_heads = q.shape[:2]
    g = q_heads // k_buf.shape[1]
    L = pages.shape[1]
    out = torch.zeros((bs, q_heads, v_buf.shape[2]), dtype=torch.float32, device=q.device)
    mass = torch.zeros((bs, L), dtype=torch.float32, device=q.device)
    for b in range(bs):
        row = int(rows[b])
        win = None if window is None else (int(window[0][b]), int(window[1][b]))
        pos, slot_of = resident_positions(int(seq_lens[b]), int(pin_len[row]), pages[row].cpu(), page_size, win)
        idx = req_to_token[row, pos.to(req_to_token.device)].long()
        k = k_buf[idx].float().repeat_interleave(g, dim=1)  # [n, q_heads, d]
        v = v_buf[idx].float().repeat_interleave(g, dim=1)
        p = torch.softmax(torch.einsum("hd,nhd->hn", q[b].float(), k) * sm_scale, dim=-1)  # [q_heads, n]
        out[b] = torch.einsum("hn,nhd->hd", p, v)
        dec = (slot_of >= 0).to(q.device)
        per_head = torch.zeros((q_heads, L), device=q.device).index_add_(1, slot_of.to(q.device)[dec], p[:, dec])
        mass[b] = per_head.mean(0) if heads_reduce == "mean" else per_head.amax(0)
    return out, mass


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, r2t_ptr, rows_ptr, seq_ptr, pin_ptr, pages_ptr, lo_ptr, hi_ptr,
    acc_ptr, m_ptr, l_ptr, psum_ptr, pref_ptr,
    sm_scale, stride_r2t, stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    Q_HEADS: tl.constexpr, KV_HEADS: tl.constexpr, D: tl.constexpr, DR: tl.constexpr, L: tl.constexpr,
    PS: tl.constexpr, SPLITS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr,
):
    b = tl.program_id(0)
    G: tl.constexpr = Q_HEADS // KV_HEADS
    HB: tl.constexpr = (G + BLOCK_H - 1) // BLOCK_H  # head blocks per KV head
    h = tl.program_id(1) // HB
    hb = tl.program_id(1) % HB
    s = tl.program_id(2)
    NPT: tl.constexpr = BLOCK_N // PS  # pages per tile
    row = tl.load(rows_ptr + b).to(tl.int64)
    seq = tl.load(seq_ptr + b).to(tl.int64)
    pin = tl.load(pin_ptr + row).to(tl.int64)
    win_lo = tl.load(lo_ptr + b).to(tl.int64)  # pinned positions in [win_lo, win_hi) are not attended
    win_hi = tl.load(hi_ptr + b).to(tl.int64)
    n_pin = tl.minimum((pin + PS - 1) // PS, (seq + PS - 1) // PS)
    total = (n_pin + L) * PS  # virtual tokens of the row
    chunk = tl.cdiv(tl.cdiv(total, SPLITS), BLOCK_N) * BLOCK_N
    lo = s * chunk
    hi = tl.minimum(lo + chunk, total)

    offs_h = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, D)
    hmask = offs_h < G
    heads = h * G + offs_h  # [BLOCK_H] query heads of this KV head (this block of them)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=hmask[:, None], other=0.0)
    if DR > 0:  # MLA: the rope columns after the latent ones
        offs_r = D + tl.arange(0, DR)
        q_r = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_r[None, :], mask=hmask[:, None],
                      other=0.0)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, D], tl.float32)
    for v0 in range(lo, hi, BLOCK_N):
        v = v0 + tl.arange(0, BLOCK_N)  # [BLOCK_N] virtual token index
        e = v // PS
        inr = v < hi  # only the row's last tile reaches past its virtual list
        is_dec = (e >= n_pin) & inr
        j = e - n_pin  # decode slot (meaningful where is_dec)
        # NOTE: no load here is masked (Triton 3.6 fails to compile this loop with masked index loads: "mask type
        # matches ptr type"). Indices are clamped instead: pages[row, 0] and req_to_token[row, 0] always exist,
        # and an invalid token reads KV slot 0, SGLang's padding slot (zero-initialized, never allocated; at
        # most written for padded batch entries, so finite): its logit is masked to -inf, its p is 0.
        lp = tl.load(pages_ptr + row * L + tl.where(is_dec, j, 0)).to(tl.int64)
        lp = tl.where(is_dec, lp, tl.where(inr, e, -1))
        pos = lp * PS + v % PS
        valid = (lp >= 0) & (pos < seq) & (is_dec | (pos < win_lo) | (pos >= win_hi))
        slot = tl.load(r2t_ptr + row * stride_r2t + tl.where(valid, pos, 0)).to(tl.int64)
        # NOTE: K/V are read in q's type (an fp8 cache is upcast, as upstream's kernel does; its scales are refused)
        k = tl.load(k_ptr + slot[:, None] * stride_kt + h * stride_kh + offs_d[None, :]).to(q.dtype)  # invalid: slot 0
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # [BLOCK_H, BLOCK_N]
        if DR > 0:
            k_r = tl.load(k_ptr + slot[:, None] * stride_kt + h * stride_kh + offs_r[None, :]).to(q.dtype)
            qk += tl.dot(q_r, tl.trans(k_r), input_precision=DOT_PREC)
        qk = qk * sm_scale
        qk = tl.where(valid[None, :], qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all masked so far: any finite reference
        alpha = tl.exp(m - m_ref)
        p = tl.exp(qk - m_ref[:, None])  # [BLOCK_H, BLOCK_N]
        vv = tl.load(v_ptr + slot[:, None] * stride_vt + h * stride_vh + offs_d[None, :]).to(q.dtype)  # p 0: invalid
        acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=DOT_PREC)
        l = l * alpha + tl.sum(p, axis=1)
        m = m_new
        # page sums relative to m_ref, for the decode pages of this tile (whole pages: BLOCK_N % PS == 0)
        psum = tl.sum(tl.reshape(p, [BLOCK_H, NPT, PS]), axis=2)  # [BLOCK_H, NPT]
        pj = (v0 // PS) + tl.arange(0, NPT) - n_pin  # [NPT] decode slot of each page of the tile
        pmask = hmask[:, None] & ((pj >= 0) & (pj < L))[None, :]
        dst = (b * Q_HEADS + heads[:, None]) * L + pj[None, :]
        tl.store(psum_ptr + dst, psum, mask=pmask)
        tl.store(pref_ptr + dst, tl.broadcast_to(m_ref[:, None], [BLOCK_H, NPT]), mask=pmask)
    base = (b * Q_HEADS + heads) * SPLITS + s  # [BLOCK_H]
    tl.store(m_ptr + base, m, mask=hmask)
    tl.store(l_ptr + base, l, mask=hmask)
    tl.store(acc_ptr + base[:, None] * D + offs_d[None, :], acc, mask=hmask[:, None])


@triton.jit
def _finish_kernel(
    acc_ptr, m_ptr, l_ptr, psum_ptr, pref_ptr, out_ptr, mass_ptr, stride_ob, stride_oh,
    Q_HEADS: tl.constexpr, D: tl.constexpr, L: tl.constexpr, SPLITS: tl.constexpr, BLOCK_HQ: tl.constexpr,
    BLOCK_L: tl.constexpr, HEADS_MAX: tl.constexpr, ACCUMULATE: tl.constexpr,
):
    b = tl.program_id(0)
    i = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS)
    if i < Q_HEADS:  # merge the splits of query head i into out[b, i]
        base = (b * Q_HEADS + i) * SPLITS + offs_s  # [SPLITS]
        ms = tl.load(m_ptr + base)
        big = tl.max(ms, axis=0)
        ref = tl.where(big == float("-inf"), 0.0, big)
        w = tl.exp(ms - ref)  # [SPLITS]
        total = tl.sum(tl.load(l_ptr + base) * w, axis=0)
        offs_d = tl.arange(0, D)
        acc = tl.load(acc_ptr + base[:, None] * D + offs_d[None, :])  # [SPLITS, D]
        o = tl.sum(acc * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
        tl.store(out_ptr + b * stride_ob + i * stride_oh + offs_d, o.to(out_ptr.dtype.element_ty))
    else:  # page mass of decode slots [jb * BLOCK_L, (jb + 1) * BLOCK_L)
        jb = i - Q_HEADS
        offs_h = tl.arange(0, BLOCK_HQ)
        hmask = offs_h < Q_HEADS
        hbase = (b * Q_HEADS + offs_h[:, None]) * SPLITS + offs_s[None, :]  # [BLOCK_HQ, SPLITS]
        hms = tl.load(m_ptr + hbase, mask=hmask[:, None], other=float("-inf"))
        hbig = tl.max(hms, axis=1)
        href = tl.where(hbig == float("-inf"), 0.0, hbig)  # [BLOCK_HQ]
        htotal = tl.sum(tl.load(l_ptr + hbase, mask=hmask[:, None], other=0.0) * tl.exp(hms - href[:, None]), axis=1)
        htotal = tl.where(htotal > 0, htotal, 1.0)
        offs_j = jb * BLOCK_L + tl.arange(0, BLOCK_L)
        jmask = hmask[:, None] & (offs_j < L)[None, :]
        src = (b * Q_HEADS + offs_h[:, None]) * L + offs_j[None, :]  # [BLOCK_HQ, BLOCK_L]
        ps = tl.load(psum_ptr + src, mask=jmask, other=0.0)
        pr = tl.load(pref_ptr + src, mask=jmask, other=0.0)
        per_head = tl.where(ps > 0, ps * tl.exp(pr - href[:, None]), 0.0) / htotal[:, None]
        if HEADS_MAX:
            mass = tl.max(per_head, axis=0)
        else:
            mass = tl.sum(per_head, axis=0) / Q_HEADS
        dst = mass_ptr + b * L + offs_j
        if ACCUMULATE:
            mass += tl.load(dst, mask=offs_j < L, other=0.0)
        tl.store(dst, mass, mask=offs_j < L)


@dataclass
class Workspace:
    """Split partials and page sums, allocated once per (bs, heads, L, splits) and reused: a CUDA graph replays
    the same addresses. acc [bs, hq, S, d], m/l [bs, hq, S], psum/pref [bs, hq, L] float32."""

    acc: torch.Tensor
    m: torch.Tensor
    l: torch.Tensor
    psum: torch.Tensor
    pref: torch.Tensor

    @classmethod
    def make(cls, bs: int, q_heads: int, head_dim: int, L: int, splits: int, device) -> "Workspace":
        f = dict(dtype=torch.float32, device=device)
        return cls(
            acc=torch.empty((bs, q_heads, splits, head_dim), **f),
            m=torch.empty((bs, q_heads, splits), **f),
            l=torch.empty((bs, q_heads, splits), **f),
            psum=torch.zeros((bs, q_heads, L), **f),
            pref=torch.zeros((bs, q_heads, L), **f),
        )

    def fits(self, bs: int, q_heads: int, head_dim: int, L: int, splits: int) -> bool:
        return tuple(self.acc.shape) == (bs, q_heads, splits, head_dim) and self.psum.shape[2] == L


@functools.lru_cache(maxsize=None)
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(bs: int, kv_heads: int, device) -> int:
    """Splits per (row, KV head): enough programs for ~4 per multiprocessor, a power of two in [1, 16]; 1 off
    CUDA (the interpreter runs programs one after another). Called per layer: the device query is cached."""
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    sms = _multiprocessors(device)
    want = triton.cdiv(4 * sms, max(1, bs * kv_heads))
    return min(16, triton.next_power_of_2(want))


class Launch(NamedTuple):
    """One kernel launch: `kernel[grid](*args, **constexprs, **options)`."""

    kernel: object
    grid: tuple
    args: list
    constexprs: dict
    options: dict

    def __call__(self):
        self.kernel[self.grid](*self.args, **self.constexprs, **self.options)


def plan(q, k_buf, v_buf, req_to_token, rows, seq_lens, pin_len, pages, sm_scale: float, page_size: int,
         out, mass, ws: Workspace, *, accumulate: bool, heads_reduce: str, splits: int, block_n: int,
         num_warps: int, num_stages: int, window=None) -> list[Launch]:
    """The two launches of one `sparse_decode` call (also what `sm90_check` compiles ahead of time)."""
    lo, hi = (seq_lens, seq_lens) if window is None else window  # lo = seq_len: every pinned position < lo
    bs, q_heads, dk = q.shape
    d = v_buf.shape[2]  # dv; dk - dv rope columns for MLA
    kv_heads = k_buf.shape[1]
    L = pages.shape[1]
    block_h = min(max(16, triton.next_power_of_2(q_heads // kv_heads)), 16 if dk > d else 64)
    # small K tiles keep the registers under the spill line: 16 KB for 16-bit types; float32 dots run on FMAs, 8 KB
    # (a power of two, MLA's dk is not; at least the smallest K of a tensor-core dot: 16 for 16-bit types, 8 else)
    fit = (16384 if q.element_size() < 4 else 8192) // (dk * q.element_size())
    block_n = max(min(block_n, 1 << (fit.bit_length() - 1) if fit else 1), page_size, 16 if q.element_size() < 4 else 8)
    head_blocks = triton.cdiv(q_heads // kv_heads, block_h)
    split = Launch(_split_kernel, (bs, kv_heads * head_blocks, splits), [
        q, k_buf, v_buf, req_to_token, rows, seq_lens, pin_len, pages, lo, hi, ws.acc, ws.m, ws.l, ws.psum, ws.pref,
        sm_scale, req_to_token.stride(0), q.stride(0), q.stride(1), k_buf.stride(0), k_buf.stride(1),
        v_buf.stride(0), v_buf.stride(1),
    ], dict(Q_HEADS=q_heads, KV_HEADS=kv_heads, D=d, DR=dk - d, L=L, PS=page_size, SPLITS=splits,
            BLOCK_H=block_h, BLOCK_N=block_n,
            DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32"),
        dict(num_warps=num_warps, num_stages=num_stages))
    block_l = min(64, triton.next_power_of_2(L))
    finish = Launch(_finish_kernel, (bs, q_heads + triton.cdiv(L, block_l)), [
        ws.acc, ws.m, ws.l, ws.psum, ws.pref, out, mass, out.stride(0), out.stride(1),
    ], dict(Q_HEADS=q_heads, D=d, L=L, SPLITS=splits, BLOCK_HQ=triton.next_power_of_2(q_heads), BLOCK_L=block_l,
            HEADS_MAX=heads_reduce == "max", ACCUMULATE=accumulate), dict(num_warps=4, num_stages=1))
    return [split, finish]


def sparse_decode(q, k_buf, v_buf, req_to_token, rows, seq_lens, pin_len, pages, sm_scale: float, page_size: int,
                  *, out=None, mass=None, accumulate: bool = False, heads_reduce: str = "mean",
                  workspace: Workspace | None = None, splits: int | None = None, block_n: int = 64,
                  num_warps: int = 4, num_stages: int = 2, window=None):
    """Triton version of `sparse_decode_ref`: returns (out [bs, hq, dv] in `out`'s dtype (default q's), mass
    [bs, L] float32). Pass `out`, `mass` and `workspace` to reuse buffers (no allocation: CUDA-graph safe).
    `window` (lo [bs], hi [bs]) int64: pinned positions in [lo, hi) are not attended (streaming's prompt window;
    `RaasState.prompt_window` gives a = lo, b = hi); None attends every pinned position."""
    bs, q_heads, dk = q.shape
    d, rope = v_buf.shape[2], dk - v_buf.shape[2]
    L = pages.shape[1]
    if page_size & (page_size - 1) or d & (d - 1) or rope & (rope - 1) or rope < 0:
        raise ValueError(f"sparse_decode needs a power-of-two page size, value width and rope width (MLA), got "
                         f"{page_size}, {d} and {rope}")
    splits = splits or default_splits(bs, k_buf.shape[1], q.device)
    out = torch.empty((bs, q_heads, d), dtype=q.dtype, device=q.device) if out is None else out
    mass = torch.zeros((bs, L), dtype=torch.float32, device=q.device) if mass is None else mass
    if bs == 0:
        return out, mass
    ws = workspace if workspace is not None and workspace.fits(bs, q_heads, d, L, splits) else Workspace.make(
        bs, q_heads, d, L, splits, q.device)
    for launch in plan(q, k_buf, v_buf, req_to_token, rows, seq_lens, pin_len, pages, sm_scale, page_size, out,
                       mass, ws, accumulate=accumulate, heads_reduce=heads_reduce, splits=splits, block_n=block_n,
                       num_warps=num_warps, num_stages=num_stages, window=window):
        launch()
    return out, mass


__all__ = ["EMPTY", "Launch", "Workspace", "plan", "resident_positions", "sparse_decode", "sparse_decode_ref"]
