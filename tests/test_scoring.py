"""Quest-style page bounds and scores (`raas_sglang.scoring`) against brute force."""

import torch

from raas_sglang.scoring import PageKeyBounds, page_shares


def test_bounds_and_upper_bound_property():
    torch.manual_seed(0)
    ps, kvh, qh, d = 4, 2, 4, 8
    b = PageKeyBounds(num_layers=2, num_slots=64, page_size=ps, kv_heads=kvh, head_dim=d)
    slots = torch.arange(8, 20)  # pages 2, 3, 4; written in two batches
    keys = torch.randn(len(slots), kvh, d)
    b.update(1, slots[:5], keys[:5])
    b.update(1, slots[5:], keys[5:])
    for page in (2, 3, 4):
        sel = (slots // ps) == page
        assert torch.equal(b.kmin[1][page], keys[sel].amin(0))
        assert torch.equal(b.kmax[1][page], keys[sel].amax(0))
    assert torch.isinf(b.kmin[0]).all(), "layer 0 untouched"

    q = torch.randn(1, qh, d)
    u = b.head_scores(1, q, torch.tensor([[2, 3, 4]]), sm_scale=0.5)  # [1, kvh, 3]
    for h in range(kvh):
        for j, page in enumerate((2, 3, 4)):
            k = keys[(slots // ps) == page][:, h]  # [t, d]
            logits = (q[0, h * 2 : h * 2 + 2] @ k.T) * 0.5  # the group's heads on the page's keys
            assert float(logits.max()) <= float(u[0, h, j]) + 1e-5


def test_reused_page_is_reset():
    b = PageKeyBounds(1, 32, 4, 1, 2)
    b.update(0, torch.tensor([4, 5, 6, 7]), torch.full((4, 1, 2), 9.0))
    b.update(0, torch.tensor([4]), torch.full((1, 1, 2), -1.0))  # page 1 freed and reused by another request
    assert b.kmin[0][1].tolist() == [[-1.0, -1.0]] and b.kmax[0][1].tolist() == [[-1.0, -1.0]]


def test_page_shares_mask_and_normalize():
    u = torch.tensor([[[1.0, 2.0, 50.0], [0.0, 0.0, 50.0]]])  # [1, 2 heads, 3 pages]
    valid = torch.tensor([[True, True, False]])
    s = page_shares(u, valid)
    assert s.shape == (1, 3) and s[0, 2] == 0
    assert torch.allclose(s.sum(), torch.tensor(1.0))
    assert s[0, 1] > s[0, 0]
    assert torch.equal(page_shares(u, torch.zeros(1, 3, dtype=torch.bool)), torch.zeros(1, 3))
