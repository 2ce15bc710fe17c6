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
* :func:`selective_scan_chunked` - the chunked form (spec §5.2) in plain PyTorch ops: no loop, so
  ``torch.export`` yields standard ONNX ops (Exp/Mul/Add/MatMul, a recurrence unrolled over one chunk's
  steps) with no Loop/Scan node;
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

# Steps per chunk: the local scan is unrolled over them and the chunk-end carry recurses on L / chunk states. With
# the unrolled recurrence (:func:`_local_scan`) 8 beat 4 and 16 in ONNX Runtime (both thread counts), OpenVINO and
# torch eager at a2mamba-n's stage shapes (batch 16; issue 20, session 17: C 32 x L 3136, ORT 1 thread 9.7 / 9.3 /
# 11.5 ms for 4 / 8 / 16). The earlier matrix form held an (n, n, m) decay tensor per level and preferred 4.
DEFAULT_CHUNK = 8
# MACs per (batch, channel, step, state) of the scan alone, as the official fvcore counter
# (``flops_selective_scan_fn(with_C=False, with_D=False)`` = 7 * B * L * D * N) counts them.
SCAN_MACS_PER_ELEMENT = 7

_CUSTOM_OP_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("edgevit_scan_custom_op",
                                                                         default=False)
_ELEMENTWISE_SOFTPLUS: contextvars.ContextVar[bool] = contextvars.ContextVar("edgevit_elementwise_softplus",
                                                                            default=False)


@contextmanager
def _exporter_switch(switch: contextvars.ContextVar[bool], enabled: bool) -> Iterator[None]:
    """``switch`` set to ``enabled`` within the block (an exporter's choice of how an op traces)."""
    token = switch.set(enabled)
    try:
        yield
    finally:
        switch.reset(token)


def _switched_on(switch: contextvars.ContextVar[bool]) -> bool:
    """An exporter switch, read where dynamo cannot trace ``ContextVar.get`` (torch.compile, fullgraph):
    the switches are for exporters, never for compile, so they read as off there."""
    return not torch.compiler.is_dynamo_compiling() and switch.get()


def softplus_elementwise(z: Tensor) -> Tensor:
    """``log(1 + exp(z))`` from elementwise ops every runtime vectorises (what ONNX exports use).

    ``max(z, 0) + log1p(exp(-|z|))``: the exponential's argument is never positive (no overflow), and
    ``log1p(e) = e * log(u) / (u - 1)`` with ``u = 1 + e`` rounded (Goldberg's form: the ratio cancels the
    rounding of ``u``); where ``u`` would round to 1 (``z < -16``, where ``log(1 + e)`` would give 0) the ratio is
    taken at ``u = 1 + 2^-23``, where it is its limit 1 to fp32 rounding. That is a clamp, not an equality test and
    a select: ONNX Runtime ran that Where single-threaded, and the clamp form made a2mamba-n's batch-16 call 7 %
    faster there (1 thread; issue 20, session 18). Equal to the fp64 softplus to a few fp32 ulps over the whole
    range, including torch's ``z > 20`` branch (``z``). Every node but the clamp matters at the tolerance (no
    rounding-size correction term whose sign flip a mutation test could not see); the clamp acts only below
    ``z = -16``, where the softplus tests hold it. Why not the ONNX ``Softplus`` node torch exports: ONNX
    Runtime runs it as a scalar loop (a2mamba-n at batch 16, 1 thread: 90 ms of 1.5 s, 0.7 GB/s, plus the
    threshold's Greater/Where), while these ops stream at memory speed (OpenVINO: no change either way).
    """
    e = torch.exp(-z.abs())
    u = 1.0 + e.clamp(min=torch.finfo(e.dtype).eps)  # never rounds to 1: the ratio there is its limit 1 to rounding
    return z.clamp(min=0) + e * (torch.log(u) / (u - 1.0))


