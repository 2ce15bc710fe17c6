"""XNNPACK-friendly forms of LayerNorm, mean, matmul, expand and split, applied only when exporting
for ExecuTorch.

Why: ExecuTorch's XNNPACK partitioner (1.5) takes no ``native_layer_norm`` and only 4-D ``mean`` over
dims [2, 3] with ``keepdim=True``, and neither ``expand_copy`` (which ATen writes before every batched
matmul, even when it changes nothing) nor ``split_with_sizes_copy``. Every LayerNorm, token mean,
attention product and split is therefore left to the portable kernels and cuts the graph into many
small delegate calls. Rewritten as 4-D means, ``rsqrt``, ``bmm``, views and slices (all of which
XNNPACK takes), whole networks lower into one delegate call.

The rewrite is a decomposition table given to ``ExportedProgram.run_decompositions``: the models keep
their ordinary form (ONNX Runtime and OpenVINO fuse ``LayerNormalization``/``ReduceMean`` themselves and
would only lose from it), and each form equals the original up to float rounding (LayerNorm: the same
statistics, mean then mean of squared deviations, in the same order); ``tests/exporters/test_executorch``
proves it form by form.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

import torch

aten = torch.ops.aten


def _mean_dims(x: torch.Tensor, dims: Sequence[int] | None) -> list[int]:
    rank = x.dim()
    return sorted({d % rank for d in dims} if dims else set(range(rank)))


def _xnnpack_takes_mean(x: torch.Tensor, dims: list[int], keepdim: bool, dtype: object) -> bool:
    return x.dim() == 4 and dims == [2, 3] and keepdim and dtype is None


def mean_4d(x: torch.Tensor, dims: Sequence[int] | None, keepdim: bool = False, *,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x.mean(dims, keepdim)`` as one 4-D mean over [2, 3]: kept axes first (as channels), reduced
    axes flattened into the spatial plane. Returns ``NotImplemented`` when XNNPACK already takes it."""
    reduced = _mean_dims(x, dims)
    if dtype is not None or not reduced or _xnnpack_takes_mean(x, reduced, keepdim, dtype):
        return NotImplemented
    kept = [d for d in range(x.dim()) if d not in reduced]
    kept_shape = [x.shape[d] for d in kept]
    moved = x.permute(*kept, *reduced) if kept + reduced != list(range(x.dim())) else x
    flat = moved.reshape(1, prod(kept_shape), prod(x.shape[d] for d in reduced), 1)
    out = aten.mean.dim(flat, [2, 3], True)
    shape = [1 if d in reduced else x.shape[d] for d in range(x.dim())] if keepdim else kept_shape
    return out.reshape(shape)


def layer_norm_4d(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None,
                  bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``native_layer_norm`` from 4-D means: mean, centred, mean of squares, ``rsqrt``, affine.

    Returns ``(out, mean, rstd)`` like the ATen op (the statistics in its shapes, for any consumer).
    """
    axis = x.dim() - len(normalized_shape)
    rows = prod(x.shape[:axis])
    flat = x.reshape(1, rows, prod(normalized_shape), 1)
    mean = aten.mean.dim(flat, [2, 3], True)
    centred = flat - mean
    var = aten.mean.dim(centred * centred, [2, 3], True)
    rstd = torch.rsqrt(var + eps)
    out = (centred * rstd).reshape(x.shape)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    stat_shape = [*x.shape[:axis], *([1] * len(normalized_shape))]
    return out, mean.reshape(stat_shape), rstd.reshape(stat_shape)


def layer_norm(x: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5, cudnn_enable: bool = True) -> torch.Tensor:
    """``aten.layer_norm`` (what ``torch.export`` keeps from ``F.layer_norm``) through :func:`layer_norm_4d`."""
    return layer_norm_4d(x, normalized_shape, weight, bias, eps)[0]


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with equal batch dims as one ``bmm``. ATen's own decomposition writes an ``expand`` of
    each operand first (an identity here), which XNNPACK does not take: every attention product would
    otherwise cut the graph into separate delegate calls."""
    if a.dim() < 3 or b.dim() < 3 or a.shape[:-2] != b.shape[:-2]:
        return NotImplemented
    batch = list(a.shape[:-2])
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    out = aten.bmm.default(a.reshape(prod(batch), m, k), b.reshape(prod(batch), k, n))
    return out.reshape(*batch, m, n)


def identity_expand(x: torch.Tensor, size: Sequence[int], implicit: bool = False) -> torch.Tensor:
    """``x.expand(size)`` that changes no dimension (``cls_token.expand(B, -1, -1)`` at batch 1) as a view."""
    target = [x.shape[i - (len(size) - x.dim())] if s == -1 else s for i, s in enumerate(size)]
    if list(x.shape) != target:
        return NotImplemented
    return aten.view.default(x, target)


def split_as_slices(x: torch.Tensor, split_size: int | Sequence[int], dim: int = 0) -> list[torch.Tensor]:
    """``split``/``split_with_sizes`` as slices: XNNPACK takes ``slice_copy`` but not ``split_with_sizes_copy``."""
    dim %= x.dim()
    length = x.shape[dim]
    sizes = list(split_size) if isinstance(split_size, (list, tuple)) else \
        [min(split_size, length - i) for i in range(0, length, split_size)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [aten.slice.Tensor(x, dim, a, a + n) for a, n in zip(starts, sizes)]


def xnnpack_decompositions() -> dict[torch._ops.OpOverload, Callable[..., object]]:
    """The table for ``ExportedProgram.run_decompositions``."""
    return {aten.layer_norm.default: layer_norm, aten.native_layer_norm.default: layer_norm_4d,
            aten.mean.dim: mean_4d, aten.matmul.default: batched_matmul, aten.expand.default: identity_expand,
            aten.split.Tensor: split_as_slices, aten.split_with_sizes.default: split_as_slices}
