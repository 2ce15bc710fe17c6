"""PartialFormer: structure, counts against Table 5.1, and the export form of token separation against
a direct reference formulation (stable sort + index + index_put), ties in the context score included.

The tie rule under test: among equal context scores the *lower token index* is foreground (the order
of a stable descending sort).
"""

from __future__ import annotations

import pytest
import torch

from edgevit.errors import InputShapeError
from edgevit.models import count_macs, count_params, create_model, get_model_card, list_models
from edgevit.models import partialformer as pf
from tests.models.partialformer_reference import (
    TieRecorder,
    boundary_tie_report,
    make_attention,
    merge_heads,
    reference_order,
    reference_partial_attention,
    rel_err,
    split_heads,
    tied_scores,
    with_reference_attention,
)

VARIANTS = ["b0", "b1", "b2", "b3", "b4"]
# spec §2: exact parameter counts and MACs (GMACs, 3 decimals) of this reconstruction
SPEC_PARAMS = {"b0": 5_272_162, "b1": 8_230_044, "b2": 21_172_862, "b3": 36_364_528, "b4": 65_063_060}
SPEC_GMACS = {"b0": 0.404, "b1": 0.701, "b2": 1.916, "b3": 3.386, "b4": 6.866}
SPEC_STATE_DICT_LEN = {"b0": 422, "b1": 422, "b2": 522, "b3": 522, "b4": 472}
PAPER_TOLERANCE = 0.05  # the tolerance vs Table 5.1


# ---------------------------------------------------------------------------------------------------
# registry, counts, shapes
# ---------------------------------------------------------------------------------------------------

def test_registry_and_cards():
    assert list_models("PartialFormer") == [f"partialformer-{v}" for v in VARIANTS]
    for v in VARIANTS:
        card = get_model_card(f"PartialFormer_{v.upper()}")
        assert card.architecture == "reconstruction"
        assert card.reported.macs_convention == "all"
        assert card.min_input_size == 64 and card.input_multiple == 32
        assert "bf16" in card.notes and "fp32" in card.notes and "lower token index" in card.notes


@pytest.mark.parametrize("variant", VARIANTS)
def test_params_and_macs_at_224(variant):
    model = create_model(f"partialformer-{variant}")
    card = model.card
    params = count_params(model)
    assert params == SPEC_PARAMS[variant]
    assert abs(params / 1e6 - card.reported.params_m) <= PAPER_TOLERANCE * card.reported.params_m
    assert len(model.state_dict()) == SPEC_STATE_DICT_LEN[variant]
    macs = count_macs(model, (224, 224)).for_convention(card.reported.macs_convention) / 1e9
    assert abs(macs - card.reported.gmacs) <= PAPER_TOLERANCE * card.reported.gmacs
    assert abs(macs - SPEC_GMACS[variant]) <= 0.005 * SPEC_GMACS[variant]  # spec conformance item 2


