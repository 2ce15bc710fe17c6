"""Selective scan with one state per channel (Mamba S6, ``d_state = 1``), returning every hidden state.

Stands in for A2Mamba's CUDA kernel ``selective_scan_cuda_oflex_rh.fwd`` (see
``shared/specs/a2mamba.md`` §3.5 and §5.2). Per batch ``b``, channel ``c`` and step ``t`` with
``h_{-1} = 0``::

    dt_t = softplus(delta_t + delta_bias)          (PyTorch threshold 20, as the kernel)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t

and the result is ``h`` itself (C and D are applied by the caller, after the attention-based state
aggregation). Shapes: ``u, delta (B, C, L)``, ``A (C, 1)`` (already ``-exp(A_logs)``),
``Bs (B, 1, L)``, ``delta_bias (C,)``; the output is ``(B, C, L)`` fp32 (the kernel's ``out_float``).

Three formulations of one function:

* :func:`selective_scan_reference` - the sequential recurrence in fp64, the ground truth of the tests;
* :func:`selective_scan_chunked` - the chunked matrix form (spec §5.2) in plain PyTorch ops: no loop,
  so ``torch.export`` yields standard ONNX ops (MatMul/Exp/Mul/ReduceSum) with no Loop/Scan node;
* ``torch.ops.edgevit.selective_scan`` - a ``torch.library.custom_op`` whose kernel is the chunked form,
  with a fake kernel for tracing and a FLOP formula for :func:`edgevit.models.count_macs`; exporters
  that want a single custom node (a runtime plugin) enable it with :func:`use_scan_custom_op`.

:func:`selective_scan` is what models call: eager inference goes through the custom op (so the MAC
counter sees it), while ``torch.export`` and autograd see the plain chunked ops unless an exporter asked
for the custom node.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .constants import constant_tables, table_builder

# Work and the largest intermediate are O(L * chunk) per channel and the chunk-end carry recurses on
# L / chunk states, so small chunks win: at L = 3136 a chunk of 8 (4 levels) was several times faster on CPU
# than 32 or 64 (2 levels), and 4 (6 levels) beat 8 by 5-10 % in ONNX Runtime and OpenVINO and 2x in torch
# eager, with a smaller peak (a2mamba-n, batch 16; 2 was slower again).
DEFAULT_CHUNK = 4
# MACs per (batch, channel, step, state) of the scan alone, as the official fvcore counter
# (``flops_selective_scan_fn(with_C=False, with_D=False)`` = 7 * B * L * D * N) counts them.
SCAN_MACS_PER_ELEMENT = 7

_CUSTOM_OP_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("edgevit_scan_custom_op",
                                                                         default=False)


def discretize(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Log-decay ``a = dt * A <= 0`` and input ``x = B * (dt * u)`` in fp32, both ``(B, C, L)``."""
    dt = F.softplus(delta.float() + delta_bias.float().reshape(-1, 1))
    a = dt * A.float().reshape(-1, 1)
    x = Bs.float() * (dt * u.float())
    return a, x


