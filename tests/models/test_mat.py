"""MAT: counts against the dissertation, shapes, and every export-friendly op against a direct reference.

The references here are the spec's pseudo-code written the plain way (rank-6 window view/permute, rank-5
head splits, padding by slice-assignment into zeros, abstract tokens resized on every call, the Bilinear
PE grid built from ``arange`` and sampled with ``F.grid_sample``); ``edgevit/models/mat.py`` must equal them.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

import edgevit
from edgevit.models import count_macs, count_params, get_model_card
from edgevit.models import mat
from edgevit.models.mat import (
    BilinearPatchEmbed,
    MatAttention,
    bilinear_grid_sample,
    group_windows,
    split_heads,
    ungroup_windows,
    window_partition,
    window_reverse,
)

VARIANTS = ["mat-1", "mat-2", "mat-3", "mat-4", "mat-5"]
# Our reconstruction's exact counts (shared/specs/mat.md section 2): params, state_dict entries, GMACs at 224.
SPEC_COUNTS = {
    "mat-1": (6_692_254, 359, 0.376),
    "mat-2": (10_739_374, 359, 0.649),
    "mat-3": (16_970_638, 451, 1.024),
    "mat-4": (29_001_214, 463, 1.901),
    "mat-5": (50_042_222, 451, 3.128),
}
WIDTHS = {"mat-1": 24, "mat-2": 32, "mat-3": 36, "mat-4": 48, "mat-5": 64}
PAPER_TOLERANCE = 0.05  # the bound vs Table 4.3


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


@functools.cache
def built(name: str, features_only: bool = False) -> torch.nn.Module:
    """One read-only instance per variant for the counting/shape tests (building MAT-5 takes seconds)."""
    return edgevit.create_model(name, features_only=features_only)


def perturb_offsets(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-zero Bilinear PE offsets (several pixels, some samples outside the map): zero-initialised
    offsets would only ever sample integer pixels and hide sampler bugs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, BilinearPatchEmbed):
            m.offset.weight.data.normal_(0, 0.3, generator=g)
            m.offset.bias.data.normal_(0, 1.0, generator=g)
    return model


# ---------------------------------------------------------------------------------------------------
# counts and cards
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_macs_at_224_match_spec_and_paper(name: str) -> None:
    card = get_model_card(name)
    model = built(name)
    spec_params, spec_entries, spec_gmacs = SPEC_COUNTS[name]
    params = count_params(model)
    assert params == spec_params
    assert len(model.state_dict()) == spec_entries
    assert abs(params / 1e6 / card.reported.params_m - 1) <= PAPER_TOLERANCE
    macs = count_macs(model, (224, 224))
    assert macs.by_kind.get("other", 0) == 0  # conv + linear + attention matmuls, nothing else counted
    gmacs = macs.for_convention(card.reported.macs_convention) / 1e9
    assert gmacs == pytest.approx(spec_gmacs, abs=0.0006)
    assert abs(gmacs / card.reported.gmacs - 1) <= PAPER_TOLERANCE


def test_cards_carry_the_dissertation_figures() -> None:
    reported = {n: get_model_card(n).reported for n in VARIANTS}
    assert [(r.params_m, r.gmacs, r.top1) for r in reported.values()] == [
        (6.714, 0.389, 76.3), (10.767, 0.666, 79.0), (17.008, 1.042, 80.2), (29.057, 1.933, 81.0),
        (50.108, 3.156, 81.9)]
    assert all(r.macs_convention == "all" for r in reported.values())
    assert reported["mat-2"].throughput == {"torch-cuda@Tesla V100": 4333.0}
    assert all(get_model_card(n).architecture == "reconstruction" for n in VARIANTS)


# ---------------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_logits_shape_and_finite(name: str) -> None:
    model = built(name)
    with torch.no_grad():
        y = model(torch.randn(2, 3, 64, 96))
    assert y.shape == (2, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_features_only_returns_four_strided_maps(name: str) -> None:
    model = built(name, features_only=True)
    c = WIDTHS[name]
    assert model.feature_channels == (c, 2 * c, 4 * c, 8 * c)
    assert not hasattr(model, "head") and not any(k.startswith("head.") for k in model.state_dict())
    assert model.output_names == ["stage1", "stage2", "stage3", "stage4"]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, ch, 64 // s, 96 // s) for ch, s in zip(model.feature_channels, (4, 8, 16, 32))]


def test_features_only_is_the_classifier_minus_its_head() -> None:
    full, backbone = built("mat-1"), built("mat-1", features_only=True)
    assert count_params(full) - count_params(backbone) == count_params(full.head)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(backbone(x)[-1], full.forward_features(x)[-1])


def test_num_classes_and_invalid_sampler() -> None:
    assert edgevit.create_model("mat-1", num_classes=10)(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="sampler"):
        edgevit.create_model("mat-1", sampler="nearest")


# ---------------------------------------------------------------------------------------------------
# rank <= 4 window plumbing vs the direct rank-5/6 formulations (H1)
# ---------------------------------------------------------------------------------------------------

def reference_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    b, hp, wp, d = x.shape
    x = x.view(b, hp // w, w, wp // w, w, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, d)


def reference_reverse(windows: torch.Tensor, w: int, hp: int, wp: int) -> torch.Tensor:
    d = windows.shape[-1]
    x = windows.view(-1, hp // w, wp // w, w, w, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, hp, wp, d)


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (2, 3), (4, 1)])
def test_window_partition_and_reverse_equal_rank6_reference(grid: tuple[int, int]) -> None:
    w = 7
    x = torch.randn(3, grid[0] * w, grid[1] * w, 5)
    windows = window_partition(x, w)
    assert torch.equal(windows, reference_partition(x, w))
    hp, wp = x.shape[1:3]
    assert torch.equal(window_reverse(windows, w, hp, wp), reference_reverse(windows, w, hp, wp))
    assert torch.equal(window_reverse(windows, w, hp, wp), x)


def test_head_split_and_window_grouping_equal_rank5_reference() -> None:
    b, nw, n, heads, dh = 2, 6, 49, 4, 3
    t = torch.randn(b * nw, n, 3 * heads * dh)
    ref = t.reshape(b * nw, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
    for got, want in zip(split_heads(t, 3, heads), ref):
        assert torch.equal(got, want)
    q = torch.randn(b * nw, heads, n, dh)
    grouped = q.reshape(b, nw, heads, n, dh).permute(0, 2, 1, 3, 4).reshape(b, heads, nw * n, dh)
    assert torch.equal(group_windows(q, nw), grouped)
    assert torch.equal(ungroup_windows(grouped, nw), q)


# ---------------------------------------------------------------------------------------------------
# MAT attention vs the spec's pseudo-code (padding, crop, token resize, abstraction, mixing, fusion)
# ---------------------------------------------------------------------------------------------------

def reference_mat_attention(attn: MatAttention, u: torch.Tensor) -> torch.Tensor:
    """Spec section 4 verbatim: zero-pad by slice assignment, rank-6 partition, resize every call,
    rank-5 head splits, SDPA, fusion regrouped with a rank-5 permute, crop after the reverse."""
    b, h, w, d = u.shape
    win, heads, dh = attn.window, attn.heads, d // attn.heads
    hp, wp = math.ceil(h / win) * win, math.ceil(w / win) * win
    padded = u.new_zeros(b, hp, wp, d)
    padded[:, :h, :w] = u
    gh, gw = hp // win, wp // win
    nw = gh * gw
    windows = reference_partition(padded, win)
    a0 = attn.abstract_tokens
    if tuple(a0.shape[2:]) != (gh, gw):
        a0 = F.interpolate(a0, size=(gh, gw), mode="bilinear", align_corners=False)
    a0 = a0.flatten(2).transpose(1, 2).repeat(b, 1, 1).reshape(b * nw, 1, d)
    q, k, v = attn.qkv(torch.cat([a0, windows], 1)).reshape(b * nw, -1, 3, heads, dh).permute(2, 0, 3, 1, 4)
    z = F.scaled_dot_product_attention(q, k, v)
    a1 = z[:, :, 0].reshape(b, nw, d)
    mq, mk, mv = attn.mix_qkv(attn.mix_norm(a1)).reshape(b, nw, 3, heads, dh).permute(2, 0, 3, 1, 4)
    am = a1 + attn.mix_proj(F.scaled_dot_product_attention(mq, mk, mv).transpose(1, 2).reshape(b, nw, d))
    fk, fv = attn.fuse_kv(am).reshape(b, nw, 2, heads, dh).permute(2, 0, 3, 1, 4)
    qi = q[:, :, 1:].reshape(b, nw, heads, win * win, dh).permute(0, 2, 1, 3, 4).reshape(b, heads, -1, dh)
    c = F.scaled_dot_product_attention(qi, fk, fv)
    c = c.reshape(b, heads, nw, win * win, dh).permute(0, 2, 1, 3, 4).reshape(b * nw, heads, win * win, dh)
    y = attn.proj((z[:, :, 1:] + c).transpose(1, 2).reshape(b * nw, win * win, d))
    return reference_reverse(y, win, hp, wp)[:, :h, :w]


# (H, W) of the token map: native 2x2 grid; padded and non-square; exact non-native grid; padded 1x1
@pytest.mark.parametrize("hw", [(14, 14), (12, 16), (21, 14), (4, 4)])
def test_mat_attention_equals_spec_reference(hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    attn = MatAttention(48, 6, 7, (2, 2)).eval()
    u = torch.randn(2, *hw, 48)
    with torch.no_grad():
        got, want = attn(u), reference_mat_attention(attn, u)
    assert got.shape == u.shape
    assert rel_err(got, want) <= 1e-5


def test_resized_abstract_tokens_are_cached_and_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = mat._resize_tokens
    monkeypatch.setattr(mat, "_resize_tokens", lambda t, g: calls.append(g) or real(t, g))
    torch.manual_seed(0)
    attn = MatAttention(32, 4, 7, (2, 2)).eval()
    u = torch.randn(1, 21, 28, 32)  # 3x4 window grid
    with torch.no_grad():
        first = attn(u)
        assert torch.equal(attn(u), first)
        assert calls == [(3, 4)]  # resized once, not per call
        assert "resized_tokens" not in attn.state_dict()  # a cache, never a checkpoint entry
        attn.abstract_tokens.mul_(2.0)  # e.g. load_state_dict / an optimiser step: in-place update
        second = attn(u)
        assert calls == [(3, 4), (3, 4)]
        assert rel_err(second, reference_mat_attention(attn, u)) <= 1e-5
        attn(torch.randn(1, 14, 14, 32))  # native grid uses the parameter directly
        assert len(calls) == 2


def test_training_resizes_with_gradient_into_the_parameter() -> None:
    torch.manual_seed(0)
    attn = MatAttention(32, 4, 7, (2, 2)).train()
    attn(torch.randn(1, 21, 28, 32)).sum().backward()
    assert attn.abstract_tokens.grad is not None and attn.abstract_tokens.grad.abs().sum() > 0


def test_whole_model_equals_reference_attention_at_padded_size(monkeypatch: pytest.MonkeyPatch) -> None:
    model = edgevit.create_model("mat-1")
    x = torch.randn(1, 3, 96, 128)  # stage 3: 6x8 -> 7x14 (grid 1x2), stage 4: 3x4 -> 7x7
    with torch.no_grad():
        got = model(x)
        monkeypatch.setattr(MatAttention, "forward", reference_mat_attention)
        want = model(x)
    assert rel_err(got, want) <= 1e-5


# ---------------------------------------------------------------------------------------------------
# Bilinear PE and the samplers (H4)
# ---------------------------------------------------------------------------------------------------

def _special_grid(h: int, w: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Random points in [-1.4, 1.4]^2 (outside the image too) plus pixel centres, the image borders
    (-1, +1), half a pixel outside them and points beyond the zero-padding support."""
    xs = torch.rand(n, generator=generator) * 2.8 - 1.4
    ys = torch.rand(n, generator=generator) * 2.8 - 1.4
    def centre(i: int, n: int) -> float:  # pixel i's centre in normalised coordinates, align_corners=False
        return (2 * i + 1) / n - 1

    special_x = torch.tensor([-1, 1, -1 - 1 / w, 1 + 1 / w, centre(0, w), centre(w - 1, w), -1 - 3 / w, 0.0])
    special_y = torch.tensor([-1, 1, centre(2, h), -1 - 1 / h, 1 + 1 / h, centre(h - 1, h), 0, 1 + 3 / h])
    gx = torch.cat([xs, special_x, special_x, special_x.flip(0)])
    gy = torch.cat([ys, special_y, special_y.flip(0), torch.zeros_like(special_y)])
    return torch.stack([gx, gy], -1)


