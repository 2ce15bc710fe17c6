"""PartialFormer: vision Transformer with partial attention (Vo, dissertation ch. 5 / ECCV 2024).

No official code exists; this is the reconstruction of ``docs/models/partialformer.md`` (assumptions
A1-A13 there, calibrated so params and MACs land within 1 % of Table 5.1).

Partial attention splits the N tokens of a block into a small *foreground* set (the top-N_F tokens by
a context score) that runs full mixed multi-head self-attention (MMSA) with one learnable abstract
token, and a *background* set that only receives what the abstract token gathers from it by
single-query attention (SQA). Export-friendly choices, all mathematically identical to the spec's
pseudo-code:

* **Static token count.** N_F = min(max_foreground, N // 4) is computed in Python from the (static)
  input size (A5, hazard H5), so TopK has a constant K and every gathered tensor has a static shape;
  the graph has no NonZero, Loop or data-dependent shape.
* **Runtime-independent tie-breaking.** The score lives on a grid of ``SCORE_GRID`` (see
  :func:`context_score`), so mathematically equal scores are equal numbers in every runtime and on every
  CPU. Which tokens win when scores tie is *defined*: among equal scores the lower token index wins (the order of a stable descending sort). ``torch.topk``
  makes no promise about ties, so its indices are never used directly. :func:`select_foreground`
  takes only the K-th largest *value* from TopK (a value is the same in every runtime), breaks ties at
  that value by token order with a cumulative sum, and extracts the chosen indices with a second TopK
  on a key that is distinct for every chosen token. Both TopKs are ``sorted=True`` with constant K.
* **Gather / scatter, not permutation.** Foreground rows are gathered with ``gather``
  (GatherElements) and written back with ``scatter`` (ScatterElements), which is the inverse
  permutation restricted to the rows that changed (H2a). Background rows are never gathered: SQA
  over all N keys with an additive -1e4 bias on the foreground keys is identical to SQA over the
  gathered background set (H2, H3).
* **Selection in fp32.** The score is cast to fp32 before its channel mean, and the selection runs in
  fp32, so a half-precision model still selects from a fp32 score (H4). Near-ties can still flip in a
  runtime that computes the *tokens* in bf16/fp16; see the model card notes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputShapeError
from .layers import Backbone, LayerNorm2d
from .registry import NUM_CLASSES, ModelCard, ModelOption, ReportedFigures, register_model

PAPER = ("Efficient Vision Transformers with Multi-Scale and Partial Attentions for Object Recognition "
         "(X.-T. Vo, doctoral dissertation, University of Ulsan, 2023), chapter 5; published as "
         "'Efficient Vision Transformers with Partial Attention' (Vo, Nguyen, Priadana, Jo, ECCV 2024)")
PAPER_URL = "https://ecva.net/papers/eccv_2024/papers_ECCV/html/11047_ECCV_2024_paper.php"
MAX_FOREGROUND = (49, 49, 49, 49)  # A5: N_F = min(49, N // 4) in every stage
HEAD_HIDDEN = 1280  # A12
MASK_BIAS = -1e4  # H3: exp underflows to exactly 0 in fp32 and fp16, never NaN
# Context scores are compared on this grid (see context_score): coarse enough that kernel summation-order
# noise (~1e-6 absolute on scores of size 0.1-1) almost never crosses a grid line, fine enough that
# tokens whose scores differ by more than ~1e-3 are still ranked by score.
SCORE_GRID = 2.0**-10


def context_score(tokens: Tensor) -> Tensor:
    """Per-token context score: channel mean of the pre-norm tokens (A4), in fp32, on a grid of SCORE_GRID.

    (B, N, d) -> (B, N). The cast comes *before* the mean so a half-precision model still accumulates
    the score in fp32 (hazard H4); for a fp32 model it is a no-op the exporter drops.

    The grid makes ties exact by construction: tokens that are equal in exact arithmetic (a constant
    image region, padding) come out of GEMM kernels with ulp-level differences that depend on the CPU,
    the runtime and the row's position in the tile, so an unquantised score would break their tie
    differently on every machine. ``floor(mean / SCORE_GRID)`` maps all of them to one integer (unless
    their ~1e-6 spread straddles a grid line, a chance of ~1e-3 per tie), and the tie rule of
    :func:`select_foreground` then decides identically everywhere. Scaling by a power of two and Floor
    are exact in every runtime, so the quantised score is a deterministic function of the fp32 mean.
    """
    return torch.floor(tokens.float().mean(dim=-1) * (1.0 / SCORE_GRID))


def num_foreground(num_tokens: int, max_foreground: int) -> int:
    """Static foreground size N_F = min(max_foreground, N // 4) (A5); at least 1 token is required."""
    nf = min(max_foreground, num_tokens // 4)
    if nf < 1:
        raise InputShapeError(f"partial attention needs at least 4 tokens per stage, got {num_tokens}; "
                              "use an input of at least 64x64")
    return nf


def select_foreground(score: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices (B, k) and boolean mask (B, N) of the k highest-scoring tokens, ties to the lower index.

    The result equals ``sort(score, descending=True, stable=True)[:, :k]`` as a *set* (the returned
    indices are in ascending token order, which attention does not care about). Every runtime
    produces the same set because only order-free facts are taken from TopK:

    1. ``kth`` = the k-th largest score value (a value, unlike an index, has no tie ambiguity);
    2. every token above ``kth`` is selected; the remaining ``k - #above`` slots go to the tokens equal
       to ``kth`` in token order (cumulative count of ties);
    3. the selected indices are read out with TopK on ``key = N - i`` for selected tokens and 0 for the
       rest: keys of selected tokens are distinct, so no runtime can order them differently.

    All counts are small integers held exactly in fp32 (N < 2**24).
    """
    score = score.float()
    n = score.shape[1]
    kth = torch.topk(score, k, dim=1, largest=True, sorted=True).values[:, k - 1:k]  # (B, 1)
    above = score > kth
    tied = score == kth
    free_slots = k - above.float().sum(dim=1, keepdim=True)
    tie_rank = torch.cumsum(tied.float(), dim=1)  # 1-based rank among the tied tokens, in token order
    mask = above | (tied & (tie_rank <= free_slots))
    descending_index = torch.arange(n, 0, -1, dtype=torch.float32, device=score.device)  # N - i
    key = mask.float() * descending_index
    idx = torch.topk(key, k, dim=1, largest=True, sorted=True).indices
    return idx, mask


class HeadMlp(nn.Module):
    """Mixes attention logits across heads (A7): Linear(h, 4h) -> softmax over keys -> Linear(4h, h)."""

    def __init__(self, heads: int, expansion: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(heads, heads * expansion)
        self.fc2 = nn.Linear(heads * expansion, heads)

    def forward(self, logits: Tensor) -> Tensor:
        """(B, h, M, M) scaled logits -> (B, h, M, M) attention weights (no second softmax)."""
        w = logits.permute(0, 2, 3, 1)  # heads last: (B, M_query, M_key, h)
        w = torch.softmax(self.fc1(w), dim=2)  # softmax over the key axis
        return self.fc2(w).permute(0, 3, 1, 2)


class ChannelMlp(nn.Module):
    """SQA output transform (A9): Linear(d, d/8) -> LN -> ReLU -> Linear(d/8, d)."""

    def __init__(self, dim: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = dim // reduction
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.norm(self.fc1(x))))


class PartialAttention(nn.Module):
    """Token separation + MMSA over [abstract; foreground] + SQA for the background (spec §4).

    One qkv projection is shared by MMSA and SQA, and one output projection W_O covers all N tokens
    (A8, A11).
    """

    def __init__(self, dim: int, heads: int, max_foreground: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.max_foreground = dim, heads, max_foreground
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.abstract_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.head_mlp = HeadMlp(heads)
        self.sqa_mlp = ChannelMlp(dim)
        self.proj = nn.Linear(dim, dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, M, d) -> (B, h, M, dh); only the token axis is inferred."""
        b, _, d = x.shape
        return x.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2)

    def _merge_heads(self, x: Tensor) -> Tensor:
        b, h, _, dh = x.shape
        return x.transpose(1, 2).reshape(b, -1, h * dh)

    def mmsa(self, qkv_rows: Tensor) -> Tensor:
        """Mixed multi-head self-attention over already projected rows (B, M, 3d) -> (B, M, d)."""
        d = self.dim
        q, k, v = (self._split_heads(qkv_rows[..., i * d:(i + 1) * d]) for i in range(3))
        logits = (q * self.scale) @ k.transpose(-2, -1)
        return self._merge_heads(self.head_mlp(logits) @ v)

    def sqa(self, z_token: Tensor, qkv: Tensor, fg_mask: Tensor) -> Tensor:
        """Single-query attention of the abstract token over the background keys (B, 1, d).

        The query is W_Q applied to the abstract token's MMSA output (A8), through the whole shared qkv
        layer: slicing its weight to the W_Q rows would save two d x d products for one row, but a sliced
        weight is a computed tensor, which XNNPACK cannot take as an int8 static weight (its per-channel
        dequantize stays outside the delegate and the int8 program does not lower).
        """
        d = self.dim
        q = self._split_heads(self.qkv(z_token)[..., :d])  # (B, h, 1, dh)
        k = self._split_heads(qkv[..., d:2 * d])
        v = self._split_heads(qkv[..., 2 * d:])
        bias = (fg_mask.to(q.dtype) * MASK_BIAS)[:, None, None, :]  # (B, 1, 1, N)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1) + bias, dim=-1)
        return self.sqa_mlp(self._merge_heads(attn @ v))

    def forward(self, u: Tensor, score: Tensor) -> Tensor:
        """``u``: normalised tokens (B, N, d); ``score``: context score (B, N) of the pre-norm tokens."""
        b, n, d = u.shape
        nf = num_foreground(n, self.max_foreground)
        qkv = self.qkv(u)
        idx, fg_mask = select_foreground(score, nf)
        fg = torch.gather(qkv, 1, idx.unsqueeze(-1).expand(b, nf, 3 * d))
        token = self.qkv(self.abstract_token).expand(b, 1, 3 * d)
        z = self.mmsa(torch.cat([token, fg], dim=1))  # (B, 1 + N_F, d)
        background = u + self.sqa(z[:, :1], qkv, fg_mask)  # X_B + Y'_B (A10), computed for every row
        out = torch.scatter(background, 1, idx.unsqueeze(-1).expand(b, nf, d), z[:, 1:])
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PartialBlock(nn.Module):
    """CPE (residual depth-wise 3x3, A3) -> pre-LN partial attention -> pre-LN MLP; NCHW in and out."""

    def __init__(self, dim: int, heads: int, max_foreground: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = PartialAttention(dim, heads, max_foreground)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.cpe(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, d), row-major tokens
        t = t + self.attn(self.norm1(t), context_score(t))
        t = t + self.mlp(self.norm2(t))
        return t.transpose(1, 2).reshape(b, c, h, w)


class PatchEmbed(nn.Module):
    """Overlapping conv patch embedding + channel LayerNorm (A2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2)
        self.norm = LayerNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class Stage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, max_foreground: int, mlp_ratio: int,
                 downsample: bool) -> None:
        super().__init__()
        self.downsample = PatchEmbed(in_dim, dim, 3, 2) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[PartialBlock(dim, heads, max_foreground, mlp_ratio) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class PartialFormer(Backbone):
    """Four-stage pyramid of partial Transformer blocks, widths C * (1, 2, 4, 8) (A1)."""

    classifier_prefixes = ("norm.", "head.")
    min_input_size = 64  # stage 4 needs >= 4 tokens for N_F = N // 4 >= 1

    def __init__(
        self,
        dim: int,
        depths: tuple[int, ...],
        heads: tuple[int, ...],
        max_foreground: tuple[int, ...] = MAX_FOREGROUND,
        mlp_ratio: int = 4,
        num_classes: int = 1000,
        features_only: bool = False,
    ) -> None:
        dims = tuple(dim * 2**i for i in range(len(depths)))
        super().__init__(dims, features_only)
        self.stem = PatchEmbed(3, dims[0], 7, 4)
        in_dims = (dims[0], *dims[:-1])
        self.stages = nn.ModuleList(
            Stage(in_dims[i], dims[i], depths[i], heads[i], max_foreground[i], mlp_ratio, downsample=i > 0)
            for i in range(len(dims))
        )
        if not features_only:
            self.norm = nn.LayerNorm(dims[-1])
            self.head = Mlp(dims[-1], HEAD_HIDDEN, num_classes)
        self.apply(_init_weights)

    def check_input(self, x: Tensor) -> None:
        super().check_input(x)
        h, w = x.shape[-2], x.shape[-1]
        if isinstance(h, int) and isinstance(w, int) and min(h, w) < self.min_input_size:
            raise InputShapeError(f"{type(self).__name__} needs inputs of at least {self.min_input_size}x"
                                  f"{self.min_input_size} (>= 4 tokens in stage 4), got {h}x{w}")

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x.mean(dim=(2, 3))))


def _init_weights(module: nn.Module) -> None:
    """Spec §4 initialisation: trunc-normal(0.02) Linear weights and abstract tokens, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, PartialAttention):
        nn.init.trunc_normal_(module.abstract_token, std=0.02)


@dataclass(frozen=True)
class _Variant:
    name: str
    dim: int
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    params_m: float
    gmacs: float
    top1: float


# Dissertation Table 5.1 (C, depths, heads, params, "FLOPs" = MACs at 224) and Tables 5.2/5.3 (top-1).
_VARIANTS = (
    _Variant("b0", 24, (2, 2, 6, 6), (2, 4, 8, 16), 5.3, 0.4, 76.7),
    _Variant("b1", 32, (2, 2, 6, 6), (2, 4, 8, 16), 8.2, 0.7, 79.3),
    _Variant("b2", 48, (2, 2, 8, 8), (3, 6, 12, 24), 21.1, 1.9, 82.0),
    _Variant("b3", 64, (2, 2, 8, 8), (4, 8, 16, 32), 36.1, 3.4, 83.0),
    _Variant("b4", 96, (2, 2, 8, 6), (6, 12, 24, 48), 64.5, 6.8, 83.9),
)

# Flat colours verification adds (ModelCard.verification_colours): with the grey frames they make the tie rule
# decide a foreground slot in every block, every deciding score >= 0.02 grid steps from a grid line (fp32
# rounding moved scores <= 0.0073 steps at 224, measured). Found by scripts/find_tie_frames.py (reference
# weights, seed 0); the smallest variant only, at the default size and at 64x64 (the mutation test's size).
_VERIFICATION_COLOURS = {
    "b0": (((224, 224), ((1.445, 0.929, 0.407), (-1.449, 1.935, -1.989), (-1.902, 0.694, 1.676),
                         (0.993, -0.229, -1.163), (-1.547, -0.136, -1.632), (-0.913, 0.305, 1.222),
                         (-0.681, 0.085, 1.149))),
           ((64, 64), ((-1.396, 0.495, 0.093), (0.228, 1.075, -0.853), (-1.79, -1.197, -0.36),
                       (-0.865, -1.973, 0.381), (0.071, -1.486, 0.1), (-1.833, -1.567, 0.075),
                       (-0.642, 1.882, -1.576), (0.697, -1.357, 0.347), (-1.917, 1.538, -0.536)))),
}

_NOTES = (
    "No official code or checkpoints: the architecture is a reconstruction per docs/models/partialformer.md "
    "(widths C*(1,2,4,8), conv patch embeddings, context score on pre-norm tokens, N_F = min(49, N//4), "
    "HeadMLP e=4, SQA ChannelMLP r=8, shared W_O on all tokens and the 1280-wide head are fitted "
    "assumptions A1-A13); state_dict keys are edgevit's own. Reported GFLOPs are multiply-accumulates "
    "(conv + linear + attention matmuls). Chapter 5 reports no latency or throughput. "
    "Token selection: N_F is fixed by the input size (one artifact per resolution, no dynamic H/W); the "
    "context score is floor(channel mean / 2^-10), so tokens equal in exact arithmetic (constant regions) "
    "tie exactly whatever kernel computed them (unless their ~1e-6 spread straddles a grid line, ~1e-3 "
    "of such ties); ties go to the lower token index in every runtime (TopK yields only the k-th value; "
    "indices come from a tie-free key). Precision: the score and TopK run in fp32 in the exported graph, "
    "but in bf16/fp16 runtimes (OpenVINO CPU defaults to bf16 on AMX/AVX512-BF16, TensorRT FP16) the "
    "tokens feeding the score are computed in low precision, so near-tied tokens can swap between "
    "foreground and background and change the output by far more than rounding noise; pin the score/TopK "
    "path to fp32 (TensorRT layer precision, OpenVINO INFERENCE_PRECISION_HINT=f32) for parity, and judge "
    "low-precision builds by top-1 and foreground-selection agreement, not max error."
)


def _register() -> None:
    for v in _VARIANTS:
        card = ModelCard(
            name=f"partialformer-{v.name}",
            family="PartialFormer",
            variant=v.name.upper(),
            paper=PAPER,
            paper_url=PAPER_URL,
            architecture="reconstruction",
            input_multiple=32,
            min_input_size=PartialFormer.min_input_size,
            reported=ReportedFigures(
                params_m=v.params_m, gmacs=v.gmacs, top1=v.top1, macs_convention="all",
                source="Dissertation Table 5.1 (params, GFLOPs as MACs), Tables 5.2/5.3 (top-1, 224, 300 ep)",
            ),
            notes=_NOTES,
            verification_colours=_VERIFICATION_COLOURS.get(v.name, ()),
            options=(NUM_CLASSES,
                     ModelOption("max_foreground", "ints", "foreground tokens per stage", minimum=1, length=4),
                     ModelOption("mlp_ratio", "int", "MLP expansion", minimum=1)),
        )

        def build(v: _Variant = v, **kw) -> PartialFormer:
            return PartialFormer(v.dim, v.depths, v.heads, **kw)

        register_model(card, build)


_register()
