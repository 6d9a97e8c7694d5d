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

from raas_sglang.kernels.page_bounds import page_bounds_update, page_bounds_update_ref  # noqa: E402
from raas_sglang.kernels.page_scores import page_scores, page_scores_ref  # noqa: E402
from raas_sglang.kernels.sparse_decode import sparse_decode, sparse_decode_ref  # noqa: E402

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


def ragged_rows(bs, ps, slots, seed):
    """kv_indptr / kv_indices for ragged rows of whole pages (last one partial), over distinct random pages."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 5 * max(ps, 8), (bs,), generator=g)
    pages = torch.randperm(slots // ps - 1, generator=g) + 1  # page 0 is padding
    idx, used = [], 0
    for n in lens.tolist():
        npages = -(-n // ps)
        rows = pages[used : used + npages]
        used += npages
        idx.append((rows[:, None] * ps + torch.arange(ps)).flatten()[:n])
    indptr = torch.tensor([0] + torch.cumsum(lens, 0).tolist())
    return indptr.to(DEV), torch.cat(idx).to(DEV)


@pytest.mark.parametrize("bs, ps, gqa, d", _cases(False) + _cases(True))
def test_sparse_decode_matches_reference(bs, ps, gqa, d):
    slots = 2048
    torch.manual_seed(bs * 100 + ps + gqa + d)
    q = torch.randn(bs, KV_HEADS * gqa, d, device=DEV)
    k = torch.randn(slots, KV_HEADS, d, device=DEV)
    v = torch.randn(slots, KV_HEADS, d, device=DEV)
    indptr, indices = ragged_rows(bs, ps, slots, seed=bs + d)
    out, mass = sparse_decode(q, k, v, indptr, indices, d**-0.5, ps)
    ref_out, ref_mass = sparse_decode_ref(q, k, v, indptr, indices, d**-0.5, ps)
    assert torch.allclose(out, ref_out, atol=1e-4, rtol=1e-4)
    assert torch.allclose(mass, ref_mass, atol=1e-5)
    assert torch.allclose(mass.sum(1), torch.ones(bs, device=DEV), atol=1e-4)


@pytest.mark.parametrize("bs, ps, gqa, d", _cases(False) + _cases(True))
def test_page_scores_match_reference(bs, ps, gqa, d):
    torch.manual_seed(7 + bs + d)
    num_pages, P = 64, 5 + 3 * bs
    kmin = torch.randn(num_pages, KV_HEADS, d, device=DEV)
    kmax = kmin + torch.rand(num_pages, KV_HEADS, d, device=DEV)
    pages = torch.randint(1, num_pages, (bs, P), device=DEV)
    pages[:, P // 2 + bs % 3 :] = -1  # ragged: empty slots at the end of some rows
    q = torch.randn(bs, KV_HEADS * gqa, d, device=DEV)
    got = page_scores(q, kmin, kmax, pages, 0.125)
    ref = page_scores_ref(q, kmin, kmax, pages, 0.125)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    fin = torch.isfinite(ref)
    assert torch.allclose(got[fin], ref[fin], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ps, d", [(1, 64), (16, 128), (16, 64)])
def test_page_bounds_match_reference(ps, d):
    torch.manual_seed(ps + d)
    slots, kvh = 512, KV_HEADS
    kmin = torch.randn(slots // ps + 1, kvh, d, device=DEV)  # stale bounds from earlier owners
    kmax = kmin + 1
    a_min, a_max, b_min, b_max = kmin.clone(), kmax.clone(), kmin.clone(), kmax.clone()
    # a prefill of 37 tokens from page 3 on (several tokens per page), then one decode token per row
    for written in (torch.arange(3 * ps, 3 * ps + 37), torch.tensor([3 * ps + 37, 9 * ps, 12 * ps + 1])):
        keys = torch.randn(len(written), kvh, d, device=DEV)
        written = written.to(DEV)
        page_bounds_update(a_min, a_max, written, keys, ps)
        page_bounds_update_ref(b_min, b_max, written, keys, ps)
    assert torch.equal(a_min, b_min) and torch.equal(a_max, b_max)
