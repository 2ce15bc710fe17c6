"""Reference weights: the one initialisation every model gets when no checkpoint is loaded.

Exports, ``verify``, the tests and the benchmarks all run models without trained weights. Training-style
initialisations (trunc-normal 0.02, zero offsets, identity norms, LayerScale 1e-6) leave whole paths
silent in such a model: A2Mamba's scan moved the logits by 1e-6 relative, MAT's sampling offsets were
exactly zero (so ``nearest`` equalled ``bilinear``), every BatchNorm was an identity. A graph with a
broken scan or sampler then still matched PyTorch, and verification proved nothing about those ops.

The reference weights instead give every path a signal of the size a trained network has, so that
knocking out any operation moves the logits by O(1e-2..1) relative (``tests/models/test_sensitivity.py``
holds each family to >= 100x the verification tolerance). The recipe, drawn from a private
``torch.Generator(seed)`` (the global RNG is neither read nor changed):

* Conv / ConvTranspose / Linear weights ~ N(0, 1/fan_in) (variance preserving, so no branch is a
  1 % correction of its residual), biases ~ N(0, 0.1^2);
* LayerNorm / GroupNorm (and LayerNorm2d) affines: weight ~ U(0.6, 1.4), bias ~ N(0, 0.2^2);
* BatchNorm: affine as above; running mean/variance *measured*: one forward pass of a seeded 64x64 batch
  sets each BatchNorm's statistics to those of its actual input (mean + N(0, 0.1^2) std-scaled jitter,
  variance x U(0.7, 1.3)), which is what trained statistics are, so no BN is an identity and no deep
  stack blows up or vanishes;
* A2Mamba scan: ``A = -exp(A_logs)`` in [-2, -0.25], ``softplus(dt bias)`` log-uniform in [0.02, 1], dt
  projection std 0.5/sqrt(rank), B/C projections 4x the variance-preserving scale (B, C ~ O(1)),
  ``Ds`` ~ U(0.3, 1): per-step decays exp(dt*A) between 0.14 and 0.995, so the state carries over 1 to
  ~200 tokens and ``states * C`` is as large as the ``u * D`` skip (zeroing the scan moves the logits
  by ~25 %); relative-position / token biases ~ N(0, 0.5^2); LayerScale ~ U(0.3, 1);
* MAT: sampling offsets sub-pixel and non-zero (bias |b| in [0.15, 0.45] px with random sign, weight
  N(0, (0.1/sqrt(fan_in))^2)), abstract tokens ~ N(0, 1) (the scale of a normalised token);
* PartialFormer: abstract token ~ N(0, 1); with the norms above, context scores spread over ~0.1-1
  while the score grid (``partialformer.SCORE_GRID``) is 2^-10, so ranks are mostly well separated;
* DualFormer: importance gates sigmoid(.) centred in (0.3, 0.7) (away from saturation) and distinct per
  partition; the LSH hyperplanes (``beta``) keep their own fixed seed.

Deterministic: the same (model, seed) gives bit-identical weights on one machine; measured BatchNorm
statistics can differ across CPUs by fp32 rounding (~1e-7 relative), far inside verification's 1e-4.
Only values are written, never keys or shapes, so official checkpoints still load with ``strict=True``.
"""

from __future__ import annotations

import math
import re
import zlib

import torch
from torch import Tensor, nn

from ..errors import ArtifactError

CALIBRATION_SIZE = 64  # smallest input every family takes; BN statistics are measured on it
CALIBRATION_BATCH = 2
_LABEL = re.compile(r"reference\(seed=(-?\d+)\)")


def weights_label(weights: str | None, seed: int) -> str:
    """What an artifact records as ``edgevit.weights``: the checkpoint path, or the reference recipe."""
    if weights:
        from pathlib import Path

        return str(Path(weights).resolve())
    return f"reference(seed={seed})"


def is_generated_weights(label: str) -> bool:
    """True when ``label`` names reference weights (rebuilt from the seed), False for a checkpoint path.

    Artifacts of older edgevit versions say ``random(seed=N)``: that model is no longer what any seed
    builds, so they are refused rather than verified against a different model.
    """
    if _LABEL.fullmatch(label):
        return True
    if label.startswith("random(seed="):
        raise ArtifactError(f"artifact weights {label!r} come from an older edgevit whose random weights it no "
                            "longer builds; re-export the artifact (or pass --weights CHECKPOINT)")
    return False


def _normal(shape: torch.Size, std: float, g: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=g) * std


