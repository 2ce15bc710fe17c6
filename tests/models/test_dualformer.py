"""DualFormer: structure, counts against the paper, and the export form of Multi-Head Partition Attention
against a direct reference formulation (integer group ids, index_add_/scatter_reduce segment ops, indexing
to scatter back, strided-slice pixel shuffle), with ties on the hyperplanes and empty groups.

The tie rule under test: a hash bit is ``[beta . x >= 0]`` (paper Eq. 4), so a token exactly on a
hyperplane, with either sign of zero, falls on the bit-1 side.
"""

from __future__ import annotations

import functools

import pytest
import torch

import edgevit
from edgevit.errors import InputShapeError
from edgevit.models import count_macs, count_params, get_model_card, list_models
from edgevit.models import dualformer as df

VARIANTS = ["dualformer-t", "dualformer-xs", "dualformer-s", "dualformer-b"]
CHANNELS = {"dualformer-t": (64, 128, 256, 320), "dualformer-xs": (64, 128, 320, 368),
            "dualformer-s": (64, 128, 320, 512), "dualformer-b": (64, 128, 368, 560)}
# this reconstruction's exact counts at 224 (params, MACs incl. the MHPA matmuls); the spec's table gives
# the same figures for T and B, XS/S use the refitted FFN ratios (7,7,4,4)
OUR_COUNTS = {"dualformer-t": (5_634_178, 1.3138), "dualformer-xs": (10_750_084, 2.2838),
              "dualformer-s": (23_029_420, 4.3594), "dualformer-b": (73_206_179, 15.6372)}
PAPER_TOLERANCE = 0.03


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


@functools.cache
def _model(name: str) -> torch.nn.Module:
    return edgevit.create_model(name)


@functools.cache
def _counts(name: str) -> tuple[int, object]:
    model = _model(name)
    return count_params(model), count_macs(model, (224, 224))


# ---------------------------------------------------------------------------------------------------
# registry, counts, shapes
# ---------------------------------------------------------------------------------------------------

def test_four_variants_registered_as_reconstructions() -> None:
    assert list_models("DualFormer") == VARIANTS
    for name in VARIANTS:
        card = get_model_card(name)
        assert card.architecture == "reconstruction" and "reconstruction" in card.notes
        assert card.reported.macs_convention == "all"  # fvcore counts matmuls (spec: GFLOPs = fvcore MACs)
        assert card.input_multiple == 32
    assert get_model_card("dualformer-xs").reported.throughput == {"torch-cuda@GPU not stated (V100 assumed)": 1253.0}
    assert [get_model_card(n).reported.top1 for n in VARIANTS] == [78.4, 81.5, 83.5, 84.8]


@pytest.mark.parametrize("name", VARIANTS)
def test_params_within_3_percent_of_paper(name: str) -> None:
    params, _ = _counts(name)
    paper = get_model_card(name).reported.params_m
    assert abs(params / 1e6 / paper - 1) <= PAPER_TOLERANCE, params
    assert params == OUR_COUNTS[name][0]


@pytest.mark.parametrize("name", VARIANTS)
def test_macs_within_3_percent_of_paper(name: str) -> None:
    _, macs = _counts(name)
    card = get_model_card(name)
    gmacs = macs.for_convention(card.reported.macs_convention) / 1e9
    assert abs(gmacs / card.reported.gmacs - 1) <= PAPER_TOLERANCE, gmacs
    assert gmacs == pytest.approx(OUR_COUNTS[name][1], abs=5e-4)
    # the convention matters little here: MHPA matmuls are < 0.5% of the total (linear in N, no N x N term)
    assert 0 < macs.by_kind["matmul"] < 0.005 * macs.total
    assert macs.total == macs.conv_linear + macs.by_kind["matmul"]


def test_spec_ffn_ratios_available_as_override() -> None:
    # the spec's XS/S ratios (8,8,4,4) and "B-uniform" are buildable; XS then leaves the 3% band (+3.2%)
    model = edgevit.create_model("dualformer-xs", ffn_ratios=(8, 8, 4, 4))
    assert count_params(model) == 10_832_388
    assert model.stages[0].blocks[0].ffn.fc1.out_channels == 8 * 64


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_shape_and_finite(name: str) -> None:
    with torch.no_grad():
        y = _model(name)(torch.randn(2, 3, 64, 96))
    assert y.shape == (2, 1000) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_features_only_returns_four_strided_maps(name: str) -> None:
    model = edgevit.create_model(name, features_only=True)
    assert not hasattr(model, "head") and model.feature_channels == CHANNELS[name]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, c, 64 // s, 96 // s) for c, s in zip(CHANNELS[name],
                                                                                       (4, 8, 16, 32))]
    assert model.output_names == ["stage1", "stage2", "stage3", "stage4"]
    head = CHANNELS[name][-1] * 1000 + 1000
    assert count_params(model) == count_params(_model(name)) - head


