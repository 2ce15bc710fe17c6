"""EMSNet: export-friendly ops vs their direct formulations, budgets vs the dissertation, structure.

Every export-friendly op in ``edgevit/models/emsnet.py`` is compared with the plain PyTorch way of writing
it (``F.unfold``/``F.fold``, ``F.adaptive_avg_pool2d``, ceil-mode ``F.max_pool2d``, tap-by-tap
convolution, the spec's rank-5 C-MHSA pseudo-code); the relative error is max|a - b| / max|b|.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from edgevit.errors import InputShapeError
from edgevit.models import count_macs, count_params, create_model, get_model_card, list_models
from edgevit.models import emsnet as E

VARIANTS = ["emsnet-xxtiny", "emsnet-xtiny", "emsnet-xtiny-c192", "emsnet-tiny"]
# shared/specs/emsnet.md section 2: exact parameter counts of the reconstruction, and its MACs at 224
# (conv + linear + attention matmuls, reference path without the one-hot unfold/fold convs)
SPEC_PARAMS = {"emsnet-xxtiny": 2_528_186, "emsnet-xtiny": 2_289_247, "emsnet-xtiny-c192": 2_925_731,
               "emsnet-tiny": 5_386_375}
SPEC_GMACS = {"emsnet-xxtiny": 0.525, "emsnet-xtiny": 0.682, "emsnet-xtiny-c192": 0.708, "emsnet-tiny": 1.844}
WIDTHS = {"emsnet-xxtiny": (32, 64, 128, 192), "emsnet-xtiny": (32, 64, 96, 128),
          "emsnet-xtiny-c192": (32, 64, 96, 192), "emsnet-tiny": (64, 96, 128, 256)}
SPEC_STATE_DICT_ENTRIES = {"emsnet-xxtiny": 697, "emsnet-xtiny": 1225, "emsnet-xtiny-c192": 1225,
                           "emsnet-tiny": 1225}


@torch.no_grad()
def rel_err(actual: Tensor, reference: Tensor) -> float:
    return float((actual - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------------------
# direct ("reference") formulations
# ----------------------------------------------------------------------------------------------------------

def ref_unfold(x: Tensor, k: int, stride: int, padding: int) -> Tensor:
    """F.unfold, reshaped from (B, C*k*k, L) to the (B, C*k*k, Ho, Wo) layout of ConvUnfold."""
    ho = (x.shape[-2] + 2 * padding - k) // stride + 1
    wo = (x.shape[-1] + 2 * padding - k) // stride + 1
    cols = F.unfold(x, k, padding=padding, stride=stride)
    return cols.reshape(x.shape[0], -1, ho, wo)


def ref_fold(cols: Tensor, size: tuple[int, int], k: int, stride: int, padding: int) -> Tensor:
    return F.fold(cols.flatten(2), size, k, padding=padding, stride=stride)


def ref_ceil_maxpool(x: Tensor, p: int) -> Tensor:
    return F.max_pool2d(x, p, p, ceil_mode=True)


def ref_adaptive_avgpool(x: Tensor, p: int) -> Tensor:
    return F.adaptive_avg_pool2d(x, (math.ceil(x.shape[-2] / p), math.ceil(x.shape[-1] / p)))


def ref_coord_dw(m: E.CoordDWConv, x: Tensor) -> Tensor:
    """Horizontal then vertical depthwise conv written tap by tap (zero padding, bias after each)."""
    k = m.h.kernel_size[1]
    r = k // 2
    xp = F.pad(x, (r, r, 0, 0))
    y = sum(m.h.weight[:, 0, 0, t].view(1, -1, 1, 1) * xp[..., t:t + x.shape[-1]] for t in range(k))
    y = y + m.h.bias.view(1, -1, 1, 1)
    yp = F.pad(y, (0, 0, r, r))
    z = sum(m.v.weight[:, 0, t, 0].view(1, -1, 1, 1) * yp[..., t:t + x.shape[-2], :] for t in range(k))
    return z + m.v.bias.view(1, -1, 1, 1)


def ref_cmhsa(m: E.CMHSA, z: Tensor) -> Tensor:
    """The spec's C-MHSA pseudo-code verbatim: F.unfold -> rank-5 attention -> F.fold."""
    b, c, h1, w1 = z.shape
    h = m.heads
    dh = c // h
    a = m.attn(m.dw(z))
    n = a.shape[-2] * a.shape[-1]
    a = a.reshape(b, h, 9, 9, n).permute(0, 1, 4, 2, 3)  # (B, h, L, 9_out, 9_in)
    a = torch.softmax(a, dim=-1)
    vals = F.unfold(m.v(z), 3, padding=1, stride=2)  # (B, c*9, L)
    vals = vals.reshape(b, h, dh, 9, n).permute(0, 1, 4, 3, 2)  # (B, h, L, 9_in, dh)
    o = a @ vals
    o = o.permute(0, 1, 4, 3, 2).reshape(b, c * 9, n)
    return m.proj(F.fold(o, (h1, w1), 3, padding=1, stride=2))