def _uniform(shape: torch.Size, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _fan_in(m: nn.Module) -> float:
    w = m.weight
    if isinstance(m, nn.Linear):
        return w.shape[1]
    if isinstance(m, nn.ConvTranspose2d):  # weight (in, out/groups, kh, kw); taps per output pixel
        taps = w.shape[2] * w.shape[3] / (m.stride[0] * m.stride[1])
        return max(1.0, w.shape[0] / m.groups * taps)
    return w[0].numel()  # Conv: (out, in/groups, kh, kw)


def _dense(m: nn.Module, g: torch.Generator) -> None:
    m.weight.copy_(_normal(m.weight.shape, 1.0 / math.sqrt(_fan_in(m)), g))
    if m.bias is not None:
        m.bias.copy_(_normal(m.bias.shape, 0.1, g))


def _norm_affine(m: nn.Module, g: torch.Generator) -> None:
    if getattr(m, "weight", None) is not None:
        m.weight.copy_(_uniform(m.weight.shape, 0.6, 1.4, g))
    if getattr(m, "bias", None) is not None:
        m.bias.copy_(_normal(m.bias.shape, 0.2, g))


def _generator(seed: int, name: str) -> torch.Generator:
    """One generator per module, keyed by its qualified name: a module's draw does not depend on which other
    modules exist, so ``features_only`` (no classifier) gets exactly the stages of the full model."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _family_rules(model: nn.Module, seed: int) -> None:
    """Per-kind values for the parameters whose generic draw would leave an operation silent."""
    from .a2mamba import A2SSM, MASS, LayerScale
    from .dualformer import Importance
    from .mat import BilinearPatchEmbed, MatAttention
    from .partialformer import PartialAttention

    for name, m in model.named_modules():
        g = _generator(seed, name + '#family')
        if isinstance(m, A2SSM):
            dim, rank = m.Ds.shape[0], m.dt_rank
            m.A_logs.copy_(torch.log(_uniform(m.A_logs.shape, 0.25, 2.0, g)))
            dt = torch.exp(_uniform((dim,), math.log(0.02), math.log(1.0), g))
            m.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            m.dt_projs_weight.copy_(_normal(m.dt_projs_weight.shape, 0.5 / math.sqrt(rank), g))
            # rows: dt (rank), B, C. u = silu(conv(.)) has std ~0.2-0.4, so B/C rows get 4x the variance-
            # preserving scale: B, C ~ O(1) as in trained models, else the scan term is O(u^3) vs D's O(u)
            proj = _normal(m.x_proj_weight.shape, 1.0 / math.sqrt(dim), g)
            proj[rank:] *= 4.0
            m.x_proj_weight.copy_(proj)
            m.Ds.copy_(_uniform(m.Ds.shape, 0.3, 1.0, g))
        elif isinstance(m, MASS):
            for p in m.rpb:  # rpb.0 and rpb.1 are one Parameter: drawn once per table object
                p.copy_(_normal(p.shape, 0.5, g))
        elif isinstance(m, LayerScale):
            m.weight.copy_(_uniform(m.weight.shape, 0.3, 1.0, g))
            m.bias.copy_(_normal(m.bias.shape, 0.1, g))
        elif isinstance(m, BilinearPatchEmbed):
            fan = m.offset.weight[0].numel()
            m.offset.weight.copy_(_normal(m.offset.weight.shape, 0.1 / math.sqrt(fan), g))
            sign = torch.where(torch.rand(2, generator=g) < 0.5, -1.0, 1.0)
            m.offset.bias.copy_(sign * _uniform((2,), 0.15, 0.45, g))
        elif isinstance(m, MatAttention):
            m.abstract_tokens.copy_(_normal(m.abstract_tokens.shape, 1.0, g))
        elif isinstance(m, PartialAttention):
            m.abstract_token.copy_(_normal(m.abstract_token.shape, 1.0, g))
        elif isinstance(m, Importance):
            m.fc2.weight.mul_(0.5)  # logits ~ N(0, 0.25) around a bias in +-0.4: sigmoid in ~(0.3, 0.7)
            m.fc2.bias.copy_(_uniform(m.fc2.bias.shape, -0.4, 0.4, g))


@torch.no_grad()
def _measure_batchnorm_statistics(model: nn.Module, seed: int) -> None:
    """Set every BatchNorm's running statistics from its input in one eval forward of a seeded batch.

    A pre-hook runs before each BN, so a BN sees inputs produced with the statistics already set
    upstream: one pass calibrates the whole network in order.
    """
    bns = {m: _generator(seed, name + "#stats") for name, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    if not bns:
        return

    def measure(bn: nn.modules.batchnorm._BatchNorm, args: tuple[Tensor, ...]) -> None:
        x = args[0].transpose(0, 1).flatten(1).double()  # (C, everything else)
        mean, var = x.mean(1), x.var(1, unbiased=False)
        std = var.clamp_min(1e-6).sqrt()
        g = bns[bn]
        bn.running_mean.copy_(mean + _normal(mean.shape, 0.1, g).double() * std)
        bn.running_var.copy_(var.clamp_min(1e-6) * _uniform(var.shape, 0.7, 1.3, g).double())

    hooks = [bn.register_forward_pre_hook(measure) for bn in bns]
    was_training = model.training
    try:
        model.eval()
        x = _normal(torch.Size((CALIBRATION_BATCH, 3, CALIBRATION_SIZE, CALIBRATION_SIZE)), 1.0,
                    _generator(seed, "#calibration-input"))
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


@torch.no_grad()
def reference_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite ``model``'s parameters and norm statistics with the reference weights for ``seed``."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            _dense(m, _generator(seed, name))
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)):
            _norm_affine(m, _generator(seed, name))
    _family_rules(model, seed)
    _measure_batchnorm_statistics(model, seed)
    return model
