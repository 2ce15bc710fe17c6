"""A2Mamba: official key layout and counts, shapes at any size, and logits equal to a direct
re-statement of the official forward (tests/models/a2mamba_reference.py) with every tensor randomised."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import edgevit
from edgevit import pipeline
from edgevit.models import count_macs, count_params, get_model_card, load_checkpoint
from edgevit.models.a2mamba import (
    _VARIANTS,
    A2Mamba,
    _bicubic_matrix_np,
    adaptive_dilation,
    resize_token_bias,
)
from tests.models.a2mamba_reference import (
    CONFIGS,
    official_layout,
    random_state_dict,
    reference_forward,
    rel_err,
)

VARIANTS = ["n", "t", "s", "b", "l"]
# spec §1: unique parameters and state_dict entries of the official code
OFFICIAL_COUNTS = {"n": (4_195_052, 627), "t": (15_365_506, 711), "s": (30_672_834, 1011),
                   "b": (51_134_464, 1295), "l": (93_737_376, 1571)}
# spec §1 "MACs at 224 (conv + matmul + NA, our count)", GMACs to the spec's precision
SPEC_GMACS = {"n": 0.81, "t": 2.69, "s": 5.35, "b": 11.4, "l": 17.3}
# Paper Table II GFLOPs at 224 vs ours: B is +6.5% because the paper's figure matches MLP ratio 3 in
# stages 3-4 while the code (and checkpoint) use 3.75 (spec §1); the others agree within rounding.
PAPER_GMACS_TOL = {"n": 0.03, "t": 0.03, "s": 0.03, "b": 0.08, "l": 0.03}


def _model(v: str, **kw: object) -> torch.nn.Module:
    return edgevit.create_model(f"a2mamba-{v}", **kw)


@pytest.mark.parametrize("v", VARIANTS)
def test_state_dict_is_the_official_layout_and_counts(v: str) -> None:
    model = _model(v)
    sd = model.state_dict()
    assert {k: tuple(t.shape) for k, t in sd.items()} == official_layout(CONFIGS[v])
    params, entries = OFFICIAL_COUNTS[v]
    assert count_params(model) == params
    assert len(sd) == entries
    card = get_model_card(f"a2mamba-{v}")
    # the paper reports params rounded to whole millions; L's Table II "95" is Table I's other config
    assert abs(params / 1e6 - card.reported.params_m) <= (1.3 if v == "l" else 0.5)


@pytest.mark.parametrize("v", VARIANTS)
def test_random_official_state_dict_loads_strictly(v: str) -> None:
    model = _model(v)
    sd = random_state_dict(CONFIGS[v], seed=3)
    model.load_state_dict(sd, strict=True)
    block = model.layers[6].blocks[0].token_mixer
    assert block.rpb[0] is block.rpb[1]
    assert torch.equal(block.rpb[0], sd["layers.6.blocks.0.token_mixer.rpb.0"])


@pytest.mark.parametrize("v", VARIANTS)
def test_macs_match_spec_and_paper(v: str) -> None:
    card = get_model_card(f"a2mamba-{v}")
    assert card.reported.macs_convention == "all"
    macs = count_macs(_model(v), (224, 224))
    gmacs = macs.for_convention("all") / 1e9
    assert gmacs == pytest.approx(SPEC_GMACS[v], rel=0.01)
    assert abs(gmacs / card.reported.gmacs - 1) <= PAPER_GMACS_TOL[v], gmacs
    # the scan is counted through its registered formula (7 MACs per element, official fvcore convention)
    assert macs.by_kind["other"] > 0 and macs.by_kind["matmul"] > 0


def test_nano_macs_breakdown_counts_neighborhood_attention_and_scan() -> None:
    macs = count_macs(_model("n"), (224, 224))
    cfg = CONFIGS["n"]
    scan = sum(7 * c * (224 // 2 ** (s + 2)) ** 2 * d
               for s, (c, d) in enumerate(zip(cfg.dims[:3], cfg.depths)))
    assert macs.by_kind["other"] == scan


def test_card_accepts_any_size_from_64() -> None:
    card = get_model_card("a2mamba-n")
    assert card.architecture == "official" and card.input_multiple == 1 and card.min_input_size == 64
    assert pipeline.parse_input_size("200x260", card) == (200, 260)
    assert "crop_pct 0.9" in card.notes and "crop_pct 0.975" in get_model_card("a2mamba-l").notes


@pytest.mark.parametrize("size", [(64, 64), (65, 97), (96, 64)])
def test_features_only_four_maps_ceil_strides(size: tuple[int, int]) -> None:
    model = _model("n", features_only=True)
    assert not hasattr(model, "classifier")
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    h, w = size
    assert [tuple(f.shape) for f in feats] == [
        (1, c, -(-h // s), -(-w // s)) for c, s in zip(model.feature_channels, (4, 8, 16, 32))
    ]
    assert model.feature_channels == CONFIGS["n"].dims


def test_features_only_loads_a_classification_checkpoint(tmp_path: Path) -> None:
    sd = random_state_dict(CONFIGS["n"], seed=5)
    path = tmp_path / "a2mamba_nano.pth"
    torch.save({"model": sd}, path)
    model = _model("n", features_only=True)
    load_checkpoint(model, path)  # strict, classifier.* dropped by classifier_prefixes
    assert set(model.state_dict()) == {k for k in sd if not k.startswith("classifier.")}


def test_num_classes_override() -> None:
    with torch.no_grad():
        assert _model("n", num_classes=10)(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("size", [(224, 224), (256, 256), (224, 320), (200, 260), (128, 128)])
def test_official_weights_give_finite_logits(size: tuple[int, int]) -> None:
    model = _model("n")
    model.load_state_dict(random_state_dict(CONFIGS["n"], seed=7), strict=True)
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


# Reference equality. 224: NATTEN-valid everywhere (dilations (5,5),(3,3),(2,2),(1,1)); 200x260: odd,
# non-square, dilations differing per axis; 224x320: global bias resized to 70x70; 64x96 and 96x65:
# maps smaller than the windows (small-map extension) from stage 2 on.
@pytest.mark.parametrize("size", [(224, 224), (200, 260), (64, 96), (96, 65)])
def test_logits_equal_direct_reference_nano(size: tuple[int, int]) -> None:
    sd = random_state_dict(CONFIGS["n"], seed=11)
    model = _model("n")
    model.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    ref_logits, ref_feats = reference_forward(sd, x, CONFIGS["n"])
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats[-1])
    assert rel_err(logits, ref_logits) <= 1e-4
    for f, r in zip(feats, ref_feats):
        assert rel_err(f, r) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("v,size", [("n", (224, 320)), ("s", (64, 64)), ("b", (64, 64))])
def test_logits_equal_direct_reference_slow(v: str, size: tuple[int, int]) -> None:
    # S exercises "resscale", B "layerscale"; 224x320 resizes the global bias.
    sd = random_state_dict(CONFIGS[v], seed=13)
    model = _model(v)
    model.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    ref_logits, _ = reference_forward(sd, x, CONFIGS[v])
    with torch.no_grad():
        assert rel_err(model(x), ref_logits) <= 1e-4


@pytest.mark.parametrize("v", ["s", "b"])
def test_layer_scale_modes_match_reference_small(v: str) -> None:
    # resscale (S stages 3-4) and layerscale (B), one block per stage, 64x64
    cfg = dataclasses.replace(CONFIGS[v], depths=(1, 1, 1, 1))
    var = next(x for x in _VARIANTS if x.name == v)
    model = A2Mamba(var.dims, cfg.depths, var.heads, var.mlp_ratios, scale_modes=var.scale_modes,
                    init_values=var.init_values).eval()
    sd = random_state_dict(cfg, seed=17)
    model.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    ref_logits, _ = reference_forward(sd, x, cfg)
    with torch.no_grad():
        assert rel_err(model(x), ref_logits) <= 1e-4


def test_adaptive_dilation_rule() -> None:
    # spec §3.2 and §6: 224 -> (5, 3, 2, 1); 512 -> (11, 7, 4, 2); 1024 -> (11, 9, 7, 4)
    for side, want in ((224, (5, 3, 2, 1)), (512, (11, 7, 4, 2)), (1024, (11, 9, 7, 4))):
        got = tuple(adaptive_dilation(side // 2 ** (s + 2), k) for s, k in enumerate((11, 9, 7, 7)))
        assert got == want


@pytest.mark.parametrize("out_size", [4, 49, 63, 70, 256])
def test_bicubic_matrices_equal_interpolate(out_size: int) -> None:
    bias = torch.randn(1, 3, 49, 49, dtype=torch.float64)
    mat = torch.from_numpy(_bicubic_matrix_np(out_size, 49)[0])
    want = F.interpolate(bias, size=(out_size, out_size), mode="bicubic", align_corners=False)
    assert rel_err(mat @ bias @ mat.T, want) <= 1e-12


def test_resize_token_bias_eager_is_interpolate() -> None:
    bias = torch.randn(1, 2, 49, 49)
    want = F.interpolate(bias, size=(70, 70), mode="bicubic", align_corners=False)
    assert torch.equal(resize_token_bias(bias, 70), want)


@pytest.mark.slow
@pytest.mark.parametrize("v", VARIANTS)
def test_torch_compile_matches_eager(v: str) -> None:
    # issue 20: dynamo used to fail on the NumPy-backed index tables; fullgraph proves no graph break
    model = _model(v)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True)(x)
    assert rel_err(got, want) <= 1e-4
