"""Neighborhood attention as a static gather vs a per-pixel loop built on NATTEN 0.17's own window and
bias-start formulas (tests/models/a2mamba_reference.py), with randomised bias tables."""

from __future__ import annotations

import pytest
import torch

from edgevit.models.ops.neighborhood_attention import axis_window, na_av, na_qk, na_tables
from tests.models.a2mamba_reference import na_av_reference, na_qk_reference, neighbors, rel_err


@pytest.mark.parametrize("kernel", [3, 5, 7, 9, 11])
def test_axis_tables_equal_natten_formulas(kernel: int) -> None:
    for d in range(1, 8):
        for length in range(kernel * d, kernel * d + 12):  # every length NATTEN accepts near the minimum
            pos, rel, valid = axis_window(length, kernel, d)
            assert valid.all()
            for i in range(length):
                want_pos, want_rel = neighbors(i, length, kernel, d)
                assert pos[i].tolist() == want_pos and rel[i].tolist() == want_rel, (kernel, d, length, i)


def test_small_map_extension_masks_missing_slots() -> None:
    # length 4 < kernel 7: every query sees all 4 positions; bias row = true offset
    pos, rel, valid = axis_window(4, 7, 0)
    assert pos[:, :4].tolist() == [[0, 1, 2, 3]] * 4 and not valid[:, 4:].any() and valid[:, :4].all()
    assert rel[1, :4].tolist() == [5, 6, 7, 8]
    # dilation 3 on length 10: residue classes {0,3,6,9}, {1,4,7}, {2,5,8} with kernel 5
    pos, _, valid = axis_window(10, 5, 3)
    assert pos[4, :3].tolist() == [1, 4, 7] and valid[4].tolist() == [True] * 3 + [False] * 2


CASES = [
    (14, 14, 7, (1, 1)),  # plain NA with shifted borders
    (13, 17, 5, (2, 3)),  # dilations differing per axis, classes of unequal size
    (23, 19, 7, (3, 2)),
    (9, 30, 3, (3, 4)),
    (5, 8, 7, (0, 1)),  # map smaller than the window: extension, dilation 0 -> 1
    (10, 12, 5, (3, 2)),  # dilated classes smaller than the window
    (3, 2, 11, (1, 1)),
]


@pytest.mark.parametrize("h,w,kernel,dil", CASES)
def test_gather_equals_per_pixel_loop(h: int, w: int, kernel: int, dil: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(h * 100 + w)
    b, n, dim = 2, 3, 4
    q, k, v = (torch.randn(b, n, h, w, dim, generator=g) for _ in range(3))
    rpb = torch.randn(n, 2 * kernel - 1, 2 * kernel - 1, generator=g)
    tables = na_tables(h, w, kernel, dil)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n, h * w, dim)

    ref_logits = na_qk_reference(q, k, kernel, dil, rpb).reshape(b, n, h * w, -1)
    logits = na_qk(flat(q), flat(k), tables, rpb)
    assert torch.equal(torch.isinf(logits), torch.isinf(ref_logits))
    finite = torch.isfinite(ref_logits)
    assert rel_err(logits[finite], ref_logits[finite]) <= 1e-6
    attn = torch.softmax(ref_logits, -1)
    ref_out = na_av_reference(attn.reshape(b, n, h, w, -1), v, kernel, dil).reshape(b, n, h * w, dim)
    assert rel_err(na_av(attn, flat(v), tables), ref_out) <= 1e-6


def test_tables_are_cached_per_size_and_dilation() -> None:
    a = na_tables(20, 24, 7, (2, 3))
    assert na_tables(20, 24, 7, (2, 3)) is a and a.mask is None
    assert na_tables(4, 4, 7, (1, 1)).mask is not None
    assert a.index.dtype == torch.int64 and a.index.shape == (20 * 24 * 49,)