def ref_gmhsa(m: E.GMHSA, z: Tensor) -> Tensor:
    """Token-major MHSA through scaled_dot_product_attention (default 1/sqrt(dh) scale)."""
    b, c, h, w = z.shape
    heads = m.heads
    tokens = m.qkv(z).flatten(2).transpose(1, 2)  # (B, N, 3c)
    q, k, v = (t.reshape(b, h * w, heads, c // heads).transpose(1, 2) for t in tokens.split(c, dim=-1))
    out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, dh)
    return m.proj(out.transpose(1, 2).reshape(b, h * w, c).transpose(1, 2).reshape(b, c, h, w))


def use_reference_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap every export-friendly op of the model for its direct formulation."""
    monkeypatch.setattr(E.CMHSA, "forward", ref_cmhsa)
    monkeypatch.setattr(E.CeilMaxPool, "forward", lambda self, x: ref_ceil_maxpool(x, self.p))
    monkeypatch.setattr(E.StaticAdaptiveAvgPool, "forward", lambda self, x: ref_adaptive_avgpool(x, self.p))
    monkeypatch.setattr(E.CoordDWConv, "forward", ref_coord_dw)


@pytest.fixture
def reference_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    use_reference_ops(monkeypatch)


# ----------------------------------------------------------------------------------------------------------
# op-level equality
# ----------------------------------------------------------------------------------------------------------

GRIDS = [(14, 14), (7, 7), (13, 10), (50, 84), (4, 4), (2, 1), (1, 1)]


@pytest.mark.parametrize("size", GRIDS)
def test_conv_unfold_equals_unfold(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, *size)
    out = E.ConvUnfold(5, 3, 2, 1)(x)
    assert rel_err(out, ref_unfold(x, 3, 2, 1)) <= 1e-6


@pytest.mark.parametrize("size", GRIDS)
def test_conv_fold_equals_fold(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    grid = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
    cols = torch.randn(2, 5 * 9, *grid)
    out = E.ConvFold(5, 3, 2, 1)(cols, size)
    assert out.shape == (2, 5, *size)
    assert rel_err(out, ref_fold(cols, size, 3, 2, 1)) <= 1e-6


def test_conv_fold_rejects_impossible_size() -> None:
    with pytest.raises(ValueError, match="cannot fold"):
        E.ConvFold(2, 3, 2, 1)(torch.zeros(1, 18, 3, 3), (9, 6))


@pytest.mark.parametrize("p", [2, 4])
@pytest.mark.parametrize("size", [(56, 56), (7, 7), (13, 10), (1, 1), (3, 5)])
def test_ceil_maxpool_equals_ceil_mode(p: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size) - 5.0  # all-negative inputs: zero padding would be caught
    assert torch.equal(E.CeilMaxPool(p)(x), ref_ceil_maxpool(x, p))


# every (H, W) -> pooled size met at 224 and at 160x224, divisible or not, plus odd ones
POOL_SIZES = [(56, 56), (28, 28), (14, 14), (7, 7), (40, 56), (5, 7), (2, 2), (1, 1), (13, 50)]


@pytest.mark.parametrize("p", [4, 6])
@pytest.mark.parametrize("size", POOL_SIZES)
def test_static_adaptive_avgpool_equals_adaptive(p: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    assert rel_err(E.StaticAdaptiveAvgPool(p)(x), ref_adaptive_avgpool(x, p)) <= 1e-6


def test_pool_matrices_are_built_once_per_size(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[tuple[int, int]] = []
    original = E._avg_matrix.__wrapped__

    def counting(n_in: int, n_out: int):
        builds.append((n_in, n_out))
        return original(n_in, n_out)

    monkeypatch.setattr(E, "_avg_matrix", counting)
    monkeypatch.setattr(E, "_AVG_MATRICES", {})
    pool = E.StaticAdaptiveAvgPool(6)
    x = torch.randn(1, 2, 56, 38)
    first = pool(x)
    with torch.inference_mode():  # a cached matrix must not become an inference tensor
        pool(x)
    second = pool(x.requires_grad_())
    second.sum().backward()
    assert builds == [(56, 10), (38, 7)]
    assert torch.equal(first, second.detach())
    cpu = torch.device("cpu")
    assert E.avg_pool_matrix(56, 10, torch.float32, cpu) is E.avg_pool_matrix(56, 10, torch.float32, cpu)


def test_coord_dwconv_equals_tap_by_tap() -> None:
    torch.manual_seed(0)
    m = E.CoordDWConv(4, 7)
    x = torch.randn(2, 4, 9, 13)
    assert rel_err(m(x), ref_coord_dw(m, x)) <= 1e-6


def test_coord_dwconv_is_a_separable_kxk_dwconv() -> None:
    """Without biases the two 1-D convs are one k x k depthwise conv with the outer-product kernel."""
    torch.manual_seed(0)
    m = E.CoordDWConv(4, 7)
    torch.nn.init.zeros_(m.h.bias)
    torch.nn.init.zeros_(m.v.bias)
    kernel = m.v.weight[:, :, :, 0:1] * m.h.weight  # (C, 1, 7, 1) * (C, 1, 1, 7) -> (C, 1, 7, 7)
    x = torch.randn(2, 4, 9, 13)
    assert rel_err(m(x), F.conv2d(x, kernel, padding=3, groups=4)) <= 1e-5


@pytest.mark.parametrize("channels,heads", [(8, 1), (16, 2), (24, 3)])
@pytest.mark.parametrize("size", [(14, 14), (7, 7), (13, 10), (4, 4), (2, 1), (1, 1)])
def test_cmhsa_equals_unfold_fold_reference(channels: int, heads: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = E.CMHSA(channels, heads)
    z = torch.randn(2, channels, *size)
    assert rel_err(m(z), ref_cmhsa(m, z)) <= 1e-5


@pytest.mark.parametrize("channels,heads", [(8, 1), (64, 2)])
@pytest.mark.parametrize("size", [(10, 10), (3, 5), (1, 1)])
def test_gmhsa_equals_sdpa(channels: int, heads: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = E.GMHSA(channels, heads)
    z = torch.randn(2, channels, *size)
    assert rel_err(m(z), ref_gmhsa(m, z)) <= 1e-5


@pytest.mark.parametrize("size", [(224, 224), (160, 224), (96, 64)])
def test_whole_model_equals_reference_formulation(size: tuple[int, int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("emsnet-xxtiny")
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        export_form = model(x)
        use_reference_ops(monkeypatch)
        reference = model(x)
    assert rel_err(export_form, reference) <= 1e-5


# ----------------------------------------------------------------------------------------------------------
# budgets
# ----------------------------------------------------------------------------------------------------------

def test_registry_lists_all_variants() -> None:
    assert list_models("EMSNet") == VARIANTS
    for name in VARIANTS:
        assert get_model_card(name).architecture == "reconstruction"
    assert "PRINTED-WIDTH" in get_model_card("emsnet-xtiny").notes
    assert "BUDGET-MATCHED" in get_model_card("emsnet-xtiny-c192").notes


@pytest.mark.parametrize("name", VARIANTS)
def test_params(name: str) -> None:
    model = create_model(name)
    params = count_params(model)
    assert params == SPEC_PARAMS[name]
    sd = model.state_dict()
    assert len(sd) == SPEC_STATE_DICT_ENTRIES[name]
    assert not any(k.endswith("kernel") for k in sd)  # one-hot unfold/fold kernels are not weights
    reported = get_model_card(name).reported.params_m * 1e6
    if name == "emsnet-xtiny":
        # Table 3.1's printed widths cannot reach the reported 3.0 M (spec section 2); pin the known gap
        assert -0.25 < params / reported - 1 < -0.22
    else:
        assert abs(params / reported - 1) <= 0.05


@pytest.mark.parametrize("name", VARIANTS)
def test_macs_vs_dissertation(name: str) -> None:
    card = get_model_card(name)
    macs = count_macs(create_model(name), (224, 224)).for_convention(card.reported.macs_convention)
    assert abs(macs / (card.reported.gmacs * 1e9) - 1) <= 0.05


@pytest.mark.parametrize("name", [VARIANTS[0], *(pytest.param(n, marks=pytest.mark.slow)
                                                  for n in VARIANTS[1:])])
def test_macs_reference_path_match_spec(name: str, reference_ops: None) -> None:
    """Without the one-hot convs (which add ~0.2 %) the count equals the spec's calibration to 0.5 %."""
    macs = count_macs(create_model(name), (224, 224)).total
    assert abs(macs / (SPEC_GMACS[name] * 1e9) - 1) <= 0.005


def test_identity_baseline_matches_table_3_9() -> None:
    """Calibration of the block skeleton: Identity() baseline 2.09 M / 0.48 G (Tables 3.5, 3.9)."""
    model = create_model("emsnet-xxtiny", mixer="identity")
    assert abs(count_params(model) / 2.09e6 - 1) <= 0.02
    assert abs(count_macs(model, (224, 224)).total / 0.48e9 - 1) <= 0.02


# ----------------------------------------------------------------------------------------------------------
# structure
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_logits_shape(name: str) -> None:
    model = create_model(name)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 96)).shape == (2, 1000)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)  # smallest input: 1x1 at stride 32