@pytest.mark.parametrize("hw", [(9, 13), (1, 5), (16, 16)])
def test_manual_sampler_equals_grid_sample(hw: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    h, w = hw
    x = torch.randn(2, 5, h, w, generator=g)
    pts = _special_grid(h, w, 88, g)  # 112 points
    grid = torch.stack([pts, pts.flip(0)]).reshape(2, 8, 14, 2)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = bilinear_grid_sample(x, grid)
    assert got.shape == want.shape
    assert rel_err(got, want) <= 1e-6
    # outside the support every corner is padding: exactly zero in both
    far = torch.full((2, 1, 1, 2), 1.5)
    assert torch.equal(bilinear_grid_sample(x, far), torch.zeros(2, 5, 1, 1))


def reference_bilinear_pe(embed: BilinearPatchEmbed, x: torch.Tensor) -> torch.Tensor:
    """Spec pseudo-code: pixel reference points from arange, normalise, F.grid_sample, add, 1x1, BN."""
    _, _, h, w = x.shape
    t = embed.dw(x)
    off = embed.offset(t)
    i = torch.arange(t.shape[2], dtype=x.dtype)[:, None]
    j = torch.arange(t.shape[3], dtype=x.dtype)[None, :]
    px, py = 2 * j + off[:, 0], 2 * i + off[:, 1]
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)
    s = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return embed.norm(embed.proj(s + t))