def test_smallest_input_and_rejected_sizes() -> None:
    model = _model("dualformer-t")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)  # stage-2 MHPA downsamples 4x4 -> 2x2
    for size in [(48, 64), (224, 100)]:  # odd stage maps would break the pixel-shuffle skip (hazard 8)
        with pytest.raises(InputShapeError, match="multiple of 32"):
            model(torch.randn(1, 3, *size))


def test_samples_in_a_batch_are_partitioned_independently() -> None:
    model = _model("dualformer-t")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert rel_err(batched, single) <= 1e-5


# ---------------------------------------------------------------------------------------------------
# hyperplanes: fixed, seeded, saved
# ---------------------------------------------------------------------------------------------------

def test_hyperplanes_are_saved_seeded_unit_vectors_independent_of_weight_seed() -> None:
    a = edgevit.create_model("dualformer-t", seed=0).state_dict()
    b = edgevit.create_model("dualformer-t", seed=1).state_dict()
    betas = [k for k in a if k.endswith("mhpa.beta")]
    assert len(betas) == 10 and "stages.0.blocks.0.mhpa.beta" in betas
    assert not any(k.endswith(("powers", "group_ids")) for k in a)  # constants are not checkpoint state
    for k in betas:
        assert a[k].shape == (8, a[k].shape[1], 2)
        assert torch.equal(a[k], b[k])  # the planes do not depend on the weight-init seed
        assert torch.allclose(a[k].norm(dim=1), torch.ones(8, 2))
    assert not torch.equal(a[betas[0]], a[betas[1]])  # every block hashes with its own planes
    assert not torch.equal(a["stages.0.blocks.0.mhpa.value.weight"], b["stages.0.blocks.0.mhpa.value.weight"])
    assert torch.equal(a[betas[0]], df.hyperplanes(8, 4, 2, df.HASH_SEED))


def test_loaded_hyperplanes_are_used() -> None:
    model = edgevit.create_model("dualformer-t")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        sd = model.state_dict()
        sd["stages.2.blocks.0.mhpa.beta"] = -sd["stages.2.blocks.0.mhpa.beta"]  # swaps groups 0<->3, 1<->2
        sd["stages.2.blocks.1.mhpa.beta"] = torch.roll(sd["stages.2.blocks.1.mhpa.beta"], 1, dims=1)
        model.load_state_dict(sd)
        assert not torch.allclose(model(x), before)


# ---------------------------------------------------------------------------------------------------
# reference formulation: integer group ids and index-based segment ops
# ---------------------------------------------------------------------------------------------------

