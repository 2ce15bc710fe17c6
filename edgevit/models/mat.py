"""MAT: Mixing Abstract Tokens (Vo, dissertation "Efficient Vision Transformers with Multi-Scale and Partial
Attentions for Object Recognition", University of Ulsan 2023, chapter 4).

No official code exists; this is the reconstruction of ``docs/models/mat.md`` (assumptions M1-M11 there),
with edgevit-defined module names. Export-friendly choices, each identical to the spec's pseudo-code (the
tests hold the direct formulations and prove the equality):

* window partition/reverse and every head split/regroup use tensors of rank <= 4 (H1): the usual rank-6
  ``(B, gh, w, gw, w, d)`` permute becomes reshape -> transpose -> reshape; CoreML, TFLite and many NPUs
  cap tensor rank at 4-5;
* window padding is computed from Python ints, so a static-size export has constant ``Pad``/``Slice``
  instead of Shape/Mod chains (H2);
* size-dependent constants (abstract tokens resized to the window grid, the Bilinear PE reference grid)
  are computed once per resolution and kept in non-persistent buffers; the exporter calls
  :meth:`MAT.prepare_static_input` so they enter the graph as initializers, never as Resize/Range (H3, H4);
* the Bilinear PE samples with ``F.grid_sample`` (ONNX GridSample, opset >= 16) by default, or with
  :func:`bilinear_grid_sample` (Floor/GatherElements/weights), selectable with ``sampler="manual"`` for
  runtimes without GridSample (TensorRT < 8.5, mobile delegates) (H4).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Backbone, ConvBN
from .paper import throughput_for
from .registry import NUM_CLASSES, ModelCard, ModelOption, ReportedFigures, register_model

PAPER = ("Efficient Vision Transformers with Multi-Scale and Partial Attentions for Object Recognition "
         "(Xuan-Thuy Vo, PhD dissertation, University of Ulsan 2023), chapter 4: MAT Transformer")
PAPER_URL = ""  # no stable public URL known; the text is shared/papers/003_6bdc42354ae8d368.txt
WINDOW = 7
MLP_RATIO = 4
HEAD_WIDTH = 1280
REFERENCE_SIZE = 224  # abstract-token grids are learned for the 224x224 window grid (M6)
SAMPLERS = ("grid_sample", "manual")


# ----------------------------------------------------------------------------------------------------
# rank <= 4 tensor plumbing (H1)
# ----------------------------------------------------------------------------------------------------

def window_partition(x: Tensor, window: int) -> Tensor:
    """(B, Hp, Wp, d) -> (B*nw, w*w, d), windows in row-major grid order, tokens row-major inside.

    Same result as ``x.view(B, gh, w, gw, w, d).permute(0, 1, 3, 2, 4, 5)`` without a rank-6 tensor:
    (B*gh, w, gw, w*d) keeps each window row's w*d values contiguous, so one transpose of the two
    middle axes groups the rows of a window together.
    """
    _, hp, wp, d = x.shape
    gh, gw = hp // window, wp // window
    x = x.reshape(-1, window, gw, window * d).transpose(1, 2)  # (B*gh, gw, w, w*d)
    return x.reshape(-1, window * window, d)


def window_reverse(windows: Tensor, window: int, hp: int, wp: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B*nw, w*w, d) -> (B, Hp, Wp, d)."""
    d = windows.shape[-1]
    gh, gw = hp // window, wp // window
    x = windows.reshape(-1, gw, window, window * d).transpose(1, 2)  # (B*gh, w, gw, w*d)
    return x.reshape(-1, hp, wp, d)


def split_heads(t: Tensor, parts: int, heads: int) -> tuple[Tensor, ...]:
    """(B', N, parts*d) -> ``parts`` tensors (B', h, N, d/h), without the rank-5 (B', N, parts, h, dh)."""
    b, n, c = t.shape
    dh = c // (parts * heads)
    t = t.reshape(b, n, parts * heads, dh).transpose(1, 2)  # (B', parts*h, N, dh)
    return t.chunk(parts, dim=1)


