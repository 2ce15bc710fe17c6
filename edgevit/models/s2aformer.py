"""S2AFormer: Strip Self-Attention for Efficient Vision Transformer (Xu et al., IEEE TIP 2025).

No official code exists; this is the reconstruction of ``docs/models/s2aformer.md`` (assumptions A1-A12
there). Export-friendly choices, all mathematically identical to the spec's pseudo-code:

* the strip score ``q @ k`` has inner dimension 1, so it is a broadcast multiply (hazard 3) rather than
  a K=1 MatMul that GEMM libraries tile poorly;
* reshapes keep batch/heads/channels constant and let only the token axis be ``-1`` (hazard 1);
* channel LayerNorm exports as ``LayerNormalization`` (hazard 5), SE squeeze as ``ReduceMean`` (8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Backbone, ConvBN, ConvMlp, LayerNorm2d, SqueezeExcite
from .paper import throughput_for
from .registry import NUM_CLASSES, ModelCard, ModelOption, ReportedFigures, register_model

PAPER = "S2AFormer: Strip Self-Attention for Efficient Vision Transformer (Xu et al., IEEE TIP 2025)"
PAPER_URL = "https://arxiv.org/abs/2505.22195"
STEM_WIDTH = 48
HEAD_HIDDEN = 2048
HEADS = (1, 2, 4, 8)
SR_RATIOS = (8, 4, 2, 1)


class StripSelfAttention(nn.Module):
    """SSA: Q and K compressed to one channel per head, K/V from a depth-wise strided reduction."""

    def __init__(self, dim: int, heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Conv2d(dim, heads, 1)
        self.k = nn.Conv2d(dim, heads, 1)
        self.v = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.sr = ConvBN(dim, dim, sr_ratio, stride=sr_ratio, groups=dim) if sr_ratio > 1 else None
        if self.sr is not None:  # kernel = stride = r, no padding (ConvBN pads k//2 by default)
            self.sr.conv.padding = (0, 0)
            self.sr.conv.bias = nn.Parameter(torch.zeros(dim))  # spec keys: attn.sr.conv.{weight,bias}

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads, d = self.heads, c // self.heads
        xr = self.sr(x) if self.sr is not None else x
        q = self.q(x).reshape(b, heads, -1, 1)  # (B, h, N, 1)
        k = self.k(xr).reshape(b, heads, 1, -1)  # (B, h, 1, N')
        v = self.v(xr).reshape(b, heads, d, -1).transpose(-1, -2)  # (B, h, N', d)
        attn = torch.softmax(q * k, dim=-1)  # strip outer product; logit scale 1/sqrt(1)
        out = (attn @ v).transpose(-1, -2).reshape(b, c, h, w)
        return self.proj(out)


class LocalInteraction(nn.Module):
    """LIM: depth-wise 3x3, grouped point-wise conv, GELU, squeeze-and-excitation (A6)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.pw = nn.Conv2d(dim, dim, 1, groups=4)
        self.se = SqueezeExcite(dim, max(8, dim // 8))

    def forward(self, x: Tensor) -> Tensor:
        return self.se(F.gelu(self.pw(self.dw(x))))


class HybridPerceptionBlock(nn.Module):
    """HPB (Eqs. 1-4): conv positional mixing, SSA, LIM and MLP, each a pre-norm residual."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int, mlp_dw: bool = True) -> None:
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.attn = StripSelfAttention(dim, heads, sr_ratio)
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        self.lim = LocalInteraction(dim)
        self.norm3 = LayerNorm2d(dim, eps=1e-6)
        self.mlp = ConvMlp(dim, mlp_ratio, use_dw=mlp_dw)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.cpe(x)
        x = x + self.attn(self.norm1(x))
        x = x + self.lim(self.norm2(x))
        return x + self.mlp(self.norm3(x))


class Stage(nn.Module):
    def __init__(self, index: int, in_dim: int, dim: int, depth: int, mlp_ratio: int, mlp_dw: bool) -> None:
        super().__init__()
        # A2: stage 1 embeds with a 1x1 conv (stride 1), later stages downsample with a 3x3 stride-2 conv
        self.embed = ConvBN(in_dim, dim, 1) if index == 0 else ConvBN(in_dim, dim, 3, stride=2)
        self.blocks = nn.Sequential(
            *[HybridPerceptionBlock(dim, HEADS[index], SR_RATIOS[index], mlp_ratio, mlp_dw) for _ in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.embed(x))


class ClassifierHead(nn.Module):
    """Linear(C4 -> 2048) + GELU + Linear(2048 -> classes) (A9); BN and pooling happen before it."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.pre = nn.Linear(dim, HEAD_HIDDEN)
        self.fc = nn.Linear(HEAD_HIDDEN, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.gelu(self.pre(x)))


class S2AFormer(Backbone):
    classifier_prefixes = ("norm.", "head.")

    def __init__(
        self,
        depths: tuple[int, ...],
        dims: tuple[int, ...],
        mlp_ratios: tuple[int, ...],
        num_classes: int = 1000,
        features_only: bool = False,
        mlp_dw: bool = True,
    ) -> None:
        super().__init__(dims, features_only)
        self.stem = nn.Sequential(  # A1: fixed 48-wide stem for every variant
            ConvBN(3, STEM_WIDTH // 2, 3, stride=2, act=nn.GELU),
            ConvBN(STEM_WIDTH // 2, STEM_WIDTH, 3, stride=2, act=nn.GELU),
            ConvBN(STEM_WIDTH, STEM_WIDTH, 3, stride=1, act=nn.GELU),
        )
        in_dims = (STEM_WIDTH, *dims[:-1])
        self.stages = nn.ModuleList(
            Stage(i, in_dims[i], dims[i], depths[i], mlp_ratios[i], mlp_dw) for i in range(len(dims))
        )
        if not features_only:
            self.norm = nn.BatchNorm2d(dims[-1])
            self.head = ClassifierHead(dims[-1], num_classes)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class _Variant:
    name: str
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]
    params_m: float
    gmacs: float
    top1: float


# Paper Table IV (params, GMACs at 224, top-1). Throughput (Table VII) is data: paper/s2aformer.json.
_VARIANTS = (
    _Variant("mini", (2, 2, 2, 2), (32, 64, 128, 256), (4, 4, 4, 4), 5.02, 0.43, 75.1),
    _Variant("t", (2, 2, 6, 2), (48, 64, 128, 256), (4, 4, 4, 4), 5.80, 0.655, 77.7),
    _Variant("xs", (2, 2, 10, 2), (48, 64, 128, 256), (4, 4, 4, 4), 6.54, 0.786, 78.9),
    _Variant("s", (2, 4, 24, 4), (48, 64, 128, 256), (4, 4, 4, 4), 10.69, 1.38, 80.8),
    _Variant("m", (2, 4, 20, 2), (96, 128, 256, 512), (4, 4, 4, 4), 24.87, 4.12, 82.3),
    _Variant("l", (4, 4, 20, 4), (96, 192, 384, 768), (7, 7, 5, 5), 76.58, 12.53, 85.6),
)


def _register() -> None:
    for v in _VARIANTS:
        card = ModelCard(
            name=f"s2aformer-{v.name}",
            family="S2AFormer",
            variant=v.name.upper() if v.name != "mini" else "mini",
            paper=PAPER,
            paper_url=PAPER_URL,
            architecture="reconstruction",
            reported=ReportedFigures(
                params_m=v.params_m, gmacs=v.gmacs, top1=v.top1, macs_convention="conv+linear",
                throughput=throughput_for(f"s2aformer-{v.name}"),
                source="Table IV (params/GMACs/top-1), Table VII (images/s)",
            ),
            notes="No official code or checkpoints; architecture reconstructed per docs/models/s2aformer.md "
                  "(stem, heads, SR ratios, LIM/MLP internals and the 2048-wide head are fitted assumptions).",
            options=(NUM_CLASSES,
                     ModelOption("mlp_dw", "bool", "depth-wise conv inside the MLP (an ablation)")),
        )

        def build(v: _Variant = v, **kw) -> S2AFormer:
            return S2AFormer(v.depths, v.dims, v.mlp_ratios, **kw)

        register_model(card, build)


_register()