def reference_group_ids(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """(B,h,N) int64 hash codes: ``sum_b 2^b [beta_b . x >= 0]`` with the dot product summed explicitly."""
    proj = (x.unsqueeze(-1) * beta.unsqueeze(1)).sum(dim=-2)  # (B,h,N,bits)
    bits = (proj >= 0).long()
    return (bits << torch.arange(beta.shape[-1])).sum(dim=-1)


def reference_pool(x: torch.Tensor, t: torch.Tensor, beta: torch.Tensor, imp: torch.nn.Module, k: int):
    """Group ids, (intra, inter) proxies (B,h,K,dh) and the per-token scatter back (B,h,N,2dh), computed
    with ``index_add_`` (segment sums/counts), ``scatter_reduce(amax)`` (segment max) and indexing."""
    b, h, n, dh = x.shape
    gid = reference_group_ids(x, beta)
    seg = (torch.arange(b * h).view(b, h, 1) * k + gid).reshape(-1)  # one segment per (sample, head, group)
    xf, tf = x.reshape(-1, dh), t.reshape(-1, dh)
    s = b * h * k
    count = torch.zeros(s).index_add_(0, seg, torch.ones(seg.numel()))
    gmax = torch.full((s, dh), float("-inf")).scatter_reduce(0, seg[:, None].expand(-1, dh), xf, "amax")
    e = torch.exp(xf - gmax[seg])
    num = torch.zeros(s, dh).index_add_(0, seg, e * tf)
    den = torch.zeros(s, dh).index_add_(0, seg, e)
    nonempty = count > 0
    intra = torch.where(nonempty[:, None], num / den, torch.zeros(()))
    mean = torch.where(nonempty[:, None], torch.zeros(s, dh).index_add_(0, seg, tf) / count[:, None],
                       torch.zeros(()))
    m = imp(mean).reshape(b * h, k)
    m = torch.where(nonempty.view(b * h, k), m, torch.zeros(()))
    inter = mean.view(b * h, k, dh) * (m / m.sum(dim=1, keepdim=True))[..., None]
    inter = inter.reshape(s, dh)
    tokens = torch.cat((intra[seg], inter[seg]), dim=-1).view(b, h, n, 2 * dh)
    return gid, intra.view(b, h, k, dh), inter.view(b, h, k, dh), tokens


def reference_pixel_shuffle(y: torch.Tensor, s: int) -> torch.Tensor:
    """out[c, i*s + a, j*s + b] = y[c*s*s + a*s + b, i, j], written with strided slices."""
    bsz, cs2, h, w = y.shape
    c = cs2 // (s * s)
    out = torch.empty(bsz, c, h * s, w * s)
    for a in range(s):
        for bb in range(s):
            out[:, :, a::s, bb::s] = y[:, a * s + bb::s * s]
    return out


def reference_mhpa(m: df.PartitionAttention, x: torch.Tensor) -> torch.Tensor:
    """MHPA with the reference pooling, per-head channel slicing and the strided-slice pixel shuffle."""
    xs = m.down(x) if m.down is not None else x
    b, d, hs, ws = xs.shape
    dh = d // m.heads
    t = m.value(xs)
    xh = torch.stack([xs[:, i * dh:(i + 1) * dh].flatten(2).transpose(1, 2) for i in range(m.heads)], 1)
    th = torch.stack([t[:, i * dh:(i + 1) * dh].flatten(2).transpose(1, 2) for i in range(m.heads)], 1)
    *_, tokens = reference_pool(xh, th, m.beta, m.imp, len(m.group_ids))
    intra_maps = [tokens[:, i, :, :dh].transpose(1, 2).reshape(b, dh, hs, ws) for i in range(m.heads)]
    inter_maps = [tokens[:, i, :, dh:].transpose(1, 2).reshape(b, dh, hs, ws) for i in range(m.heads)]
    y = m.fuse(torch.cat(intra_maps + inter_maps, dim=1))
    if m.c2s is not None:
        y = reference_pixel_shuffle(m.c2s(y), m.down[0].stride[0])
    return y + x


def _mhpa(dim: int, down: int, seed: int = 0) -> df.PartitionAttention:
    torch.manual_seed(seed)
    m = df.PartitionAttention(dim, 8, down, hash_seed=seed).eval()
    for p in m.parameters():  # non-trivial biases and BN statistics
        p.data.normal_(0, 0.3)
    if m.down is not None:
        m.down.bn.running_mean.normal_()
        m.down.bn.running_var.uniform_(0.5, 2.0)
    return m


def _export_form(m: df.PartitionAttention, x: torch.Tensor, t: torch.Tensor):
    a = df.lsh_partition(x, m.beta, m.powers, m.group_ids)
    intra, inter = df.partition_pool(x, t, a, m.imp)
    return a, intra, inter, a @ torch.cat((intra, inter), dim=-1)


def assert_pool_matches_reference(m: df.PartitionAttention, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        a, intra, inter, tokens = _export_form(m, x, t)
        gid, r_intra, r_inter, r_tokens = reference_pool(x, t, m.beta, m.imp, 4)
    assert torch.equal(a, torch.nn.functional.one_hot(gid, 4).float())  # exact group assignment
    for ours, ref in [(intra, r_intra), (inter, r_inter), (tokens, r_tokens)]:
        assert torch.isfinite(ours).all()
        assert rel_err(ours, ref) <= 1e-5
    return gid


def test_tie_rule_on_a_handcrafted_case() -> None:
    beta = torch.eye(2).view(1, 2, 2)  # bit b = [x_b >= 0]
    x = torch.tensor([[0.0, 0.0], [-0.0, 1.0], [-1.0, 0.0], [1.0, -0.0], [2.0, -3.0], [-1.0, -1.0]])
    x = x.view(1, 1, 6, 2)
    a = df.lsh_partition(x, beta, torch.tensor([1.0, 2.0]), torch.arange(4.0))
    assert a.argmax(-1).flatten().tolist() == [3, 3, 2, 3, 1, 0]
    assert torch.equal(a.sum(-1), torch.ones(1, 1, 6))
    assert reference_group_ids(x, beta).flatten().tolist() == [3, 3, 2, 3, 1, 0]
    # negative hyperplanes turn +0 into -0: still on the >= 0 side
    flipped = df.lsh_partition(x, -beta, torch.tensor([1.0, 2.0]), torch.arange(4.0))
    assert flipped.argmax(-1).flatten()[0] == 3


def test_partition_pool_equals_reference_random() -> None:
    m = _mhpa(64, 1)
    torch.manual_seed(1)
    x, t = torch.randn(2, 8, 50, 8), torch.randn(2, 8, 50, 8)
    gid = assert_pool_matches_reference(m, x, t)
    assert gid.unique().numel() == 4


def test_partition_pool_equals_reference_with_ties_on_hyperplanes() -> None:
    m = _mhpa(64, 1)
    signs = torch.tensor([1.0, -1.0]).repeat(8, 1)  # +e_0 and -e_1: -e_1 . x gives -0.0 where x_1 == 0
    beta = torch.zeros(8, 8, 2)
    beta[:, 0, 0], beta[:, 1, 1] = signs[:, 0], signs[:, 1]
    m.beta.copy_(beta)
    torch.manual_seed(2)
    x = torch.randn(2, 8, 40, 8)
    x[..., :2] = torch.randint(-1, 2, (2, 8, 40, 2)).float()  # a third of the coordinates exactly 0
    x[0, :, :5, :2] = 0.0  # tokens on both hyperplanes
    x[1, :, :5, :2] = -0.0
    t = torch.randn(2, 8, 40, 8)
    gid = assert_pool_matches_reference(m, x, t)
    on_both = gid[:, :, :5]
    assert (on_both == 3).all()  # ties resolve to bit 1 on every plane


def test_partition_pool_equals_reference_with_empty_groups() -> None:
    m = _mhpa(64, 1)
    m.beta.copy_(torch.zeros(8, 8, 2))
    m.beta[:, 0, 0] = 1.0
    m.beta[:, 1, 1] = 1.0
    torch.manual_seed(3)
    x, t = torch.randn(2, 8, 30, 8), torch.randn(2, 8, 30, 8)
    x[..., 1] = x[..., 1].abs()  # bit 1 always set: groups 0 and 1 are empty
    x[0, 0, :, 0] = x[0, 0, :, 0].abs()  # one head with a single non-empty group
    gid = assert_pool_matches_reference(m, x, t)
    assert set(gid.unique().tolist()) == {2, 3} and (gid[0, 0] == 3).all()
    with torch.no_grad():
        _, intra, inter, _ = _export_form(m, x, t)
    assert (intra[:, :, :2] == 0).all() and (inter[:, :, :2] == 0).all()
    # a lone non-empty group carries all the importance: inter == its mean
    assert rel_err(inter[0, 0, 3], t[0, 0].mean(0)) <= 1e-6


def test_partition_pool_equals_reference_with_extreme_ranges() -> None:
    # a group far below the global channel max underflows if the softmax is shifted by the global max;
    # the per-group max keeps every group exact
    m = _mhpa(64, 1)
    torch.manual_seed(4)
    x, t = torch.randn(1, 8, 64, 8) * 300, torch.randn(1, 8, 64, 8)
    assert_pool_matches_reference(m, x, t)


@pytest.mark.parametrize("dim,down,size", [(32, 2, (16, 16)), (64, 2, (8, 12)), (128, 1, (7, 7)),
                                           (184, 1, (4, 6))])
def test_mhpa_equals_reference(dim: int, down: int, size: tuple[int, int]) -> None:
    m = _mhpa(dim, down, seed=dim)
    x = torch.randn(2, dim, *size)
    with torch.no_grad():
        ours, ref = m(x), reference_mhpa(m, x)
    assert ours.shape == x.shape
    assert rel_err(ours, ref) <= 1e-5


def test_pixel_shuffle_equals_strided_reference() -> None:
    y = torch.randn(2, 12, 3, 5)
    assert torch.equal(torch.nn.PixelShuffle(2)(y), reference_pixel_shuffle(y, 2))