def merge_heads(t: Tensor) -> Tensor:
    """(B', h, N, dh) -> (B', N, h*dh)."""
    b, h, n, dh = t.shape
    return t.transpose(1, 2).reshape(b, n, h * dh)


def group_windows(t: Tensor, num_windows: int) -> Tensor:
    """(B*nw, h, n, dh) -> (B, h, nw*n, dh): every image token of an image in one attention row block."""
    _, h, n, dh = t.shape
    return t.reshape(-1, num_windows, h, n * dh).transpose(1, 2).reshape(-1, h, num_windows * n, dh)


def ungroup_windows(t: Tensor, num_windows: int) -> Tensor:
    """Inverse of :func:`group_windows`: (B, h, nw*n, dh) -> (B*nw, h, n, dh)."""
    _, h, m, dh = t.shape
    n = m // num_windows
    return t.reshape(-1, h, num_windows, n * dh).transpose(1, 2).reshape(-1, h, n, dh)


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale) v as explicit MatMul/Softmax (counted as matmul MACs, exported as-is)."""
    return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1) @ v


# ----------------------------------------------------------------------------------------------------
# bilinear sampling (H4)
# ----------------------------------------------------------------------------------------------------

def bilinear_grid_sample(x: Tensor, grid: Tensor) -> Tensor:
    """``F.grid_sample(x, grid, "bilinear", "zeros", align_corners=False)`` from Floor, Gather and weights.

    For runtimes without GridSample. Corners outside the image get weight 0 (zero padding) and index 0,
    only so the gather stays in bounds (a Where, not a clamp: onnxscript 0.7's optimizer fuses the
    Max/Min pair of a clamp into a Clip placed out of topological order). Index arithmetic is done in
    the input's float type before the cast to int64: exact while H*W < 2**24, far above any map here.
    """
    b, c, h, w = x.shape
    ho, wo = grid.shape[1], grid.shape[2]
    ix = ((grid[..., 0] + 1) * w - 1) * 0.5  # align_corners=False un-normalisation, as ATen does it
    iy = ((grid[..., 1] + 1) * h - 1) * 0.5
    x0, y0 = torch.floor(ix), torch.floor(iy)
    x1, y1 = x0 + 1, y0 + 1
    flat = x.reshape(b, c, h * w)
    corners = []
    for yy, wy in ((y0, y1 - iy), (y1, iy - y0)):
        for xx, wx in ((x0, x1 - ix), (x1, ix - x0)):
            inside = (xx >= 0) & (xx <= w - 1) & (yy >= 0) & (yy <= h - 1)
            index = torch.where(inside, yy * w + xx, 0.0).to(torch.int64)
            index = index.reshape(b, 1, ho * wo).expand(b, c, ho * wo)
            weight = (wx * wy * inside.to(x.dtype)).reshape(b, 1, ho * wo)
            corners.append(flat.gather(2, index) * weight)
    return (corners[0] + corners[1] + corners[2] + corners[3]).reshape(b, c, ho, wo)


def _grid_sample(x: Tensor, grid: Tensor) -> Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BilinearPatchEmbed(nn.Sequential):
    """Bilinear PE (M8): DW 3x3 s2, learned (dx, dy) field, bilinear sample of the input, add, 1x1, BN.

    An ``nn.Sequential`` only so that the exporter's BatchNorm folding (which folds a Conv2d directly
    followed by a BatchNorm2d inside a Sequential) merges ``proj`` and ``norm``; ``forward`` is not
    sequential. The reference grid (stride-2 kernel centres in normalised coordinates) depends only on
    the input size and is cached in a buffer so an export holds it as a constant, not as Range nodes.
    """

    def __init__(self, in_dim: int, out_dim: int, sampler: str = "grid_sample") -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        super().__init__(OrderedDict(
            dw=nn.Conv2d(in_dim, in_dim, 3, 2, 1, groups=in_dim),
            offset=nn.Conv2d(in_dim, 2, 1),
            proj=nn.Conv2d(in_dim, out_dim, 1),
            norm=nn.BatchNorm2d(out_dim),
        ))
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)
        self.sampler = sampler
        self.register_buffer("base_grid", None, persistent=False)  # (1, H', W', 2)
        self.register_buffer("offset_scale", None, persistent=False)  # (2,): pixels -> normalised units
        self._grid_key: tuple[int, int, int, int] | None = None

    def _reference_grid(self, h: int, w: int, ho: int, wo: int, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (h, w, ho, wo)
        usable = self.base_grid is not None and self.base_grid.dtype == like.dtype
        if self._grid_key == key and usable:
            return self.base_grid, self.offset_scale
        # pixel (2j, 2i) -> normalised ((2*2j + 1) / W - 1, (2*2i + 1) / H - 1), align_corners=False
        gx = (4 * torch.arange(wo, dtype=like.dtype, device=like.device) + 1) / w - 1
        gy = (4 * torch.arange(ho, dtype=like.dtype, device=like.device) + 1) / h - 1
        base = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)[None]
        scale = torch.tensor([2.0 / w, 2.0 / h], dtype=like.dtype, device=like.device)
        if not torch.compiler.is_compiling():  # never keep a traced (fake) tensor
            self.base_grid, self.offset_scale, self._grid_key = base, scale, key
        return base, scale

    def forward(self, x: Tensor) -> Tensor:
        t = self.dw(x)
        base, scale = self._reference_grid(x.shape[2], x.shape[3], t.shape[2], t.shape[3], t)
        grid = base + self.offset(t).permute(0, 2, 3, 1) * scale  # (B, H', W', 2), offsets in input pixels
        s = _grid_sample(x, grid) if self.sampler == "grid_sample" else bilinear_grid_sample(x, grid)
        return self.norm(self.proj(s + t))


# ----------------------------------------------------------------------------------------------------
# blocks (tokens channels-last inside a stage)
# ----------------------------------------------------------------------------------------------------

class Mlp(nn.Module):
    """fc1 -> [3x3 depth-wise on the hidden map (M3)] -> GELU -> fc2, on (B, H, W, d)."""

    def __init__(self, dim: int, ratio: int, use_dw: bool) -> None:
        super().__init__()
        hidden = dim * ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if use_dw else None
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, t: Tensor) -> Tensor:
        u = self.fc1(t)
        if self.dw is not None:
            u = self.dw(u.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.fc2(F.gelu(u))


class MlpBlock(nn.Module):
    """Stages 1-2 (M2): x + MLP(LN(x)), no spatial token mixer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, MLP_RATIO, use_dw=False)

    def forward(self, t: Tensor) -> Tensor:
        return t + self.mlp(self.norm(t))