def discretize(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> tuple[Tensor, Tensor]:
    """Log-decay ``a = dt * A <= 0`` and input ``x = B * (dt * u)`` in fp32, both ``(B, C, L)``.

    The softplus is :func:`softplus_elementwise` inside :func:`use_elementwise_softplus` (the ONNX exporter),
    torch's one kernel elsewhere."""
    z = delta.float() + delta_bias.float().reshape(-1, 1)
    dt = softplus_elementwise(z) if _switched_on(_ELEMENTWISE_SOFTPLUS) else F.softplus(z)
    a = dt * A.float().reshape(-1, 1)
    x = Bs.float() * (dt * u.float())
    return a, x


@table_builder("scan_prefix")
@functools.lru_cache(maxsize=32)
def _scan_prefix_np(n: int) -> tuple[np.ndarray]:
    """``prefix (n, n)`` = ``[k <= t]`` at row ``t``, column ``k``: ``prefix @ a`` is the inclusive cumulative sum
    of ``a`` over its first axis, every entry a direct sum of its own terms (one GEMM; no running difference)."""
    return ((np.arange(n)[None, :] <= np.arange(n)[:, None]).astype(np.float32),)


def _local_scan(a: Tensor, x: Tensor) -> Tensor:
    """Inclusive scan ``h_t = exp(a_t) h_{t-1} + x_t`` from ``h_{-1} = 0`` along axis 0 (``n`` steps) of ``(n, m)``
    tensors, every column (``m`` independent sequences) at once: the recurrence itself, unrolled over the few
    steps of a chunk, on rows of ``m`` contiguous values.

    Why the recurrence and not the masked matrix form (all ``n^2`` segment sums by one GEMM with a 0/1 matrix,
    ``exp``, a broadcast Mul and a sum over ``s``): that form writes and rereads an ``(n, n, m)`` decay tensor,
    ``n``-fold the data, where the recurrence reads each value once, and both are exact to fp32 rounding (a
    strong decay underflows ``exp`` to 0, never to NaN). The scan alone, batch 16, 1 thread (ms, matrix form
    with chunks of 4 -> this with chunks of 8): C 32 x L 3136: ONNX Runtime 23.0 -> 9.3, OpenVINO 22.1 -> 10.8,
    torch eager 77 -> 13; C 128 x L 196: 5.6 -> 2.4, 5.3 -> 3.2, 9.8 -> 3.3 (issue 20, session 17).
    """
    decay = a[1:].exp()  # the first step's decay multiplies h_{-1} = 0
    states = [x[0]]
    for step in range(1, a.shape[0]):
        states.append(decay[step - 1] * states[-1] + x[step])
    return torch.stack(states)


def _chunked_scan(a: Tensor, x: Tensor, chunk: int) -> Tensor:
    """Inclusive scan over the last axis: chunks scanned locally, chunk-end states carried recursively.

    Each level lays its chunks out steps-outermost, ``(chunk, sequences * chunks)``, so :func:`_local_scan`
    and the carry update work on long contiguous rows. Why this layout (issue 20, session 17): the
    transposes into it move a short innermost axis outwards, which ONNX Runtime does fast at any thread count,
    whereas a steps-major layout ``(..., chunk, chunks)`` needs batched ``chunk x chunks`` transposes of every
    (batch, channel) row, each a task of its thread pool: with 2 threads each such transpose cost ~1-2 ms
    instead of ~0.05 ms (a2mamba-n's C 128 x L 196 scan, batch 16, ONNX Runtime: 1 thread 10.3 -> 5.4 ms,
    2 threads 31.7 -> 10.5 ms from the layout alone).
    """
    shape, length = a.shape, a.shape[-1]
    a, x = a.reshape(-1, length), x.reshape(-1, length)
    rows = a.shape[0]
    if length <= chunk:
        return _local_scan(a.transpose(0, 1), x.transpose(0, 1)).transpose(0, 1).reshape(shape)
    nc = -(-length // chunk)
    pad = nc * chunk - length
    if pad:  # a = x = 0 after the end: the padded steps cannot affect earlier ones
        a, x = F.pad(a, (0, pad)), F.pad(x, (0, pad))
    a = a.reshape(rows, nc, chunk).permute(2, 0, 1).reshape(chunk, rows * nc)  # (step, sequence-major chunks)
    x = x.reshape(rows, nc, chunk).permute(2, 0, 1).reshape(chunk, rows * nc)
    h = _local_scan(a, x)  # every chunk started from zero
    # true state at the end of every chunk but the last (whose end state no chunk receives)
    carry = _chunked_scan(a.sum(0).view(rows, nc)[:, :-1], h[-1].view(rows, nc)[:, :-1], chunk)
    carry_in = F.pad(carry, (1, 0)).reshape(1, rows * nc)  # state entering every chunk
    (prefix,) = constant_tables("scan_prefix", (chunk,), (a.dtype,), a.device)
    h = h + (prefix @ a).exp() * carry_in
    h = h.view(chunk, rows, nc).permute(1, 2, 0).reshape(rows, nc * chunk)
    return h[:, :length].reshape(shape)


def selective_scan_chunked(
    u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor, chunk: int = DEFAULT_CHUNK
) -> Tensor:
    """The scan in chunks (no loop; spec §5.2).

    The sequence is cut into chunks of ``chunk`` steps; each chunk is scanned locally with
    :func:`_local_scan`, the chunk-end states are carried across chunks by the same scan one level up
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
    with _exporter_switch(_CUSTOM_OP_ENABLED, enabled):
        yield


@contextmanager
def use_elementwise_softplus(enabled: bool = True) -> Iterator[None]:
    """Within the block, the scan's softplus traces as :func:`softplus_elementwise`. For ONNX graphs (ONNX
    Runtime's Softplus kernel is scalar); not for ExecuTorch, whose int8 quantizer would give the decomposition's
    adds int8 ranges (``1 + e`` in [1, 2] at steps of 1/255 moves small step sizes by far more than themselves)
    while it leaves a softplus node in float."""
    with _exporter_switch(_ELEMENTWISE_SOFTPLUS, enabled):
        yield


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> Tensor:
    """The scan as models call it (see the module docstring for which form runs when)."""
    if _switched_on(_CUSTOM_OP_ENABLED):
        return torch.ops.edgevit.selective_scan(u, delta, A, Bs, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, Bs, delta_bias))
    if needs_grad or torch.compiler.is_exporting():
        return selective_scan_chunked(u, delta, A, Bs, delta_bias)
    return torch.ops.edgevit.selective_scan(u, delta, A, Bs, delta_bias)
