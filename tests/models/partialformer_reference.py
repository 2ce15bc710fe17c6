"""Direct reference formulation of PartialFormer's partial attention, shared by the model and ONNX tests.

The tie rule it defines: among equal context scores the *lower token index* is foreground (the order of
a stable descending sort). Everything here is written the naive way (sort, fancy indexing, index_put,
einsum over heads) so that it shares no code path with the export form in ``edgevit.models.partialformer``.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F

from edgevit.models import partialformer as pf


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max abs error / max |reference| (the project's parity metric)."""
    return float((a - ref).abs().max() / ref.abs().max())


# ---------------------------------------------------------------------------------------------------

def reference_order(score: torch.Tensor, lower_index_wins: bool = True) -> torch.Tensor:
    """(B, N) token permutation, foreground first: a stable descending sort of the context score.

    ``lower_index_wins=False`` gives the opposite tie rule and exists only as a negative control.
    """
    score = score.float()
    if lower_index_wins:
        return torch.sort(score, dim=1, descending=True, stable=True).indices
    n = score.shape[1]
    return n - 1 - torch.sort(score.flip(1), dim=1, descending=True, stable=True).indices


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    b, m, d = x.shape
    return x.reshape(b, m, h, d // h).permute(0, 2, 1, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, m, dh = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, m, h * dh)


def reference_partial_attention(attn: pf.PartialAttention, u: torch.Tensor, score: torch.Tensor,
                                lower_index_wins: bool = True) -> torch.Tensor:
    """Partial attention written the direct way from the dissertation's equations.

    The tokens are permuted (foreground first), MMSA runs on [abstract; X_F], SQA runs on the
    *gathered background* X_B with no mask, and the rows go back through the inverse permutation.
    HeadMLP is an explicit einsum over the head axis and the SQA query uses the full qkv projection.
    """
    b, n, d = u.shape
    h = attn.heads
    dh = d // h
    nf = min(attn.max_foreground, n // 4)
    perm = reference_order(score, lower_index_wins)
    rows = torch.arange(b)[:, None]
    x = u[rows, perm]
    x_f, x_b = x[:, :nf], x[:, nf:]
    qkv_f, qkv_b = attn.qkv(x_f), attn.qkv(x_b)
    tok = attn.qkv(attn.abstract_token).expand(b, 1, 3 * d)
    q, k, v = torch.cat([tok, qkv_f], 1).split(d, dim=-1)
    q, k, v = split_heads(q, h), split_heads(k, h), split_heads(v, h)
    logits = torch.einsum("bhqd,bhkd->bhqk", q, k) / dh**0.5
    hm = attn.head_mlp
    w = torch.einsum("bhqk,eh->beqk", logits, hm.fc1.weight) + hm.fc1.bias[None, :, None, None]
    w = torch.softmax(w, dim=-1)
    w = torch.einsum("beqk,he->bhqk", w, hm.fc2.weight) + hm.fc2.bias[None, :, None, None]
    z = merge_heads(torch.einsum("bhqk,bhkd->bhqd", w, v))
    z_tok, z_f = z[:, :1], z[:, 1:]
    q_a = split_heads(attn.qkv(z_tok)[..., :d], h)
    _, k_b, v_b = qkv_b.split(d, dim=-1)
    a = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q_a, split_heads(k_b, h)) / dh**0.5, dim=-1)
    y = merge_heads(torch.einsum("bhqk,bhkd->bhqd", a, split_heads(v_b, h)))
    m = attn.sqa_mlp
    y = m.fc2(F.relu(F.layer_norm(m.fc1(y), m.norm.normalized_shape, m.norm.weight, m.norm.bias, m.norm.eps)))
    out_perm = torch.cat([z_f, x_b + y], dim=1)
    out = torch.empty_like(out_perm)
    out[rows, perm] = out_perm  # inverse permutation
    return attn.proj(out)


def with_reference_attention(model: torch.nn.Module, lower_index_wins: bool = True) -> torch.nn.Module:
    ref = copy.deepcopy(model)
    for mod in ref.modules():
        if isinstance(mod, pf.PartialAttention):
            mod.forward = functools.partial(reference_partial_attention, mod, lower_index_wins=lower_index_wins)
    return ref


def make_attention(dim: int = 32, heads: int = 4, max_fg: int = 49, seed: int = 0) -> pf.PartialAttention:
    """Attention with O(1) weights so that which tokens are foreground visibly changes the output."""
    torch.manual_seed(seed)
    attn = pf.PartialAttention(dim, heads, max_fg)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 1.0 / p.shape[-1] ** 0.5)
    return attn.eval()


def tied_scores(b: int, n: int, levels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (b, n), generator=g).float() * 0.25 - 0.5


SELECT = pf.select_foreground  # captured before any test monkeypatches it


class TieRecorder:
    """Wraps select_foreground and counts calls whose k-th score is tied with an unselected token."""

    def __init__(self) -> None:
        self.calls = 0
        self.boundary_ties = 0
        self.tied_calls: list[int] = []  # indices of the calls (blocks, in one forward) with a boundary tie
        self.boundary_masks: list[torch.Tensor] = []  # per call: (B, N) tokens tied at the k-th score

    def __call__(self, score: torch.Tensor, k: int):
        idx, mask = SELECT(score, k)
        kth = score.float().topk(k, dim=1).values[:, -1:]
        tied = score.float() == kth
        ties = int((tied & ~mask).any(dim=1).sum())
        self.boundary_masks.append(tied & (tied & ~mask).any(dim=1, keepdim=True))
        if ties:
            self.tied_calls.append(self.calls)
        self.calls += 1
        self.boundary_ties += ties
        return idx, mask


def boundary_tie_report(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per block and image: whether the tie rule decides a foreground slot (tokens tied at the k-th score,
    some of them left out), and how far the tokens that could change that sit from the grid line they would have to cross
    to join or leave the k-th score's cell, in grid steps. (blocks, B) bool and (blocks, B) float.

    A distance of ~1e-3 steps is fp32 rounding (kernels sum in different orders): such a token can land in
    another cell on another CPU or runtime and change the selection, so an input meant to exercise the tie
    rule must keep it well above that (``MIN_GRID_DISTANCE`` in the tests)."""
    recorder, distances, raw_scores = TieRecorder(), [], []

    def score(tokens: torch.Tensor) -> torch.Tensor:
        raw = tokens.float().mean(dim=-1) / pf.SCORE_GRID
        raw_scores.append(raw)
        return torch.floor(raw)

    def select(quantised: torch.Tensor, k: int):
        raw = raw_scores.pop()
        kth = quantised.float().topk(k, dim=1).values[:, -1:]
        above_line, below_line = raw - quantised, quantised + 1 - raw  # to the cell's lower / upper line
        # the lines a token may cross to join or leave the k-th cell: both for the cell's own tokens, the
        # lower line for the cell above it, the upper line for the cell below it
        distance = torch.where(quantised == kth, torch.minimum(above_line, below_line),
                               torch.where(quantised == kth + 1, above_line,
                                           torch.where(quantised == kth - 1, below_line, torch.ones_like(raw))))
        distances.append(distance.amin(1))
        return recorder(quantised, k)

    original = pf.context_score, pf.select_foreground
    pf.context_score, pf.select_foreground = score, select
    try:
        with torch.no_grad():
            model(x)
    finally:
        pf.context_score, pf.select_foreground = original
    return torch.stack([m.any(dim=1) for m in recorder.boundary_masks]), torch.stack(distances)
