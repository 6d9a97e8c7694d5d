"""Triton kernels against their torch references. Without CUDA they run under the Triton interpreter in float32
on a pairwise-covering subset of {batch 1..8, ragged lengths, page size 1/16, GQA 1/4/8, head dim 64/128}; the
full matrix (and bf16) runs on a GPU (marked gpu)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # conftest sets it first; kept for running this file alone

from raas_sglang.kernels.sparse_decode import Workspace, sparse_decode, sparse_decode_ref  # noqa: E402

DEV = "cuda" if CUDA else "cpu"
KV_HEADS = 2
# (batch, page_size, gqa, head_dim): every pair of values of any two factors appears at least once
PAIRWISE = [
    (1, 1, 1, 64), (3, 16, 4, 64), (8, 16, 8, 128), (2, 1, 4, 128),
    (5, 16, 1, 128), (4, 1, 8, 64), (7, 16, 8, 64), (6, 1, 1, 128),
]
FULL = list(itertools.product([1, 4, 8], [1, 16], [1, 4, 8], [64, 128]))


def _cases(gpu: bool):
    return [pytest.param(*c, marks=pytest.mark.gpu) for c in FULL] if gpu else PAIRWISE


def resident_case(bs, ps, gqa, d, seed, dtype=torch.float32, L=6):
    """A decode batch as SGLang and RaasState hold it: req_to_token over scattered physical pages, rows in
    random order, pin_len (a partial prompt page, none, or a dense row with everything pinned), and each row's
    resident decode pages in random state slots (holes where pages were evicted, EMPTY slots between)."""
    g = torch.Generator().manual_seed(seed)
    num_rows, ctx_pages = bs + 3, 24
    phys = torch.randperm(num_rows * ctx_pages, generator=g).view(num_rows, ctx_pages) + 1  # page 0 = padding
    req_to_token = (phys[:, :, None] * ps + torch.arange(ps)).view(num_rows, -1).to(torch.int32)
    rows = torch.randperm(num_rows, generator=g)[:bs]
    pin_len = torch.zeros(num_rows, dtype=torch.int64)
    pages = torch.full((num_rows, L), -1, dtype=torch.int64)
    seq_lens = torch.zeros(bs, dtype=torch.int64)
    for b, row in enumerate(rows.tolist()):
        kind = b % 3
        pin = [int(torch.randint(0, 3 * ps, (1,), generator=g)), 0, 1 << 40][kind]
        first = -(-pin // ps) if kind != 2 else 0
        seq = (first * ps if kind != 2 else 0) + int(torch.randint(1, (L + 4) * ps, (1,), generator=g))
        seq = max(seq, min(pin, 10 * ps) + 1)
        pin_len[row], seq_lens[b] = pin, seq
        if kind == 2:
            continue  # dense row: every page pinned
        last = (seq - 1) // ps
        older = torch.arange(first, last)
        keep = older[torch.randperm(len(older), generator=g)[: int(torch.randint(0, L, (1,), generator=g))]]
        resident = torch.cat([keep, torch.tensor([last])])
        where = torch.randperm(L, generator=g)[: len(resident)]
        pages[row, where] = resident
    num_slots = (num_rows * ctx_pages + 1) * ps
    q = torch.randn(bs, KV_HEADS * gqa, d, generator=g).to(DEV, dtype)
    k = torch.randn(num_slots, KV_HEADS, d, generator=g).to(DEV, dtype)
    v = torch.randn(num_slots, KV_HEADS, d, generator=g).to(DEV, dtype)
    to = lambda t: t.to(DEV)  # noqa: E731
    return q, k, v, to(req_to_token), to(rows), to(seq_lens), to(pin_len), to(pages)


def _tol(dtype):
    return (1e-4, 1e-5) if dtype == torch.float32 else (3e-2, 2e-3)  # (out, mass)


def _dtypes(gpu: bool):
    return [torch.float32, torch.bfloat16] if gpu else [torch.float32]


@pytest.mark.parametrize("bs, ps, gqa, d", _cases(False) + _cases(True))
def test_sparse_decode_matches_reference(bs, ps, gqa, d):
    for dtype in _dtypes(CUDA):
        case = resident_case(bs, ps, gqa, d, seed=bs * 100 + ps + gqa + d, dtype=dtype)
        out, mass = sparse_decode(*case, d**-0.5, ps)
        ref_out, ref_mass = sparse_decode_ref(*case, d**-0.5, ps)
        tol_out, tol_mass = _tol(dtype)
        assert torch.allclose(out.float(), ref_out, atol=tol_out, rtol=tol_out)
        assert torch.allclose(mass, ref_mass, atol=tol_mass)
        rows, pin_len, pages = case[4], case[6], case[7]
        no_pin = (pin_len[rows] == 0) & (pages[rows] >= 0).any(1)  # every attended token is in a decode page
        assert torch.allclose(mass.sum(1)[no_pin], torch.ones(int(no_pin.sum()), device=DEV), atol=1e-4)
        assert torch.all(mass[pages[rows] < 0] == 0)


@pytest.mark.parametrize("splits, block_n", [(1, 16), (4, 32), (16, 64)])
def test_sparse_decode_accumulates_and_reduces_max(splits, block_n):
    """`accumulate` adds this layer's mass to the running fold; `heads_reduce="max"` takes the max over heads;
    the split count and tile size change nothing but speed."""
    case = resident_case(4, 16, 4, 64, seed=splits)
    prior = torch.rand(4, 6, device=DEV)
    out, mass = sparse_decode(*case, 0.125, 16, mass=prior.clone(), accumulate=True, heads_reduce="max",
                              splits=splits, block_n=block_n)
    ref_out, ref_mass = sparse_decode_ref(*case, 0.125, 16, heads_reduce="max")
    assert torch.allclose(out, ref_out, atol=1e-4, rtol=1e-4)
    assert torch.allclose(mass, prior + ref_mass, atol=1e-5)


@pytest.mark.parametrize("ps, gqa", [(1, 4), (16, 1), (64, 8)])
def test_sparse_decode_prompt_window(ps, gqa):
    """streaming's prompt window: of the pinned positions only [0, lo) and [hi, pin_end) are attended."""
    case = resident_case(5, ps, gqa, 64, seed=ps + gqa)
    rows, seq_lens, pin_len = case[4], case[5], case[6]
    pin_end = torch.minimum((pin_len[rows] + ps - 1) // ps * ps, seq_lens)
    g = torch.Generator().manual_seed(ps)
    lo = torch.minimum(pin_end, torch.full_like(pin_end, ps))  # a sink page
    hi = lo + (torch.rand(len(lo), generator=g).to(DEV) * (pin_end - lo + 1)).long().clamp(max=pin_end - lo)
    out, mass = sparse_decode(*case, 0.125, ps, window=(lo, hi))
    ref_out, ref_mass = sparse_decode_ref(*case, 0.125, ps, window=(lo, hi))
    assert torch.allclose(out, ref_out, atol=1e-4, rtol=1e-4)
    assert torch.allclose(mass, ref_mass, atol=1e-5)
    full_out, _ = sparse_decode_ref(*case, 0.125, ps)
    assert not torch.allclose(ref_out, full_out, atol=1e-4)  # the window really removed attended positions


@pytest.mark.gpu
def test_sparse_decode_replays_in_a_cuda_graph():
    """Buffers sized once, inputs changed in place between replays: the graph gives the reference each time."""
    case = [t.clone() for t in resident_case(8, 16, 4, 128, seed=3, dtype=torch.bfloat16)]
    q, pages, seq_lens = case[0], case[7], case[5]
    out = torch.empty_like(q)
    mass = torch.zeros(8, pages.shape[1], device=DEV)
    ws = Workspace.make(8, q.shape[1], 128, pages.shape[1], 8, DEV)
    run = lambda: sparse_decode(*case, 128**-0.5, 16, out=out, mass=mass, workspace=ws, splits=8)  # noqa: E731
    run()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for seed in range(3):
        fresh = resident_case(8, 16, 4, 128, seed=10 + seed, dtype=torch.bfloat16)
        for dst, src in zip(case, fresh):
            dst.copy_(src)
        graph.replay()
        ref_out, ref_mass = sparse_decode_ref(*case, 128**-0.5, 16)
        assert torch.allclose(out.float(), ref_out, atol=3e-2, rtol=3e-2)
        assert torch.allclose(mass, ref_mass, atol=2e-3)
    assert seq_lens.data_ptr() == case[5].data_ptr()


def mla_case(bs, ps, q_heads, lora, rope, seed, dtype=torch.float32):
    """The MLA shape of a decode batch: one latent KV head (c_KV then k_pe, `MLATokenToKVPool`'s row), V the view
    of its first `lora` values, every query head in one group (the absorbed query, latent then rope)."""
    q, k, _, *rest = resident_case(bs, ps, 1, lora + rope, seed, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    latent = torch.randn(k.shape[0], 1, lora + rope, generator=g).to(DEV, dtype)
    q = torch.randn(bs, q_heads, lora + rope, generator=g).to(DEV, dtype)
    return (q, latent, latent[..., :lora], *rest)


@pytest.mark.parametrize("bs, ps, q_heads, lora, rope", [(3, 16, 4, 256, 32), (2, 1, 16, 64, 16),
                                                         (4, 16, 40, 128, 64)])
def test_sparse_decode_mla_shape(bs, ps, q_heads, lora, rope):
    """MLA: K = [c_KV ; k_pe] (dk = lora + rope), V = c_KV (a strided view of the same rows), one KV head and all
    query heads in one group (more than one head block when above 16); out [bs, heads, lora]."""
    case = mla_case(bs, ps, q_heads, lora, rope, seed=bs + ps + q_heads)
    scale = (lora + rope) ** -0.5
    out, mass = sparse_decode(*case, scale, ps, splits=2)
    ref_out, ref_mass = sparse_decode_ref(*case, scale, ps)
    assert out.shape == (bs, q_heads, lora)
    assert torch.allclose(out, ref_out, atol=1e-4, rtol=1e-4)
    assert torch.allclose(mass, ref_mass, atol=1e-5)
    no_rope = sparse_decode_ref(case[0][..., :lora].contiguous(), case[1][..., :lora], *case[2:], scale, ps)[0]
    assert not torch.allclose(ref_out, no_rope, atol=1e-4)  # the rope columns count in the logits