@table_builder("scan_matrices")
@functools.lru_cache(maxsize=32)
def _scan_matrices_np(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Constants of an ``n``-step scan over the flattened ``(t, s)`` grid: ``segments (n, n*n)`` =
    ``[s < k <= t]`` (``a @ segments`` = every segment sum), ``causal (n*n,)`` = 0 where ``s <= t`` and
    ``-inf`` elsewhere, ``prefix (n, n)`` = ``[k <= t]`` (``a @ prefix`` = the inclusive cumulative sum)."""
    k, t, s = np.ogrid[:n, :n, :n]
    segments = ((s < k) & (k <= t)).reshape(n, n * n).astype(np.float32)
    causal = np.where(t[0] >= s[0], 0.0, -np.inf).reshape(n * n).astype(np.float32)
    prefix = (np.arange(n)[:, None] <= np.arange(n)[None, :]).astype(np.float32)
    return segments, causal, prefix


def _segsum_scan(a: Tensor, x: Tensor) -> Tensor:
    """Inclusive scan ``h_t = exp(a_t) h_{t-1} + x_t`` over the last axis (``n`` steps) without a loop.

    ``h_t = sum_{s<=t} exp(seg[t, s]) x_s`` with ``seg[t, s] = sum_{k=s+1..t} a_k``. All ``n^2`` segment
    sums come from one GEMM with a constant 0/1 matrix, each a direct sum of its own terms (no
    ``cumsum[t] - cumsum[s]`` difference, which cancels catastrophically over long ranges), and ``s > t`` is
    set to ``-inf`` *before* ``exp`` so a strong decay can never produce ``inf * 0 = NaN``. The weighted sum
    over ``s`` is a broadcast Mul + ReduceSum. Why this form: a masked CumSum over the ``(t, s)`` grid and a
    batched ``n x n`` matrix-vector product are slow in ONNX Runtime and OpenVINO (small batched kernels);
    the GEMM + Mul + ReduceSum form was 10-15 % faster end to end on a2mamba-n at batch 16 in both, and a
    spread-and-collect GEMM form (``x @ spread``, ``@ collect``) as fast but ~40 MB heavier at its peak.
    """
    n = a.shape[-1]
    segments, causal, _ = constant_tables("scan_matrices", (n,), (a.dtype,) * 3, a.device)
    decay = (a @ segments + causal).exp().unflatten(-1, (n, n))  # (..., t, s)
    return (decay * x.unsqueeze(-2)).sum(-1)


def _cumsum(a: Tensor) -> Tensor:
    """Inclusive cumulative sum over the last axis (one chunk) as a GEMM with a constant triangle."""
    prefix = constant_tables("scan_matrices", (a.shape[-1],), (a.dtype,) * 3, a.device)[2]
    return a @ prefix


def _chunked_scan(a: Tensor, x: Tensor, chunk: int) -> Tensor:
    """Inclusive scan over the last axis: chunks scanned locally, chunk-end states carried recursively."""
    length = a.shape[-1]
    if length <= chunk:
        return _segsum_scan(a, x)
    nc = -(-length // chunk)
    pad = nc * chunk - length
    if pad:  # a = x = 0 after the end: the padded steps cannot affect earlier ones
        a, x = F.pad(a, (0, pad)), F.pad(x, (0, pad))
    a, x = a.unflatten(-1, (nc, chunk)), x.unflatten(-1, (nc, chunk))
    h = _segsum_scan(a, x)  # (..., nc, chunk), every chunk started from zero
    carry = _chunked_scan(a.sum(-1), h[..., -1], chunk)  # true state at the end of every chunk
    carry_in = F.pad(carry[..., :-1], (1, 0))  # state entering every chunk
    h = h + _cumsum(a).exp() * carry_in.unsqueeze(-1)
    return h.flatten(-2)[..., :length]


def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor, chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """The scan as a chunked masked matrix form (no loop; spec §5.2).

    The sequence is cut into chunks of ``chunk`` steps; each chunk is scanned locally with
    :func:`_segsum_scan`, the chunk-end states are carried across chunks by the same scan one level up
    (the chunk grid is itself chunked when it is longer than ``chunk``, so memory stays O(L * chunk)
    at any resolution; for L <= chunk^2 this is exactly the spec's two-level form), and every step adds
    its chunk's incoming state decayed by the in-chunk cumulative ``a``. fp32 error vs the sequential
    scan ~1e-7 relative.
    """
    a, x = discretize(u, delta, A, Bs, delta_bias)
    return _chunked_scan(a, x, chunk)


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> Tensor:
    """The recurrence step by step in fp64: slow, obviously right, the tests' ground truth."""
    dt = F.softplus(delta.double() + delta_bias.double().reshape(-1, 1))
    a = dt * A.double().reshape(-1, 1)
    x = Bs.double() * (dt * u.double())
    h = torch.zeros_like(a[..., 0])
    out = torch.empty_like(a)
    for step in range(a.shape[-1]):
        h = torch.exp(a[..., step]) * h + x[..., step]
        out[..., step] = h
    return out.float()


@torch.library.custom_op("edgevit::selective_scan", mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> Tensor:
    return selective_scan_chunked(u, delta, A, Bs, delta_bias).contiguous()  # same strides as the fake


@_selective_scan_op.register_fake
def _selective_scan_fake(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> Tensor:
    return u.new_empty(u.shape, dtype=torch.float32)


@register_flop_formula(torch.ops.edgevit.selective_scan)
def _selective_scan_flops(u_shape: tuple[int, ...], *args: object, out_shape: object = None,
                          **kwargs: object) -> int:
    """FLOPs (= 2 x MACs) of the scan; d_state = 1."""
    b, c, length = u_shape
    return 2 * SCAN_MACS_PER_ELEMENT * b * c * length


@contextmanager
def use_scan_custom_op(enabled: bool = True) -> Iterator[None]:
    """Within the block, :func:`selective_scan` calls the custom op even while exporting, so the
    exported program holds one ``edgevit::selective_scan`` node (for exporters that translate it into
    a custom-domain node)."""
    token = _CUSTOM_OP_ENABLED.set(enabled)
    try:
        yield
    finally:
        _CUSTOM_OP_ENABLED.reset(token)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> Tensor:
    """The scan as models call it (see the module docstring for which form runs when)."""
    # dynamo cannot trace ContextVar.get (torch.compile, fullgraph); the switch is for exporters, never compile
    if not torch.compiler.is_dynamo_compiling() and _CUSTOM_OP_ENABLED.get():
        return torch.ops.edgevit.selective_scan(u, delta, A, Bs, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, Bs, delta_bias))
    if needs_grad or torch.compiler.is_exporting():
        return selective_scan_chunked(u, delta, A, Bs, delta_bias)
    return torch.ops.edgevit.selective_scan(u, delta, A, Bs, delta_bias)
