"""Neighborhood attention (tiled, any tile size) vs a per-pixel loop built on NATTEN 0.17's own window and
bias-start formulas (tests/models/a2mamba_reference.py), with randomised bias tables."""

from __future__ import annotations

import pytest
import torch

from edgevit.models.ops.neighborhood_attention import axis_tiles, axis_window, na_av, na_plan, na_qk, tile_sizes
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
    (30, 12, 5, (1, 3)),  # rows in 3- or 4-query tiles, columns one whole class per tile: rectangular tiles
]


@pytest.mark.parametrize("h,w,kernel,dil", CASES)
def test_tiled_equals_per_pixel_loop(h: int, w: int, kernel: int, dil: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(h * 100 + w)
    b, n, dim = 2, 3, 4
    q, k, v, s = (torch.randn(b, n, h, w, dim, generator=g) for _ in range(4))
    rpb = torch.randn(n, 2 * kernel - 1, 2 * kernel - 1, generator=g)

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, n, h * w, dim)

    ref_attn = torch.softmax(na_qk_reference(q, k, kernel, dil, rpb), -1)
    # the map is reused on other values (A2SSM), so two value maps
    ref_outs = [na_av_reference(ref_attn, x, kernel, dil).reshape(b, n, h * w, dim) for x in (v, s)]
    for tile in (1, 3, 4, 7):  # 1 is the per-query gather; 3, 4 and 7 (the default) leave partial tiles
        plan = na_plan(h, w, kernel, dil, tile=tile)
        attn = torch.softmax(na_qk(flat(q), flat(k), plan, rpb), -1)
        assert attn.shape[-3:] == (plan.tiles, plan.queries, plan.keys)
        for values, ref_out in zip((v, s), ref_outs):
            assert rel_err(na_av(attn, flat(values), plan), ref_out) <= 1e-6, tile


@pytest.mark.parametrize("tile", [1, 4])
def test_logits_outside_the_window_are_masked(tile: int) -> None:
    h, w, kernel, dil = 13, 17, 5, (2, 3)
    plan = na_plan(h, w, kernel, dil, tile=tile)
    logits = na_qk(torch.zeros(1, 1, h * w, 2), torch.zeros(1, 1, h * w, 2), plan, torch.zeros(1, 9, 9))
    finite = torch.isfinite(logits).sum(-1)  # per (tile, query slot): real queries see K*K keys
    rows, cols = (axis_tiles(n, kernel, d, tile).q_real for n, d in zip((h, w), dil))
    real = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(finite.shape[-2:])
    assert (finite[0, 0][torch.from_numpy(real)] == kernel * kernel).all()


def test_plans_are_cached_per_size_dilation_and_tile() -> None:
    a = na_plan(20, 24, 7, (2, 3), tile=4)
    assert na_plan(20, 24, 7, (2, 3), tile=4) is a and na_plan(20, 24, 7, (2, 3), tile=2) is not a
    assert a.q_index.dtype == torch.int64 and a.k_index.shape == (a.tiles * a.keys,)
    assert sorted(a.out_index.tolist()) == a.out_index.unique().tolist()  # every token has its own slot


@pytest.mark.parametrize("h,w,kernel,dil,whole", [
    (14, 14, 7, (1, 1), True),  # a2mamba-n stage 3 local: one 14x14 tile
    (7, 7, 7, (1, 1), True),  # stage 4
    (5, 8, 7, (0, 1), True),  # smaller than the window
    (14, 14, 7, (2, 2), False),  # dilated: a tile per residue class
    (28, 28, 9, (1, 1), False),  # tiled
])
def test_whole_map_plans_have_identity_tables(h: int, w: int, kernel: int, dil: tuple[int, int], whole: bool) -> None:
    plan = na_plan(h, w, kernel, dil, tile=4)
    assert plan.whole_map == whole
    raster = list(range(h * w))
    tables_are_raster = [t.tolist() == raster for t in (plan.q_index, plan.k_index, plan.out_index)]
    assert tables_are_raster == [whole] * 3  # skipping the gathers is exactly right where, and only where, it is done


@pytest.mark.parametrize("length,kernel,dil,want", [
    (56, 11, 5, (12, 12)),  # a2mamba-n stage 1, dilated: classes of 11-12 members, one tile each
    (56, 11, 1, (4, 14)),  # stage 1, local: 4-query tiles, region T + K - 1
    (14, 7, 1, (14, 14)),  # stage 3, local: 14 <= 1.5 x region 10, one whole tile
    (28, 9, 1, (4, 12)),  # stage 2, local: 28 > 1.5 x 12
    (256, 11, 11, (4, 14)),  # 1024 input, stage 1, dilated: classes of 23-24 stay tiled
])
def test_tile_sizes_take_a_short_class_whole(length: int, kernel: int, dil: int, want: tuple[int, int]) -> None:
    assert tile_sizes(length, kernel, dil, 4) == want


def test_whole_class_tiles_read_each_key_once() -> None:
    tiles = axis_tiles(56, 11, 5, 4)  # classes {0,5,...,55} (12 members) and four of 11
    assert tiles.q_pos.shape == tiles.k_pos.shape == (5, 12)
    for residue in range(5):
        members = list(range(residue, 56, 5))
        assert sorted(set(tiles.k_pos[residue].tolist())) == members  # the class, once (+ masked repeats)
        assert tiles.inside[residue][:, len(members):].sum() == 0


def test_default_tile_is_smaller_on_large_maps() -> None:
    """7x7 query tiles at a 224 input's stage-1 map (56), 4x4 past LARGE_MAP_SIDE, where the logits' memory rules
    (Table VIII at 1024: a 256-token map)."""
    assert na_plan(56, 56, 11).queries == 49
    assert na_plan(256, 256, 11).queries == 16