class MatAttention(nn.Module):
    """Token merging, token abstraction, mixing abstract tokens, token fusion (spec section 4).

    ``abstract_tokens`` holds one learnable token per window of the 224x224 window grid (M6). Other
    grids get a bilinear resize; at inference the resized tokens are cached in ``resized_tokens``
    (recomputed only when the grid or the parameter changes), and a trace uses the cached buffer, so
    no Resize op reaches an exported graph.
    """

    def __init__(self, dim: int, heads: int, window: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.heads, self.window = heads, window
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.abstract_tokens = nn.Parameter(torch.empty(1, dim, *grid))
        nn.init.trunc_normal_(self.abstract_tokens, std=0.02)
        self.mix_norm = nn.LayerNorm(dim)
        self.mix_qkv = nn.Linear(dim, 3 * dim)
        self.mix_proj = nn.Linear(dim, dim)
        self.fuse_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("resized_tokens", None, persistent=False)
        self._resized_key: tuple[tuple[int, int], int, int, torch.dtype] | None = None

    def tokens_for_grid(self, grid: tuple[int, int]) -> Tensor:
        """Abstract tokens (1, d, gh, gw) for a window grid; a cached constant whenever no gradient
        can reach the parameter (eval/no-grad, and always under export tracing)."""
        p = self.abstract_tokens
        if grid == tuple(p.shape[2:]):
            return p
        if torch.compiler.is_compiling():
            cached = self._resized_key is not None and self._resized_key[0] == grid
            return self.resized_tokens if cached else _resize_tokens(p, grid)
        if torch.is_grad_enabled() and p.requires_grad:
            return _resize_tokens(p, grid)  # training: gradients must flow into the parameter
        key = (grid, p._version, p.data_ptr(), p.dtype)
        if self._resized_key != key or self.resized_tokens is None:
            with torch.no_grad():
                self.resized_tokens = _resize_tokens(p, grid)
            self._resized_key = key
        return self.resized_tokens

    def forward(self, u: Tensor) -> Tensor:
        _, h, w, d = u.shape
        win, heads = self.window, self.heads
        pad_h, pad_w = (-h) % win, (-w) % win  # Python ints: static pads at a fixed export size (H2)
        if pad_h or pad_w:
            u = F.pad(u, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        grid = (hp // win, wp // win)
        nw = grid[0] * grid[1]
        windows = window_partition(u, win)  # (B*nw, w*w, d)
        a0 = self.tokens_for_grid(grid).flatten(2).transpose(1, 2)  # (1, nw, d), row-major windows
        a0 = a0.expand(u.shape[0], nw, d).reshape(-1, 1, d)
        q, k, v = split_heads(self.qkv(torch.cat([a0, windows], dim=1)), 3, heads)  # (B*nw, h, 1+w*w, dh)
        z = attention(q, k, v, self.scale)  # token abstraction
        a1 = merge_heads(z[:, :, :1]).reshape(-1, nw, d)  # (B, nw, d) learned abstract tokens
        mq, mk, mv = split_heads(self.mix_qkv(self.mix_norm(a1)), 3, heads)
        am = a1 + self.mix_proj(merge_heads(attention(mq, mk, mv, self.scale)))  # mixing (M5)
        fk, fv = split_heads(self.fuse_kv(am), 2, heads)  # (B, h, nw, dh)
        qi = group_windows(q[:, :, 1:], nw)  # local queries reused for fusion (M4)
        c = ungroup_windows(attention(qi, fk, fv, self.scale), nw)  # token fusion
        y = self.proj(merge_heads(z[:, :, 1:] + c))  # (B*nw, w*w, d)
        y = window_reverse(y, win, hp, wp)
        if pad_h or pad_w:
            y = y[:, :h, :w]
        return y


def _resize_tokens(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    return F.interpolate(tokens, size=grid, mode="bilinear", align_corners=False)


class MatBlock(nn.Module):
    """Stages 3-4: x + MAT(LN(x)); x + MLP-with-DW(LN(x))."""

    def __init__(self, dim: int, heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MatAttention(dim, heads, WINDOW, grid)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, MLP_RATIO, use_dw=True)

    def forward(self, t: Tensor) -> Tensor:
        t = t + self.attn(self.norm1(t))
        return t + self.mlp(self.norm2(t))


class Stage(nn.Module):
    """Optional Bilinear PE, then blocks on channels-last tokens (one permute each way per stage)."""

    def __init__(self, embed: nn.Module | None, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.embed = embed if embed is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        t = self.blocks(self.embed(x).permute(0, 2, 3, 1))
        return t.permute(0, 3, 1, 2)


class ClassifierHead(ConvBN):
    """1x1 conv 8C -> 1280 + BN + GELU before pooling, then Linear (M9). A ConvBN so BN folds at export."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, HEAD_WIDTH, 1, act=nn.GELU)
        self.fc = nn.Linear(HEAD_WIDTH, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


class MAT(Backbone):
    def __init__(
        self,
        width: int,
        depths: tuple[int, int, int, int],
        heads: tuple[int, int],
        num_classes: int = 1000,
        features_only: bool = False,
        sampler: str = "grid_sample",
    ) -> None:
        dims = tuple(width * 2**s for s in range(4))
        super().__init__(dims, features_only)
        half = width // 2
        self.stem = nn.Sequential(OrderedDict(  # M1
            conv1=ConvBN(3, half, 3, stride=2, act=nn.GELU),
            dw=ConvBN(half, half, 3, groups=half, act=nn.GELU),
            conv2=ConvBN(half, width, 3, stride=2),
        ))
        stages = []
        for s, (dim, depth) in enumerate(zip(dims, depths)):
            embed = BilinearPatchEmbed(dims[s - 1], dim, sampler) if s > 0 else None
            if s < 2:
                blocks: list[nn.Module] = [MlpBlock(dim) for _ in range(depth)]
            else:
                grid = (math.ceil(REFERENCE_SIZE / self.feature_strides[s] / WINDOW),) * 2
                blocks = [MatBlock(dim, heads[s - 2], grid) for _ in range(depth)]
            stages.append(Stage(embed, blocks))
        self.stages = nn.ModuleList(stages)
        if not features_only:
            self.head = ClassifierHead(dims[-1], num_classes)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    @torch.no_grad()
    def prepare_static_input(self, input_size: tuple[int, int]) -> None:
        """Cache the size-dependent constants (resized abstract tokens, Bilinear PE grids) for one input
        size, so that a trace at that size reads them as buffers (ONNX initializers). One eval forward
        fills every cache with exactly the values an eager forward would use."""
        was_training = self.training
        self.eval()
        try:
            p = next(self.parameters())
            self.forward_features(torch.zeros(1, 3, *input_size, dtype=p.dtype, device=p.device))
        finally:
            self.train(was_training)


@dataclass(frozen=True)
class _Variant:
    name: str
    width: int
    depths: tuple[int, int, int, int]
    heads: tuple[int, int]
    params_m: float
    gmacs: float
    top1: float


# Table 4.3 (width, depths, heads, GFLOPs = multiply-accumulates, params), Table 4.4 (top-1), Table 4.9
# (throughput of MAT-2 on one Tesla V100; batch size and precision not stated) is data in paper/mat.json.
_VARIANTS = (
    _Variant("1", 24, (2, 2, 6, 6), (12, 24), 6.714, 0.389, 76.3),
    _Variant("2", 32, (2, 2, 6, 6), (8, 16), 10.767, 0.666, 79.0),
    _Variant("3", 36, (2, 2, 8, 8), (8, 16), 17.008, 1.042, 80.2),
    _Variant("4", 48, (3, 3, 8, 8), (12, 24), 29.057, 1.933, 81.0),
    _Variant("5", 64, (2, 2, 8, 8), (16, 32), 50.108, 3.156, 81.9),
)


def _register() -> None:
    for v in _VARIANTS:
        card = ModelCard(
            name=f"mat-{v.name}",
            family="MAT",
            variant=f"MAT-{v.name}",
            paper=PAPER,
            paper_url=PAPER_URL,
            architecture="reconstruction",
            input_multiple=32,
            min_input_size=32,
            reported=ReportedFigures(
                params_m=v.params_m, gmacs=v.gmacs, top1=v.top1, macs_convention="all",
                throughput=throughput_for(f"mat-{v.name}"),
                source="Table 4.3 (params, GFLOPs = MACs incl. attention matmuls), Table 4.4 (top-1), "
                       "Table 4.9 (V100 images/s)",
            ),
            notes="No official code or checkpoints; architecture reconstructed per docs/models/mat.md "
                  "(stem norms, MLP depth-wise conv, projection layout, Bilinear PE internals and the "
                  "1280-wide head are assumptions M1-M11, calibrated on the Table 4.9 ablation). Any input "
                  "that is a multiple of 32 works; sizes whose stride-16/32 maps are not multiples of 7 "
                  "are zero-padded per window (extra compute). Bilinear PE uses ONNX GridSample (opset >= "
                  "16); build with sampler='manual' for runtimes without it.",
            options=(NUM_CLASSES,
                     ModelOption("sampler", "str", "Bilinear PE sampling: ONNX GridSample, or manual gathers "
                                 "for runtimes without it", choices=("grid_sample", "manual"))),
        )

        def build(v: _Variant = v, **kw) -> MAT:
            return MAT(v.width, v.depths, v.heads, **kw)

        register_model(card, build)


_register()
