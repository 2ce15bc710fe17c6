"""S2AFormer: shapes, counts against the paper, and the export-friendly ops against their references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import edgevit
from edgevit.errors import InputShapeError
from edgevit.models import count_macs, count_params, get_model_card
from edgevit.models.layers import LayerNorm2d
from edgevit.models.s2aformer import StripSelfAttention

VARIANTS = ["s2aformer-mini", "s2aformer-t", "s2aformer-xs", "s2aformer-s", "s2aformer-m", "s2aformer-l"]
# Our counts from the spec's table (shared/specs/s2aformer.md section 4): params, conv+linear GMACs at 224.
SPEC_COUNTS = {"s2aformer-mini": (4.92, 0.424), "s2aformer-t": (5.69, 0.642), "s2aformer-xs": (6.43, 0.770),
               "s2aformer-s": (10.52, 1.352), "s2aformer-m": (25.51, 4.164), "s2aformer-l": (77.80, 12.38)}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("name", VARIANTS)
def test_params_and_macs_within_3_percent_of_paper(name: str) -> None:
    card = get_model_card(name)
    model = edgevit.create_model(name)
    params_m = count_params(model) / 1e6
    macs = count_macs(model, (224, 224))
    gmacs = macs.for_convention(card.reported.macs_convention) / 1e9
    assert abs(params_m / card.reported.params_m - 1) <= 0.03, params_m
    assert abs(gmacs / card.reported.gmacs - 1) <= 0.03, gmacs
    spec_params, spec_gmacs = SPEC_COUNTS[name]
    assert params_m == pytest.approx(spec_params, abs=0.006)
    assert gmacs == pytest.approx(spec_gmacs, abs=0.0006)


def test_paper_convention_excludes_attention_matmuls() -> None:
    # The paper's 256/224 GMACs ratio shows it counted only conv/linear (spec 6.6); our total counts more.
    macs = count_macs(edgevit.create_model("s2aformer-t"), (224, 224))
    assert macs.by_kind["matmul"] > 0
    assert macs.total == macs.conv_linear + macs.by_kind["matmul"]


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_shape_and_finite(name: str) -> None:
    model = edgevit.create_model(name)
    with torch.no_grad():
        y = model(torch.randn(2, 3, 64, 96))
    assert y.shape == (2, 1000) and torch.isfinite(y).all()


def test_features_only_returns_four_strided_maps_and_drops_head() -> None:
    model = edgevit.create_model("s2aformer-t", features_only=True)
    assert not hasattr(model, "head") and not hasattr(model, "norm")
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 256))
    assert [tuple(f.shape) for f in feats] == [(1, c, 224 // s, 256 // s) for c, s in zip((48, 64, 128, 256),
                                                                                             (4, 8, 16, 32))]
    assert model.output_names == ["stage1", "stage2", "stage3", "stage4"]
    # the backbone is the classifier model minus norm + head (spec: backbone-only T = 3.12 M)
    assert count_params(model) / 1e6 == pytest.approx(3.12, abs=0.01)


def test_num_classes_override() -> None:
    model = edgevit.create_model("s2aformer-mini", num_classes=10)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("size", [(200, 224), (224, 100), (31, 31)])
def test_inputs_that_would_be_silently_floored_are_rejected(size: tuple[int, int]) -> None:
    with pytest.raises(InputShapeError, match="multiple of 32"):
        edgevit.create_model("s2aformer-mini")(torch.randn(1, 3, *size))


def reference_ssa(attn: StripSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """SSA exactly as the spec's pseudo-code, one head at a time, with ``q @ k`` as a K=1 matmul."""
    b, c, h, w = x.shape
    d = c // attn.heads
    xr = attn.sr(x) if attn.sr is not None else x
    q, k, v = attn.q(x).flatten(2), attn.k(xr).flatten(2), attn.v(xr).flatten(2)  # (B,h,N) (B,h,N') (B,C,N')
    outs = []
    for i in range(attn.heads):
        scores = q[:, i, :, None] @ k[:, i, None, :]  # (B, N, 1) @ (B, 1, N')
        a = torch.exp(scores - scores.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)
        outs.append(a @ v[:, i * d:(i + 1) * d].transpose(1, 2))  # (B, N, d)
    o = torch.cat(outs, dim=2).transpose(1, 2).reshape(b, c, h, w)
    return attn.proj(o)


@pytest.mark.parametrize("dim,heads,sr,size", [(32, 1, 8, (32, 48)), (64, 2, 4, (16, 16)), (128, 4, 2, (8, 12)),
                                               (256, 8, 1, (7, 5))])
def test_strip_attention_equals_per_head_reference(dim: int, heads: int, sr: int, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    attn = StripSelfAttention(dim, heads, sr).eval()
    if attn.sr is not None:
        attn.sr.bn.running_mean.normal_()
        attn.sr.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, dim, *size) * 3  # large logits exercise the softmax max-subtraction
    with torch.no_grad():
        assert rel_err(attn(x), reference_ssa(attn, x)) <= 1e-5


def test_channel_layernorm_equals_explicit_statistics() -> None:
    torch.manual_seed(0)
    ln = LayerNorm2d(24, eps=1e-6)
    ln.weight.data.normal_()
    ln.bias.data.normal_()
    x = torch.randn(3, 24, 5, 7) * 4 + 2
    mean = x.mean(1, keepdim=True)
    var = x.var(1, keepdim=True, unbiased=False)
    ref = (x - mean) / torch.sqrt(var + 1e-6) * ln.weight[:, None, None] + ln.bias[:, None, None]
    assert rel_err(ln(x), ref) <= 1e-5
    # and it is not GroupNorm(1, C), which the spec warns is a different function
    assert rel_err(F.group_norm(x, 1, ln.weight, ln.bias, 1e-6), ref) > 1e-3