@pytest.mark.parametrize("sampler", mat.SAMPLERS)
@pytest.mark.parametrize("hw", [(28, 28), (14, 21), (7, 9)])
def test_bilinear_pe_equals_spec_reference(sampler: str, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    embed = perturb_offsets(BilinearPatchEmbed(16, 32, sampler)).eval()
    x = torch.randn(2, 16, *hw)
    with torch.no_grad():
        got, want = embed(x), reference_bilinear_pe(embed, x)
        assert got.shape == (2, 32, math.ceil(hw[0] / 2), math.ceil(hw[1] / 2))
        assert rel_err(got, want) <= 1e-5
        assert embed.base_grid is not None and "base_grid" not in embed.state_dict()
        assert torch.equal(embed(x), got)  # cached grid gives the same numbers


def test_zero_offsets_sample_the_stride_2_pixels() -> None:
    embed = BilinearPatchEmbed(8, 16)  # offsets are zero-initialised
    x = torch.randn(1, 8, 14, 10)
    t = embed.dw(x)
    base, scale = embed._reference_grid(14, 10, t.shape[2], t.shape[3], t)
    for sample in (mat._grid_sample, bilinear_grid_sample):
        s = sample(x, base.expand(1, -1, -1, -1))
        assert (s - x[:, :, ::2, ::2]).abs().max() <= 1e-5


def test_samplers_give_the_same_model() -> None:
    x = torch.randn(1, 3, 64, 96)
    grid_model = perturb_offsets(edgevit.create_model("mat-1"))
    manual_model = perturb_offsets(edgevit.create_model("mat-1", sampler="manual"))
    with torch.no_grad():
        assert rel_err(manual_model(x), grid_model(x)) <= 1e-5


def test_prepare_static_input_caches_constants_without_side_effects() -> None:
    model = perturb_offsets(edgevit.create_model("mat-1")).train()
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    model.prepare_static_input((192, 256))  # stage 3 12x16 -> grid 2x3, stage 4 6x8 -> grid 1x2
    assert model.training
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())  # BN stats untouched
    grids = {m._resized_key[0] for m in model.modules() if isinstance(m, MatAttention)}
    assert grids == {(2, 3), (1, 2)}
    embeds = [m for m in model.modules() if isinstance(m, BilinearPatchEmbed)]
    assert [tuple(m.base_grid.shape[1:3]) for m in embeds] == [(24, 32), (12, 16), (6, 8)]
