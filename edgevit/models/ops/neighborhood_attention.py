"""2-D neighborhood attention (NATTEN 0.17 ``na2d_qk`` / ``na2d_av`` semantics) as tiled dense matmuls.

NATTEN is a C++/CUDA extension behind an ``autograd.Function``; no exporter can see through it. For a
fixed map size, kernel and dilation every query's K x K key positions and relative-bias entries are
known in advance, so the op becomes constant-index gathers + MatMul, which every runtime runs.

Window placement (per axis, ``shared/specs/a2mamba.md`` §3.4): a query ``i`` belongs to the residue
class ``i mod d``; its window is the K consecutive class members starting at
``clamp(i div d - K//2, 0, n_class - K)`` - shifted inward at the borders, never padded - and the bias
table is indexed by the *true* offset in dilation steps (``K - 1 + key_step - query_step``), which
differs from "slot - K//2" at borders.

Small-map extension (edgevit's, where NATTEN raises): when a residue class has fewer than K members
the window is all of them and the remaining slots are masked (logit ``-inf``, weight 0); a dilation
below 1 counts as 1. Wherever NATTEN accepts the input the two agree exactly.

**Tiling (why).** Gathering every query's K x K keys materialises ``L * K^2 * head_dim`` values (49x-121x
the keys) and turns the attention into matrix-vector products. Instead, along each axis the queries of
one residue class are cut into tiles of ``T`` consecutive members; the windows of a tile all lie inside
one *region* of ``T + K - 1`` consecutive class members (clamped inward like the windows). A 2-D tile of
``T x T`` queries then attends densely to its ``(T+K-1)^2`` region keys through one small GEMM, and an
additive constant (relative bias where the key is in the query's window, ``-inf`` elsewhere) restores the
exact NATTEN result: ``softmax`` over the region equals ``softmax`` over the window. Keys are gathered
``((T+K-1)/T)^2`` times instead of ``K^2`` times; logits hold ``(T+K-1)^2`` instead of ``K^2`` entries
per query. ``T = 1`` is exactly the per-query gather (on classes too long to be one tile, below).
Everything stays linear in the number of tokens.

**Whole-class tiles (why).** A region never needs more keys than its residue class has members
(``m``); where a class is no longer than ``T + K - 1``, one tile per class along that axis (``T = R = m``)
reads the same keys with no more logits per query, but gathers every key once instead of ``(T+K-1)/T``
times per axis and makes each tile's GEMM bigger (up to ``WHOLE_CLASS_SLACK`` times longer classes too). The
dilated branch hits this rule at every a2mamba-n stage at 224 (stage 1: 56 tokens, K = 11, dilation 5:
classes of 11-12: 25 tiles of 12x12 queries with regions of 12, where T = 4 would make 225 tiles of 4x4 with
regions of 14). Tiles are therefore ``T_h x T_w`` queries with ``R_h x R_w`` region keys, per axis.

No intermediate has more than 6 dimensions, XNNPACK's limit (``XNN_MAX_TENSOR_DIMS``; ExecuTorch 1.5's
partitioner accepts a 7-D permute but the delegate then fails to load).

The per-axis tables (``O(length * (T+K))`` entries) are pure functions of ``(H, W, K, dh, dw, T)``;
from them the plan builds three flat token tables - each tile's queries, each tile's region keys, each
token's tile slot - so gathering a tile tensor, and writing the result back in raster order, is one
``index_select`` each (``O(L * ((T+K-1)/T)^2)`` entries). Per-axis gathers followed by a tile permute
wrote the tiled tensor three times; in ONNX Runtime the permutes alone moved 2.9 of a2mamba-n's 25.9 GB
per batch-16 call. Tables are built once in NumPy and cached as tensors per device (while tracing, made
afresh by :func:`.constants.constant_tables`, so a trace records them as constants).

Eager inference runs the two products as custom ops (``edgevit::na_qk`` / ``edgevit::na_av``) whose FLOP
formulas count the K x K window (what the operation is), not the padded tile, so
:func:`edgevit.models.count_macs` does not depend on the tile size; tracing and autograd see plain ops.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .constants import constant_tables, table_builder, tracing

# Queries per tile side. 1 reproduces the per-query gather (matrix-vector products: slowest in eager). Larger
# tiles gather each key fewer times ((T+K-1)^2 / T^2) but hold more logits per query ((T+K-1)^2); a2mamba-n at
# batch 16 / 224, 1 thread, interleaved (issue 20, session 19): T = 7 against 4 cut stage 1's key gathers from 37
# to 19 ms and the whole call by 5 % in ONNX Runtime (0.773 -> 0.733 s) and 4 % in OpenVINO (0.858 -> 0.824 s),
# 3 % in eager; 8 ran the same as 7. 7 divides the 56- and 28-token maps of a 224 input, so no tile is partial.
# On large maps the logits set the memory instead: at 1024 (a 256-token stage 1) T = 7 raised a2mamba-n's peak at
# batch 8 from 3.9 to 5.2 GB, past the paper's memory + 1 GB (Table VIII protocol), so maps with a side longer
# than LARGE_MAP_SIDE keep T = 4.
DEFAULT_TILE = 7
LARGE_MAP_TILE = 4
LARGE_MAP_SIDE = 64


def default_tile(height: int, width: int) -> int:
    """The tile :func:`na_plan` uses when none is given: ``DEFAULT_TILE``, ``LARGE_MAP_TILE`` on large maps."""
    return LARGE_MAP_TILE if max(height, width) > LARGE_MAP_SIDE else DEFAULT_TILE


# A class up to this factor longer than a region is still one whole tile: its logits per query grow (at most
# 2.25x per 2-D tile) but its keys are gathered once and its GEMM is one. At 1.0 only classes no longer than a
# region are whole; at 1.5 a2mamba-n's stage-3 local branch (14 tokens, K = 7, region 10) becomes one 14x14
# tile, which ran 3 % faster in ONNX Runtime and no slower in OpenVINO (batch 16, 1 thread, interleaved; issue
# 20, session 15). The cost is memory where it applies: at 1024 the stage-2 dilated branch (classes of 15,
# region 12) holds 225 logits per query instead of 144 (a2mamba-n's peak at batch 8 rose ~340 MB, still within
# the paper's memory + 1 GB; docs/models/a2mamba.md).
WHOLE_CLASS_SLACK = 1.5


def axis_window(length: int, kernel_size: int, dilation: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key positions, bias offsets and validity of every (query, slot) pair along one axis.

    Returns three ``(length, kernel_size)`` arrays: ``pos`` (key coordinate; the query's own
    coordinate for invalid slots, so a gather stays in range), ``rel`` (0..2K-2) and ``valid``.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"neighborhood kernel size must be odd and positive, got {kernel_size}")
    d = max(int(dilation), 1)
    i = np.arange(length)[:, None]
    s = np.arange(kernel_size)[None, :]
    residue, step = i % d, i // d
    members = (length - residue + d - 1) // d
    full = members >= kernel_size
    start = np.where(full, np.minimum(np.maximum(step - kernel_size // 2, 0), members - kernel_size), 0)
    valid = full | (s < members)
    pos = np.where(valid, residue + d * (start + s), i)
    rel = (kernel_size - 1) + start + s - step
    return pos, rel, np.broadcast_to(valid, pos.shape)


@dataclass(frozen=True)
class AxisTiles:
    """One axis cut into query tiles and their key regions (``nt`` tiles).

    ``q_pos (nt, T)``: the queries of each tile (a partial tile repeats its last query; ``q_real`` is
    False there); ``k_pos (nt, R)``: the region's keys (:func:`tile_sizes` gives ``T`` and ``R``);
    ``rel (nt, T, R)``: bias offset of each (query, key) pair (0 where ``inside`` is False);
    ``inside (nt, T, R)``: key in the query's window (repeated queries' results are discarded);
    ``slot (length,)``: where each position's query sits, ``tile * T + slot``.
    """

    q_pos: np.ndarray
    q_real: np.ndarray
    k_pos: np.ndarray
    rel: np.ndarray
    inside: np.ndarray
    slot: np.ndarray


def tile_sizes(length: int, kernel_size: int, dilation: int, tile: int) -> tuple[int, int]:
    """``(T, R)`` along one axis for the requested ``tile``: a residue class of ``m`` members no longer than
    ``WHOLE_CLASS_SLACK * (tile + K - 1)`` is one whole tile (``T = R = m``; module docs), otherwise
    ``T = tile`` with its region of ``tile + K - 1`` (no class is then shorter than the region)."""
    if tile < 1:
        raise ValueError(f"neighborhood tile must be at least 1, got {tile}")
    members = -(-length // max(int(dilation), 1))
    if members <= WHOLE_CLASS_SLACK * (tile + kernel_size - 1):
        return members, members
    return tile, tile + kernel_size - 1


@functools.lru_cache(maxsize=256)
def axis_tiles(length: int, kernel_size: int, dilation: int, tile: int) -> AxisTiles:
    """Tiles of ``T`` consecutive members of each residue class, each with the region of ``R`` class
    members that holds all its windows (``T``, ``R`` from :func:`tile_sizes`; windows from
    :func:`axis_window`)."""
    tile, span = tile_sizes(length, kernel_size, dilation, tile)
    pos, rel, valid = axis_window(length, kernel_size, dilation)
    d = max(int(dilation), 1)
    q_pos, q_real, k_pos, rels, inside = [], [], [], [], []
    slot = np.zeros(length, dtype=np.int64)
    for residue in range(min(d, length)):
        members = np.arange(residue, length, d)
        m = len(members)
        for t0 in range(0, m, tile):
            steps = np.arange(t0, t0 + tile)
            real = steps < m
            queries = members[np.minimum(steps, m - 1)]
            window_start = (pos[queries[0], 0] - residue) // d if m >= kernel_size else 0
            region_start = max(min(window_start, m - span), 0)
            key_steps = region_start + np.arange(span)
            keys = members[np.minimum(key_steps, m - 1)]
            # (T, R, K): region key r is window slot s of query t (only real keys and slots)
            match = ((pos[queries][:, None, :] == keys[None, :, None]) & valid[queries][:, None, :]
                     & (key_steps < m)[None, :, None])
            hit = match.any(-1)
            rel_tr = np.where(hit, (rel[queries][:, None, :] * match).sum(-1), 0)
            slot[members[steps[real]]] = len(q_pos) * tile + np.arange(tile)[real]
            q_pos.append(queries)
            q_real.append(real)
            k_pos.append(keys)
            rels.append(rel_tr)
            inside.append(hit)  # a repeated query repeats a real window: never an all -inf row
    return AxisTiles(np.stack(q_pos), np.stack(q_real), np.stack(k_pos), np.stack(rels), np.stack(inside), slot)


@dataclass(frozen=True)
class NAPlan:
    """Tensors of one (H, W, K, dilation, tile): flat gather tables of the tiles, per-axis bias tables
    and additive masks. Tiles are numbered row-major (``tiles_h x tiles_w``), queries within a tile
    (``tile_h x tile_w``) and keys within a region (``region_h x region_w``) too."""

    height: int
    width: int
    kernel_size: int
    tile_h: int
    tile_w: int
    region_h: int
    region_w: int
    tiles_h: int
    tiles_w: int
    q_index: Tensor  # (tiles * tile_h * tile_w,) int64: token (h * W + w) of every tile's every query slot
    k_index: Tensor  # (tiles * region_h * region_w,): token of every tile's every region key
    out_index: Tensor  # (H * W,): tile-major slot (tile * queries + slot) of every token
    rel_rows: Tensor  # (tiles_h * tile_h * region_h,) bias row of every (query row, key row)
    rel_cols: Tensor  # (tiles_w * tile_w * region_w,)
    mask_rows: Tensor  # (tiles_h, tile_h, region_h) float: 0 inside the window, -inf outside
    mask_cols: Tensor  # (tiles_w, tile_w, region_w)

    @property
    def tiles(self) -> int:
        return self.tiles_h * self.tiles_w

    @property
    def queries(self) -> int:
        """Query slots per tile."""
        return self.tile_h * self.tile_w

    @property
    def keys(self) -> int:
        """Region keys per tile."""
        return self.region_h * self.region_w

    @property
    def whole_map(self) -> bool:
        """One tile whose queries and keys are every token in raster order (a map no bigger than a region,
        e.g. a2mamba-n's stages 3 and 4 at 224): all three gathers would be identities, so none is emitted
        (they were 96 Gather nodes of a2mamba-n's graph)."""
        return self.tiles == 1 and self.queries == self.keys == self.height * self.width


def _tile_tokens(rows: np.ndarray, cols: np.ndarray, width: int) -> np.ndarray:
    """Flat token index ``row * width + col`` of every (tile row, tile col, row slot, col slot) of
    per-axis tables ``rows (th, Sh)`` and ``cols (tw, Sw)``, tile-major: ``(th * tw * Sh * Sw,)``."""
    return (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(-1)


@table_builder("na_plan")
@functools.lru_cache(maxsize=256)
def _plan_arrays(height: int, width: int, kernel_size: int, dil_h: int, dil_w: int,
                 tile: int) -> tuple[np.ndarray, ...]:
    """The plan's tables in :class:`NAPlan` field order (masks 0 / -inf)."""
    rows = axis_tiles(height, kernel_size, dil_h, tile)
    cols = axis_tiles(width, kernel_size, dil_w, tile)
    tiles_w, tile_h, tile_w = cols.q_pos.shape[0], rows.q_pos.shape[1], cols.q_pos.shape[1]
    tile_of_row, slot_in_row = np.divmod(rows.slot, tile_h)
    tile_of_col, slot_in_col = np.divmod(cols.slot, tile_w)
    out_index = (((tile_of_row[:, None] * tiles_w + tile_of_col[None, :]) * tile_h + slot_in_row[:, None]) * tile_w
                 + slot_in_col[None, :])
    return (_tile_tokens(rows.q_pos, cols.q_pos, width), _tile_tokens(rows.k_pos, cols.k_pos, width),
            out_index.reshape(-1), rows.rel.reshape(-1), cols.rel.reshape(-1),
            *(np.where(t.inside, 0.0, -np.inf) for t in (rows, cols)))


_PLAN_DTYPES = (torch.int64,) * 5 + (torch.float32,) * 2
_DEVICE_CACHE: dict[tuple[object, ...], NAPlan] = {}


def na_plan(height: int, width: int, kernel_size: int, dilation: tuple[int, int] = (1, 1),
            tile: int | None = None, device: torch.device | str = "cpu") -> NAPlan:
    """The tiling of an ``height x width`` map (cached per size, kernel, dilation, tile and device); ``tile``
    defaults to :func:`default_tile`."""
    device = torch.device(device)
    tile = default_tile(height, width) if tile is None else tile
    args = (height, width, kernel_size, int(dilation[0]), int(dilation[1]), tile)
    key = (*args, device)
    in_trace = tracing()
    if not in_trace and key in _DEVICE_CACHE:
        return _DEVICE_CACHE[key]
    tensors = constant_tables("na_plan", args, _PLAN_DTYPES, device)
    mask_rows, mask_cols = tensors[5], tensors[6]
    plan = NAPlan(height, width, kernel_size, mask_rows.shape[1], mask_cols.shape[1], mask_rows.shape[2],
                  mask_cols.shape[2], mask_rows.shape[0], mask_cols.shape[0], *tensors)
    if not in_trace:
        _DEVICE_CACHE[key] = plan
    return plan


def na_bias(plan: NAPlan, rpb: Tensor | None, heads: int, dtype: torch.dtype) -> Tensor:
    """Additive term ``(n, tiles, queries, keys)`` of the tiled logits: relative bias ``rpb (n, 2K-1, 2K-1)``
    by true offset where the key lies in the query's window, ``-inf`` elsewhere. A constant of the
    exported graph (it depends only on parameters and the plan)."""
    th, tw, rh, rw = plan.tile_h, plan.tile_w, plan.region_h, plan.region_w
    mask = (plan.mask_rows[:, None, :, None, :, None] + plan.mask_cols[None, :, None, :, None, :])
    mask = mask.reshape(plan.tiles, plan.queries, plan.keys).to(dtype)
    if rpb is None:
        return mask.unsqueeze(0).expand(heads, -1, -1, -1)
    bias = rpb.index_select(1, plan.rel_rows).index_select(2, plan.rel_cols)  # (n, tiles_h*th*rh, tiles_w*tw*rw)
    bias = bias.reshape(-1, th, rh, plan.tiles_w, tw, rw).permute(0, 3, 1, 4, 2, 5)
    return bias.reshape(-1, plan.tiles, plan.queries, plan.keys).to(dtype) + mask


def _take_tokens(x: Tensor, index: Tensor | None) -> Tensor:
    """``(B, n, L, D)`` -> ``(B, n, len(index), D)``: the tokens ``index`` names, in one gather (``None``: all
    of them, in order)."""
    if index is None:
        return x
    b, n, _, dim = x.shape
    return x.reshape(b * n, -1, dim).index_select(1, index).reshape(b, n, -1, dim)


def _gather_tokens(x: Tensor, index: Tensor | None, per_tile: int) -> Tensor:
    """``(B, n, L, D)`` -> ``(B, n, tiles, per_tile, D)``: the tokens each tile reads (its queries, or
    its shared key region), in one gather by a constant flat table (no per-axis gather + permute: each
    would write the whole tiled tensor once more)."""
    return _take_tokens(x, index).unflatten(2, (-1, per_tile))


def _untile(y: Tensor, out_index: Tensor | None) -> Tensor:
    """``(B, n, tiles, queries, D)`` -> ``(B, n, L, D)`` in raster order (repeated queries dropped)."""
    return _take_tokens(y.flatten(2, 3), out_index)


def na_qk_tiled(q: Tensor, k: Tensor, bias: Tensor, q_index: Tensor | None, k_index: Tensor | None) -> Tensor:
    """Tiled logits ``(B, n, tiles, queries, keys)`` of ``q``, ``k`` (B, n, L, D) plus :func:`na_bias`
    (``q_index`` / ``k_index``: a plan's tables, ``None`` for all tokens in order; the tile sizes are the
    bias's last two axes)."""
    queries = _gather_tokens(q, q_index, bias.shape[-2])
    keys = _gather_tokens(k, k_index, bias.shape[-1])
    return queries @ keys.transpose(-1, -2) + bias


def na_av_tiled(attn: Tensor, v: Tensor, k_index: Tensor | None, out_index: Tensor | None) -> Tensor:
    """``(B, n, L, D)``: each query's weighted sum of its region of ``v`` with tiled weights ``attn``."""
    return _untile(attn @ _gather_tokens(v, k_index, attn.shape[-1]), out_index)


# ------------------------------------------------------------------- custom ops (eager: MAC counting)


@torch.library.custom_op("edgevit::na_qk", mutates_args=())
def _na_qk_op(q: Tensor, k: Tensor, bias: Tensor, q_index: Tensor | None, k_index: Tensor | None,
              kernel_size: int) -> Tensor:
    return na_qk_tiled(q, k, bias, q_index, k_index).contiguous()


@_na_qk_op.register_fake
def _na_qk_fake(q: Tensor, k: Tensor, bias: Tensor, q_index: Tensor | None, k_index: Tensor | None,
                kernel_size: int) -> Tensor:
    return q.new_empty(q.shape[0], q.shape[1], *bias.shape[-3:])


@torch.library.custom_op("edgevit::na_av", mutates_args=())
def _na_av_op(attn: Tensor, v: Tensor, k_index: Tensor | None, out_index: Tensor | None, kernel_size: int) -> Tensor:
    return na_av_tiled(attn, v, k_index, out_index).contiguous()


@_na_av_op.register_fake
def _na_av_fake(attn: Tensor, v: Tensor, k_index: Tensor | None, out_index: Tensor | None,
                kernel_size: int) -> Tensor:
    return v.new_empty(v.shape)


def _window_flops(x_shape: tuple[int, ...], kernel_size: int) -> int:
    """2 x MACs of one product over each query's K x K window (what NATTEN computes)."""
    b, n, length, dim = x_shape
    return 2 * b * n * length * kernel_size * kernel_size * dim


@register_flop_formula(torch.ops.edgevit.na_qk)
def _na_qk_flops(q_shape: tuple[int, ...], *args: object, out_shape: object = None, **kwargs: object) -> int:
    return _window_flops(q_shape, int(args[-1]))  # args end with kernel_size


@register_flop_formula(torch.ops.edgevit.na_av)
def _na_av_flops(attn_shape: tuple[int, ...], v_shape: tuple[int, ...], *args: object, out_shape: object = None,
                 **kwargs: object) -> int:
    return _window_flops(v_shape, int(args[-1]))


def _plain_ops(*tensors: Tensor) -> bool:
    """Tracing and autograd see the plain tiled ops; eager inference the counted custom ops."""
    return tracing() or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _gathers(plan: NAPlan) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The plan's ``(q_index, k_index, out_index)``, all ``None`` (no gather) on a :attr:`NAPlan.whole_map`."""
    if plan.whole_map:
        return None, None, None
    return plan.q_index, plan.k_index, plan.out_index


def na_qk(q: Tensor, k: Tensor, plan: NAPlan, rpb: Tensor | None = None) -> Tensor:
    """Tiled neighborhood logits ``(B, n, tiles, queries, keys)`` of ``q``, ``k`` (B, n, L, D) with the
    relative bias ``rpb`` (n, 2K-1, 2K-1); keys outside a query's window are ``-inf``. The caller
    applies the softmax over the last axis (as with NATTEN); :func:`na_av` consumes the result."""
    bias = na_bias(plan, rpb, q.shape[1], q.dtype)
    q_index, k_index, _ = _gathers(plan)
    if _plain_ops(q, k, bias):
        return na_qk_tiled(q, k, bias, q_index, k_index)
    return torch.ops.edgevit.na_qk(q, k, bias, q_index, k_index, plan.kernel_size)


def na_av(attn: Tensor, v: Tensor, plan: NAPlan) -> Tensor:
    """Weighted sum ``(B, n, L, D)`` of each query's window of ``v`` with the tiled weights ``attn``."""
    _, k_index, out_index = _gathers(plan)
    if _plain_ops(attn, v):
        return na_av_tiled(attn, v, k_index, out_index)
    return torch.ops.edgevit.na_av(attn, v, k_index, out_index, plan.kernel_size)
