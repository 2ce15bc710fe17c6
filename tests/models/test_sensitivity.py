"""Sensitivity guarantee (issue 19): with the reference weights, knocking out or perturbing any single
export-friendly operation of a family moves its logits by at least 100x the verification tolerance.

If an operation's effect were below the tolerance, an exported graph that got it wrong would still pass
``edgevit verify``; this suite fails instead. Each knock-out is a plain PyTorch change of one op (a
monkeypatched function or forward), applied to the family's smallest variant at 64x64, batch 1.
Run with ``-rP`` to see the measured relative changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevit.models import a2mamba, dualformer, emsnet, layers, mat, partialformer
from edgevit.models import create_model
from edgevit.verify import seeded_inputs

VERIFY_RTOL = 1e-4
REQUIRED = 100 * VERIFY_RTOL
SIZE = (64, 64)


@functools.lru_cache(maxsize=None)
def _model_and_logits(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = create_model(name)
    x = torch.from_numpy(seeded_inputs(1, SIZE, seed=0))
    with torch.no_grad():
        return model, x, model(x)


def _rel_change(name: str, patch: Callable[[pytest.MonkeyPatch], None], monkeypatch: pytest.MonkeyPatch) -> float:
    model, x, ref = _model_and_logits(name)
    with monkeypatch.context() as mp:
        patch(mp)
        with torch.no_grad():
            out = model(x)
    change = float((out - ref).abs().max() / ref.abs().max())
    return change if change == change else float("inf")  # NaN: the knock-out broke the model outright


def _identity_forward(self: nn.Module, x: torch.Tensor, *args: object) -> torch.Tensor:
    return x


def _scan_without_recurrence(u, delta, A, Bs, delta_bias):  # h_t = dt*B*u_t: the state carries nothing
    dt = F.softplus(delta + delta_bias.reshape(-1, 1))
    return Bs * dt * u


def _shifted_scan(u, delta, A, Bs, delta_bias):  # exclusive scan (state before the step), as CumSum exclusive=1
    h = _ORIG_SCAN(u, delta, A, Bs, delta_bias)
    return F.pad(h[..., :-1], (1, 0))


def _grid_sample_nearest(x, grid):
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _select_first_tokens(score, k):  # TopK ignored: the first k tokens are the foreground
    idx = torch.arange(k).expand(score.shape[0], k)
    return idx, torch.zeros_like(score, dtype=torch.bool).scatter(1, idx, True)


def _select_lowest(score, k):  # TopK with largest=0
    return _ORIG_SELECT(-score, k)


_ORIG_SELECT = partialformer.select_foreground
_ORIG_SCAN = a2mamba.selective_scan


def _one_group(x, beta, powers, group_ids):  # LSH grouping knocked out: every token in partition 0
    return (torch.zeros_like(x[..., :1]) == group_ids).to(x.dtype)


def _one_bit(x, beta, powers, group_ids):  # LSH with one hyperplane: 2 partitions instead of 4
    # (flipping every bit instead would only rename the partitions, which MHPA is invariant to)
    return _ORIG_LSH(x, beta, powers * torch.tensor([1.0, 0.0]), group_ids)


_ORIG_LSH = dualformer.lsh_partition


def _transposed_windows(x, window):  # window partition of the transposed map
    return _ORIG_PARTITION(x.transpose(1, 2).contiguous(), window)


_ORIG_PARTITION = mat.window_partition


def _plain_sigmoid_gate(self, x):  # SE gate knocked out: multiply by 1
    return x


def _ones_importance(self, x):
    return torch.ones_like(x[..., :1])


def _mirrored_unfold(self, x):  # unfold with its taps in reverse order
    return F.conv2d(x, self.kernel.flip(-1, -2), None, self.stride, self.padding, groups=self.channels)


_ORIG_FOLD = emsnet.ConvFold.forward


def _mirrored_fold(self, cols, output_size):
    k = self.kernel_size
    b, ckk, h2, w2 = cols.shape
    cols = cols.reshape(b, ckk // (k * k), k * k, h2, w2).flip(2).reshape(b, ckk, h2, w2)
    return _ORIG_FOLD(self, cols, output_size)


def _uniform_softmax(x, dim=-1, **kw):
    return torch.full_like(x, 1.0 / x.shape[dim])


KNOCKOUTS: dict[str, dict[str, Callable[[pytest.MonkeyPatch], None]]] = {
    "a2mamba-n": {
        "scan zeroed": lambda mp: mp.setattr(a2mamba, "selective_scan", lambda u, *a: torch.zeros_like(u)),
        "scan without recurrence": lambda mp: mp.setattr(a2mamba, "selective_scan", _scan_without_recurrence),
        "scan exclusive": lambda mp: mp.setattr(a2mamba, "selective_scan", _shifted_scan),
        "neighbourhood gather (av) skipped": lambda mp: mp.setattr(a2mamba, "na_av", lambda attn, v, t: v),
        "relative position bias dropped": lambda mp: mp.setattr(a2mamba, "na_qk", _na_qk_without_bias),
        "SiLU gate = 1": lambda mp: mp.setattr(nn.SiLU, "forward", lambda self, x: torch.ones_like(x)),
        "LayerNorm2d identity": lambda mp: mp.setattr(layers.LayerNorm2d, "forward", _identity_forward),
        "BatchNorm identity": lambda mp: mp.setattr(nn.BatchNorm2d, "forward", _identity_forward),
    },
    "mat-1": {
        "sampler nearest": lambda mp: mp.setattr(mat, "_grid_sample", _grid_sample_nearest),
        "sampling offsets zero": lambda mp: mp.setattr(
            mat.BilinearPatchEmbed, "forward", _mat_embed_without_offsets),
        "window partition transposed": lambda mp: mp.setattr(mat, "window_partition", _transposed_windows),
        "attention softmax uniform": lambda mp: mp.setattr(mat.torch, "softmax", _uniform_softmax),
        "LayerNorm identity": lambda mp: mp.setattr(nn.LayerNorm, "forward", _identity_forward),
        "BatchNorm identity": lambda mp: mp.setattr(nn.BatchNorm2d, "forward", _identity_forward),
    },
    "partialformer-b0": {
        "TopK ignored (first k tokens)": lambda mp: mp.setattr(partialformer, "select_foreground",
                                                               _select_first_tokens),
        "TopK largest=0": lambda mp: mp.setattr(partialformer, "select_foreground", _select_lowest),
        "SQA output dropped": lambda mp: mp.setattr(partialformer.PartialAttention, "sqa",
                                                    lambda self, z, qkv, m: torch.zeros_like(z)),
        "LayerNorm identity": lambda mp: mp.setattr(nn.LayerNorm, "forward", _identity_forward),
        "LayerNorm2d identity": lambda mp: mp.setattr(layers.LayerNorm2d, "forward", _identity_forward),
        "attention softmax uniform": lambda mp: mp.setattr(partialformer.torch, "softmax", _uniform_softmax),
    },
    "dualformer-t": {
        "LSH grouping: one group": lambda mp: mp.setattr(dualformer, "lsh_partition", _one_group),
        "LSH second bit dropped": lambda mp: mp.setattr(dualformer, "lsh_partition", _one_bit),
        "importance gate = 1": lambda mp: mp.setattr(dualformer.Importance, "forward", _ones_importance),
        "SE gate = 1": lambda mp: mp.setattr(layers.SqueezeExcite, "forward", _plain_sigmoid_gate),
        "pixel shuffle identity order": lambda mp: mp.setattr(
            nn.PixelShuffle, "forward", lambda self, x: F.pixel_shuffle(
                x.reshape(x.shape[0], -1, self.upscale_factor ** 2, *x.shape[2:]).transpose(1, 2).reshape(x.shape),
                self.upscale_factor)),
        "LayerNorm2d identity": lambda mp: mp.setattr(layers.LayerNorm2d, "forward", _identity_forward),
        "BatchNorm identity": lambda mp: mp.setattr(nn.BatchNorm2d, "forward", _identity_forward),
    },
    "emsnet-xxtiny": {
        "unfold taps mirrored": lambda mp: mp.setattr(emsnet.ConvUnfold, "forward", _mirrored_unfold),
        "fold taps mirrored": lambda mp: mp.setattr(emsnet.ConvFold, "forward", _mirrored_fold),
        "static sigmoid gate = 1": lambda mp: mp.setattr(emsnet.torch, "sigmoid", torch.ones_like),
        "C-MHSA softmax uniform": lambda mp: mp.setattr(emsnet.torch, "softmax", _uniform_softmax),
        "ceil max-pool as avg-pool": lambda mp: mp.setattr(
            emsnet.CeilMaxPool, "forward", lambda self, x: F.avg_pool2d(x, self.p, self.p, ceil_mode=True)),
        "BatchNorm identity": lambda mp: mp.setattr(nn.BatchNorm2d, "forward", _identity_forward),
    },
    "s2aformer-mini": {
        "strip attention uniform": lambda mp: mp.setattr(torch, "softmax", _uniform_softmax),
        "spatial reduction skipped": lambda mp: mp.setattr(
            layers.ConvBN, "forward", _convbn_unless_reduction),
        "SE gate = 1": lambda mp: mp.setattr(layers.SqueezeExcite, "forward", _plain_sigmoid_gate),
        "LayerNorm2d identity": lambda mp: mp.setattr(layers.LayerNorm2d, "forward", _identity_forward),
        "BatchNorm identity": lambda mp: mp.setattr(nn.BatchNorm2d, "forward", _identity_forward),
    },
}


def _na_qk_without_bias(q, k, tables, rpb=None):
    return _ORIG_NA_QK(q, k, tables, None)


_ORIG_NA_QK = a2mamba.na_qk
_ORIG_CONVBN_FORWARD = nn.Sequential.forward


def _convbn_unless_reduction(self, x):
    """S2AFormer's strided depth-wise reduction replaced by strided sub-sampling (keeps shapes)."""
    conv = self.conv
    if conv.groups > 1 and conv.stride[0] > 1 and conv.kernel_size[0] == conv.stride[0]:
        return x[:, :, ::conv.stride[0], ::conv.stride[1]]
    return _ORIG_CONVBN_FORWARD(self, x)


def _mat_embed_without_offsets(self, x):
    t = self.dw(x)
    base, _ = self._reference_grid(x.shape[2], x.shape[3], t.shape[2], t.shape[3], t)
    grid = base.expand(x.shape[0], *base.shape[1:])
    return self.norm(self.proj(mat._grid_sample(x, grid) + t))


CASES = [(name, op) for name, ops in KNOCKOUTS.items() for op in ops]


@pytest.mark.parametrize("name,op", CASES, ids=[f"{n}:{o}" for n, o in CASES])
def test_knocking_out_an_op_moves_the_logits(name: str, op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    change = _rel_change(name, KNOCKOUTS[name][op], monkeypatch)
    print(f"{name:18s} {op:36s} relative logit change {change:.3e}")
    assert change >= REQUIRED, f"{name}: knocking out {op!r} moves the logits by only {change:.2e}"
