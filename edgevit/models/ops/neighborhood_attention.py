"""2-D neighborhood attention (NATTEN 0.17 ``na2d_qk`` / ``na2d_av`` semantics) as a static gather.

NATTEN is a C++/CUDA extension behind an ``autograd.Function``; no exporter can see through it. For a
fixed map size, kernel and dilation, every query's K x K key positions and relative-bias entries are
known in advance, so the op becomes ``Gather`` (constant indices) + ``MatMul``, which every runtime runs.

Window placement (per axis, ``shared/specs/a2mamba.md`` §3.4): a query ``i`` belongs to the residue
class ``i mod d``; its window is the K consecutive class members starting at
``clamp(i div d - K//2, 0, n_class - K)`` - shifted inward at the borders, never padded - and the bias
table is indexed by the *true* offset in dilation steps (``K - 1 + key_step - query_step``), which
differs from "slot - K//2" at borders.

Small-map extension (edgevit's, where NATTEN raises): when a residue class has fewer than K members
the window is all of them and the remaining slots are masked (logit ``-inf``, weight 0); a dilation
below 1 counts as 1. Wherever NATTEN accepts the input the two agree exactly.

Index tables are pure functions of ``(H, W, K, dh, dw)``: they are built once in NumPy, cached, and
turned into tensors per call (zero-copy on CPU), so they never enter the ``state_dict`` and an export
captures them as constants.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class NATables:
    """Gather tables of one (H, W, K, dilation); rows are queries in raster order, columns the K*K
    slots (row-slot major)."""

    index: Tensor  # (H*W * K*K,) int64: flat key position h*W + w, query-major
    bias_index: Tensor  # (H*W * K*K,) int64: flat position in the (2K-1, 2K-1) bias table
    mask: Tensor | None  # (H*W, K*K) bool, True where the slot holds no key; None when every slot is valid
    kernel_size: int

    @property
    def slots(self) -> int:
        return self.kernel_size * self.kernel_size

    @property
    def queries(self) -> int:
        return self.index.shape[0] // self.slots


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


@functools.lru_cache(maxsize=256)
def _tables_np(height: int, width: int, kernel_size: int, dil_h: int, dil_w: int) -> tuple[np.ndarray, ...]:
    pos_h, rel_h, valid_h = axis_window(height, kernel_size, dil_h)
    pos_w, rel_w, valid_w = axis_window(width, kernel_size, dil_w)
    span = 2 * kernel_size - 1
    # (H, 1, K, 1) x (1, W, 1, K) -> (H, W, K, K) -> (H*W, K*K)
    index = pos_h[:, None, :, None] * width + pos_w[None, :, None, :]
    bias_index = rel_h[:, None, :, None] * span + rel_w[None, :, None, :]
    valid = valid_h[:, None, :, None] & valid_w[None, :, None, :]
    mask = None if valid.all() else np.ascontiguousarray(~valid.reshape(height * width, -1))
    return (np.ascontiguousarray(index.reshape(-1), dtype=np.int64),
            np.ascontiguousarray(bias_index.reshape(-1), dtype=np.int64), mask)


_DEVICE_CACHE: dict[tuple[object, ...], NATables] = {}


def na_tables(height: int, width: int, kernel_size: int, dilation: tuple[int, int] = (1, 1),
              device: torch.device | str = "cpu") -> NATables:
    """Gather tables for an ``height x width`` map (cached per size, kernel, dilation and device).

    While tracing (``torch.export``/``torch.compile``) the tensors are created afresh so the tracer
    records them as constants and no traced tensor ends up in the cache.
    """
    device = torch.device(device)
    key = (height, width, kernel_size, int(dilation[0]), int(dilation[1]), device)
    tracing = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if not tracing and key in _DEVICE_CACHE:
        return _DEVICE_CACHE[key]
    index, bias_index, mask = _tables_np(*key[:5])
    tables = NATables(
        torch.from_numpy(index).to(device), torch.from_numpy(bias_index).to(device),
        None if mask is None else torch.from_numpy(mask).to(device), kernel_size,
    )
    if not tracing:
        _DEVICE_CACHE[key] = tables
    return tables


def _gather_neighbors(x: Tensor, tables: NATables) -> Tensor:
    """``x`` (B, n, L, D) -> (B, n, L, K*K, D): every query's window of ``x`` (one constant Gather)."""
    b, n, length, dim = x.shape
    return x.index_select(2, tables.index).reshape(b, n, length, tables.slots, dim)


def na_qk(q: Tensor, k: Tensor, tables: NATables, rpb: Tensor | None = None) -> Tensor:
    """Neighborhood logits ``(B, n, L, K*K)`` of ``q``, ``k`` (B, n, L, D) plus the relative bias
    ``rpb`` (n, 2K-1, 2K-1); masked slots are ``-inf``. The caller applies the softmax (as NATTEN)."""
    keys = _gather_neighbors(k, tables)
    logits = (keys @ q.unsqueeze(-1)).squeeze(-1)
    if rpb is not None:
        n = rpb.shape[0]
        bias = rpb.flatten(1).index_select(1, tables.bias_index).reshape(n, tables.queries, tables.slots)
        logits = logits + bias.to(logits.dtype)
    if tables.mask is not None:
        logits = logits.masked_fill(tables.mask, float("-inf"))
    return logits


def na_av(attn: Tensor, v: Tensor, tables: NATables) -> Tensor:
    """Weighted sum ``(B, n, L, D)`` of each query's window of ``v`` with weights ``attn`` (B, n, L, K*K)."""
    values = _gather_neighbors(v, tables)
    return (attn.unsqueeze(-2) @ values).squeeze(-2)
