"""Layers shared by several families, written in export-friendly form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputShapeError


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor.

    Permuting to NHWC and normalising the last axis exports as one ONNX ``LayerNormalization`` node
    (opset >= 17) instead of a ReduceMean/Sub/Pow/Sqrt/Div chain; it is the same function, unlike
    ``GroupNorm(1, C)`` which normalises over C, H and W together.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        # Back to NCHW *memory*, not just NCHW strides: a channels-last-strided tensor reaching an NCHW
        # conv makes oneDNN reorder on every call (measured 13x slower on batched CPU inference).
        # A no-op in the exported graph.
        return x.permute(0, 3, 1, 2).contiguous()


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm (+ optional activation); BN folds into the conv at export."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        if act is not None:
            self.act = act()


class ConvMlp(nn.Module):
    """Channel MLP on NCHW maps: 1x1 expand, optional depth-wise 3x3, GELU, 1x1 project.

    1x1 convs rather than Linear on a permuted tensor keep the graph NCHW end to end (no Transposes).
    """

    def __init__(self, dim: int, ratio: float, use_dw: bool = False) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if use_dw else nn.Identity()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.dw(self.fc1(x))))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation; the squeeze is a plain mean (ONNX ReduceMean), never adaptive pooling.

    ``act`` is the hidden activation: ReLU (SENet) by default, SiLU for MBConv-style blocks (MaxViT).
    """

    def __init__(self, channels: int, hidden: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


class Backbone(nn.Module):
    """Common interface of every edgevit model.

    ``forward_features`` returns the four stage maps (strides 4/8/16/32); ``forward`` returns logits,
    or the tuple of stage maps when built with ``features_only=True`` (the classifier is then not
    built, and checkpoint keys under ``classifier_prefixes`` are ignored when loading).
    """

    feature_strides: tuple[int, ...] = (4, 8, 16, 32)
    classifier_prefixes: tuple[str, ...] = ("head.",)
    input_multiple: int = 32
    # decides per token by a sign and records the margins (models.decisions): verify screens its flat frames
    sign_decisions: bool = False

    def __init__(self, feature_channels: tuple[int, ...], features_only: bool) -> None:
        super().__init__()
        self.feature_channels = tuple(feature_channels)
        self.features_only = features_only

    @property
    def output_names(self) -> list[str]:
        if self.features_only:
            return [f"stage{i + 1}" for i in range(len(self.feature_channels))]
        return ["logits"]

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Default layout of every hierarchical family: ``self.stem`` then ``self.stages``, one map each."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def forward_head(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def check_input(self, x: Tensor) -> None:
        """Reject shapes the architecture would silently mishandle (e.g. floor in strided convs)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InputShapeError(f"expected an NCHW image batch with 3 channels, got shape {tuple(x.shape)}")
        h, w = x.shape[-2], x.shape[-1]
        m = self.input_multiple
        if isinstance(h, int) and isinstance(w, int) and (h % m or w % m):
            raise InputShapeError(
                f"input {h}x{w} is not a multiple of {m}; resize or pad to e.g. "
                f"{max(m, round(h / m) * m)}x{max(m, round(w / m) * m)}"
            )

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        self.check_input(x)
        feats = self.forward_features(x)
        if self.features_only:
            return tuple(feats)
        return self.forward_head(feats[-1])