@pytest.mark.parametrize("name", VARIANTS)
def test_features_only(name: str) -> None:
    model = create_model(name, features_only=True)
    assert not any(k.startswith(model.classifier_prefixes) for k in model.state_dict())
    assert model.output_names == ["stage1", "stage2", "stage3", "stage4"]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert len(feats) == 4
    for f, stride, ch in zip(feats, model.feature_strides, model.feature_channels):
        assert f.shape == (1, ch, 64 // stride, 96 // stride)
    assert model.feature_channels == WIDTHS[name]


def test_stage_shapes_at_224() -> None:
    """Spec section 4: XXTiny stage maps at 224."""
    model = create_model("emsnet-xxtiny", features_only=True)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 224))
    expected = [(1, 32, 56, 56), (1, 64, 28, 28), (1, 128, 14, 14), (1, 192, 7, 7)]
    assert [tuple(f.shape) for f in feats] == expected


def test_head_counts() -> None:
    """h_c = C/32 per stage (C-MHSA head dim 8 on C/4 channels), h_g = max(1, C/128)."""
    model = create_model("emsnet-tiny")
    assert [s.blocks[0].mixer.cmhsa.heads for s in model.stages] == [2, 3, 4, 8]
    assert [s.blocks[0].mixer.gmhsa.heads for s in model.stages] == [1, 1, 1, 2]


def test_rejects_input_not_multiple_of_32() -> None:
    with pytest.raises(InputShapeError):
        create_model("emsnet-xxtiny")(torch.randn(1, 3, 100, 100))


def test_seeded_build_is_reproducible() -> None:
    a, b = create_model("emsnet-xxtiny", seed=3), create_model("emsnet-xxtiny", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