def test_state_dict_names_follow_spec():
    keys = set(create_model("partialformer-b0").state_dict())
    for k in ["stem.proj.weight", "stem.norm.bias", "stages.1.downsample.proj.weight",
              "stages.3.downsample.norm.weight", "stages.0.blocks.1.cpe.weight", "stages.0.blocks.0.attn.qkv.weight",
              "stages.2.blocks.5.attn.abstract_token", "stages.3.blocks.0.attn.head_mlp.fc1.weight",
              "stages.3.blocks.0.attn.head_mlp.fc2.bias", "stages.1.blocks.0.attn.sqa_mlp.norm.weight",
              "stages.1.blocks.0.attn.sqa_mlp.fc2.weight", "stages.0.blocks.0.attn.proj.bias",
              "stages.0.blocks.0.mlp.fc1.weight", "norm.weight", "head.fc1.weight", "head.fc2.bias"]:
        assert k in keys, k
    assert not any(k.startswith("stages.0.downsample") for k in keys)


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_logits_shape(size):
    model = create_model("partialformer-b0", num_classes=10)
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_features_only(variant):
    model = create_model(f"partialformer-{variant}", features_only=True)
    assert not any(k.startswith(("norm.", "head.")) for k in model.state_dict())
    h, w = 64, 96
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert model.output_names == ["stage1", "stage2", "stage3", "stage4"]
    assert len(feats) == 4
    for f, s, c in zip(feats, model.feature_strides, model.feature_channels):
        assert f.shape == (1, c, h // s, w // s)
    c0 = {"b0": 24, "b1": 32, "b2": 48, "b3": 64, "b4": 96}[variant]
    assert model.feature_channels == (c0, 2 * c0, 4 * c0, 8 * c0)


def test_rejects_too_small_or_misaligned_inputs():
    model = create_model("partialformer-b0")
    with pytest.raises(InputShapeError):
        model(torch.zeros(1, 3, 32, 64))
    with pytest.raises(InputShapeError):
        model(torch.zeros(1, 3, 80, 64))


def test_num_foreground_is_static_and_capped():
    assert pf.num_foreground(3136, 49) == 49  # stage 1 at 224
    assert pf.num_foreground(49, 49) == 12  # stage 4 at 224 (A5)
    assert pf.num_foreground(4, 49) == 1
    assert pf.num_foreground(64000, 49) == 49  # stage 1 at 1280x800 stays capped
    with pytest.raises(InputShapeError):
        pf.num_foreground(3, 49)


# ---------------------------------------------------------------------------------------------------
# token selection: export form vs stable sort, ties included
# ---------------------------------------------------------------------------------------------------

def _check_selection(score: torch.Tensor, k: int) -> None:
    idx, mask = pf.select_foreground(score, k)
    ref = reference_order(score)[:, :k]
    assert idx.shape == (score.shape[0], k) and mask.shape == score.shape
    assert torch.equal(idx.sort(dim=1).values, ref.sort(dim=1).values)
    assert torch.equal(idx, idx.sort(dim=1).values)  # read out in ascending token order
    ref_mask = torch.zeros_like(mask).scatter(1, ref, True)
    assert torch.equal(mask, ref_mask) and (mask.sum(1) == k).all()


@pytest.mark.parametrize("levels", [1, 2, 3, 7])
@pytest.mark.parametrize("k", [1, 12, 49])
def test_selection_with_ties_matches_stable_sort(levels, k):
    _check_selection(tied_scores(4, 196, levels, seed=levels * 100 + k), k)


def test_selection_continuous_scores_and_boundary_ties():
    torch.manual_seed(0)
    _check_selection(torch.randn(3, 3136), 49)
    # a tie group straddling the boundary: 40 clear winners, then 30 equal tokens, the rest lower
    score = torch.full((2, 100), -1.0)
    score[:, 60:100] = 5.0
    score[0, 10:40] = 1.0
    score[1, 20:50] = 1.0
    idx, _ = pf.select_foreground(score, 49)
    assert idx[0].tolist() == list(range(10, 19)) + list(range(60, 100))
    assert idx[1].tolist() == list(range(20, 29)) + list(range(60, 100))


def test_selection_reads_half_precision_scores_in_fp32():
    t = torch.randn(2, 64, 16).half()
    score = pf.context_score(t)
    assert score.dtype == torch.float32
    assert torch.equal(score, torch.floor(t.float().mean(-1) / pf.SCORE_GRID))
    idx, mask = pf.select_foreground(score.half(), 16)  # a half score is widened, not compared in fp16
    assert idx.dtype == torch.int64 and mask.sum() == 32


def test_scores_equal_in_exact_arithmetic_tie_whatever_the_summation_order():
    """Item 5 of issue 19: tokens that are equal in exact arithmetic but were computed by different kernels
    (ulp-level differences, as GEMM tiles and CPUs produce) must get the same score, so the tie rule and
    not the kernel decides. Each row is one token in 64 channel orders and with +-2 ulp of noise."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(200, 1, 96, generator=g) * 0.7 + 0.1
    orders = torch.stack([torch.randperm(96, generator=g) for _ in range(64)])
    variants = base.expand(200, 64, 96).gather(2, orders.expand(200, 64, 96))
    ulp = torch.finfo(torch.float32).eps * variants.abs()
    variants = variants + ulp * torch.randint(-2, 3, variants.shape, generator=g)
    mean64 = base.double().mean(-1)
    # the guarantee covers ties whose exact score lies >= 1e-3 grid steps from a grid line (~99.8% of them)
    frac = (mean64 / pf.SCORE_GRID) % 1.0
    covered = ((frac > 1e-3) & (frac < 1 - 1e-3)).squeeze(1)
    assert covered.sum() > 190
    score = pf.context_score(variants)[covered]  # (covered, 64)
    assert (score == score[:, :1]).all()
    raw = variants.float().mean(-1)[covered]  # negative control: unquantised means do differ
    assert (raw != raw[:, :1]).any()


# ---------------------------------------------------------------------------------------------------
# partial attention and the whole model: export form vs reference
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,levels", [(196, 0), (196, 3), (49, 2), (3136, 0), (3136, 5)])
def test_partial_attention_matches_reference(n, levels):
    attn = make_attention()
    torch.manual_seed(1)
    u = torch.randn(2, n, 32)
    score = torch.randn(2, n) if levels == 0 else tied_scores(2, n, levels, seed=n)
    with torch.no_grad():
        out = attn(u, score)
        ref = reference_partial_attention(attn, u, score)
    assert rel_err(out, ref) <= 1e-5


def test_tie_rule_changes_the_output():
    """Negative control: the opposite tie rule gives a visibly different result, so the tie tests above
    and in the ONNX tests would catch a runtime that broke ties differently."""
    attn = make_attention()
    u = torch.randn(2, 196, 32)
    score = tied_scores(2, 196, 2, seed=3)
    with torch.no_grad():
        out = attn(u, score)
        other = reference_partial_attention(attn, u, score, lower_index_wins=False)
    assert rel_err(other, out) > 1e-2


def test_sqa_mask_equals_background_gather():
    """Masked SQA over all N keys is the SQA over the gathered background set (H2/H3)."""
    attn = make_attention()
    u = torch.randn(2, 196, 32)
    score = torch.randn(2, 196)
    with torch.no_grad():
        qkv = attn.qkv(u)
        idx, mask = pf.select_foreground(score, 49)
        z_tok = torch.randn(2, 1, 32)
        masked = attn.sqa(z_tok, qkv, mask)
        bg = reference_order(score)[:, 49:]
        qkv_b = qkv[torch.arange(2)[:, None], bg]
        d, h = 32, attn.heads
        q = split_heads(attn.qkv(z_tok)[..., :d], h)
        a = torch.softmax(q @ split_heads(qkv_b[..., d:2 * d], h).transpose(-1, -2) * attn.scale, dim=-1)
        direct = attn.sqa_mlp(merge_heads(a @ split_heads(qkv_b[..., 2 * d:], h)))
    assert rel_err(masked, direct) <= 1e-5


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_model_matches_reference(size):
    model = create_model("partialformer-b0")
    torch.manual_seed(2)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out, ref = model(x), with_reference_attention(model)(x)
    assert rel_err(out, ref) <= 1e-5


def test_model_matches_reference_on_tied_inputs(monkeypatch):
    """A constant image makes whole groups of tokens identical (exact score ties at the N_F boundary)."""
    model = create_model("partialformer-b0")
    x = torch.stack([torch.zeros(3, 128, 96), torch.full((3, 128, 96), 0.7)])
    recorder = TieRecorder()
    monkeypatch.setattr(pf, "select_foreground", recorder)
    with torch.no_grad():
        out = model(x)
    assert recorder.calls == 16 and recorder.boundary_ties > 0  # the ties really occur
    with torch.no_grad():
        ref = with_reference_attention(model)(x)
        other = with_reference_attention(model, lower_index_wins=False)(x)
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(other, ref) > 1e-3  # the tie rule matters for this input


# fp32 rounding moves the context scores by up to 0.0073 grid steps at 224 (b0, measured between batch
# compositions); a frame whose deciding scores sit >= 2.4x that from a grid line decides alike anywhere
# (the colours were picked at >= 0.02; the grey level 1.5 sits at 0.0179 at 224)
MIN_GRID_DISTANCE = 0.0175


@pytest.mark.parametrize("size", [(224, 224), (64, 64)])
def test_verification_frames_exercise_the_tie_rule_in_every_block(size):
    """The uniform frames ``edgevit verify`` runs (grey levels + the card's colours) make the tie rule decide
    a foreground slot in every block, with every near-boundary score far from a grid line, so a graph that
    breaks one block's tie rank is seen and a correct one passes on any CPU (scripts/find_tie_frames.py
    re-measures the colours when the reference weights change)."""
    from edgevit.verify import uniform_inputs

    colours = get_model_card("partialformer-b0").colours_for(size)
    assert colours, f"partialformer-b0 has no verification colours for {size}"
    model = create_model("partialformer-b0")
    for batch in (1, 2):  # a batch-1 artifact runs the first grey level only
        frames = uniform_inputs(batch, size, colours)
        ties, distance = boundary_tie_report(model, torch.from_numpy(frames))
        assert ties.any(dim=1).all(), f"batch {batch}: no tie in blocks {(~ties.any(dim=1)).nonzero().flatten()}"
        # every frame at the default size (the user's artifact); at 64x64 (a test size) the colours only: the
        # first grey level has a deciding score 0.0036 steps from a grid line in block 4 there (fp32 rounding
        # measured <= 0.0015 steps at 64x64; no grey level is >= 0.02 for every variant and size)
        checked = distance if size == (224, 224) else distance[:, batch:batch + len(colours)]
        print(f"{size} batch {batch}: nearest grid line per frame {distance.min(dim=0).values.numpy().round(4)}")
        assert checked.min() >= MIN_GRID_DISTANCE, f"batch {batch}: a score {checked.min():.4f} steps from a grid line"
