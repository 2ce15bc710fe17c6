"""How the selective scan (``edgevit::selective_scan``, :mod:`edgevit.models.ops.selective_scan`) is
written to ONNX.

Two modes, chosen by :class:`~edgevit.exporters.onnx.OnnxExportOptions.scan`:

``decomposed`` (default)
    The model's own export formulation: the chunked masked matrix form in standard ops
    (CumSum, Exp, Where, MatMul, ...), no Loop/Scan node, so every runtime runs it as is.

``custom``
    One ``edgevit.SelectiveScan`` node per scan (custom domain ``edgevit``, version 1) with the inputs
    ``(u, delta, A, Bs, delta_bias)`` of the torch op, for runtimes that bring their own kernel
    (TensorRT plugin, ORT custom op, OpenVINO extension). The node's reference body ships as a
    model-local ONNX function (:data:`SelectiveScan`, plus its helper ``SegsumScan``), so ONNX Runtime
    and any checker inline it and the file runs anywhere without a plugin.

The function body is attached after ``torch.onnx.export`` rather than emitted by it, because the
exporter's opset version conversion inlines every model-local function.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import onnx
import torch
from onnxscript import FLOAT, script
from onnxscript import opset18 as op
from onnxscript.values import Opset
from torch import Tensor, nn

from ..errors import EdgevitError
from ..models.ops.selective_scan import selective_scan, use_scan_custom_op

SCAN_MODES = ("decomposed", "custom")
DOMAIN = "edgevit"
DOMAIN_VERSION = 1
NODE_NAME = "SelectiveScan"

EDGEVIT = Opset(DOMAIN, DOMAIN_VERSION)


@script(EDGEVIT, default_opset=op)
def SegsumScan(a: FLOAT, x: FLOAT) -> FLOAT:
    """Inclusive scan ``h_t = exp(a_t) h_{t-1} + x_t`` over the last axis as one masked matrix product
    (segment sums by CumSum of the masked ``a``, ``-inf`` above the diagonal before Exp). The masks are
    built on the small ``n x n`` grid and applied by Mul/Add, as in the eager form, not by a broadcast Where."""
    n = op.Shape(a, start=-1)
    idx = op.Range(op.Constant(value_int=0), op.Squeeze(n), op.Constant(value_int=1))
    k = op.Unsqueeze(idx, op.Constant(value_ints=[1]))
    s = op.Unsqueeze(idx, op.Constant(value_ints=[0]))
    zero = op.CastLike(op.Constant(value_float=0.0), a)  # CastLike: onnxslim widens float Constants
    neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), a)
    after_s = op.CastLike(op.Greater(k, s), a)
    causal = op.Where(op.GreaterOrEqual(k, s), zero, neg_inf)
    seg = op.CumSum(op.Mul(op.Unsqueeze(a, op.Constant(value_ints=[-1])), after_s), op.Constant(value_int=-2))
    seg = op.Add(seg, causal)
    h = op.MatMul(op.Exp(seg), op.Unsqueeze(x, op.Constant(value_ints=[-1])))
    return op.Squeeze(h, op.Constant(value_ints=[-1]))


@script(EDGEVIT, default_opset=op)
def SelectiveScan(u: FLOAT, delta: FLOAT, A: FLOAT, Bs: FLOAT, delta_bias: FLOAT) -> FLOAT:
    """Reference body of ``edgevit.SelectiveScan`` (``d_state = 1``; every hidden state, (B, C, L)).

    Two levels: chunks of 32 steps scanned locally, chunk-end states carried by the same scan over
    the chunk grid (memory O(L * 32 + (L/32)^2) per channel).
    """
    z = delta + op.Unsqueeze(delta_bias, op.Constant(value_ints=[1]))
    threshold = op.CastLike(op.Constant(value_float=20.0), z)
    dt = op.Where(op.Greater(z, threshold), z, op.Softplus(z))  # torch's softplus threshold
    a = dt * op.Reshape(A, op.Constant(value_ints=[-1, 1]))
    x = Bs * (dt * u)

    chunk = op.Constant(value_ints=[32])
    lead = op.Shape(u, end=2)  # [B, C]
    length = op.Shape(u, start=2)  # [L]
    nc = op.Div(length + op.Constant(value_ints=[31]), chunk)
    padded = nc * chunk
    pads = op.Concat(op.Constant(value_ints=[0, 0, 0, 0, 0]), padded - length, axis=0)
    shape4 = op.Concat(lead, nc, chunk, axis=0)
    a4 = op.Reshape(op.Pad(a, pads), shape4)
    x4 = op.Reshape(op.Pad(x, pads), shape4)

    h4 = SegsumScan(a4, x4)  # (B, C, nc, 32), each chunk from zero
    last = op.Constant(value_ints=[-1])
    g = op.ReduceSum(a4, last, keepdims=0)  # log-decay across each chunk
    e = op.Squeeze(op.Slice(h4, last, op.Constant(value_ints=[2**62]), last), last)  # chunk-end states
    carry = SegsumScan(g, e)  # true state at the end of every chunk
    carry_in = op.Pad(op.Slice(carry, op.Constant(value_ints=[0]), last, last),
                      op.Constant(value_ints=[0, 0, 1, 0, 0, 0]))
    h4 = h4 + op.Exp(op.CumSum(a4, op.Constant(value_int=-1))) * op.Unsqueeze(carry_in, last)
    h = op.Reshape(h4, op.Concat(lead, padded, axis=0))
    return op.Slice(h, op.Constant(value_ints=[0]), length, op.Constant(value_ints=[2]))


@script(EDGEVIT, default_opset=op)
def _emit_custom_node(u: FLOAT, delta: FLOAT, A: FLOAT, Bs: FLOAT, delta_bias: FLOAT) -> FLOAT:
    return EDGEVIT.SelectiveScan(u, delta, A, Bs, delta_bias)


def check_scan_mode(mode: str) -> str:
    if mode not in SCAN_MODES:
        raise EdgevitError(f"unknown scan mode {mode!r}; choose one of {', '.join(SCAN_MODES)}")
    return mode


def translation_table(mode: str) -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export`` (empty in decomposed mode: the model then
    traces the scan as plain ops)."""
    if check_scan_mode(mode) == "custom":
        return {torch.ops.edgevit.selective_scan.default: _emit_custom_node}
    return {}


@contextmanager
def scan_export_mode(mode: str) -> Iterator[None]:
    """Within the block, exporting traces the scan as the custom op (custom mode) or as plain ops."""
    with use_scan_custom_op(check_scan_mode(mode) == "custom"):
        yield


def attach_scan_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Ship the reference body of every ``edgevit.SelectiveScan`` node as a model-local function."""
    if not any(n.domain == DOMAIN and n.op_type == NODE_NAME for n in proto.graph.node):
        return proto
    have = {(f.domain, f.name) for f in proto.functions}
    for fn in (SegsumScan, SelectiveScan):
        if (DOMAIN, fn.name) not in have:
            proto.functions.append(fn.to_function_proto())
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return proto


class _ScanOnly(nn.Module):
    def forward(self, u: Tensor, delta: Tensor, A: Tensor, Bs: Tensor, delta_bias: Tensor) -> Tensor:
        return selective_scan(u, delta, A, Bs, delta_bias)


def export_selective_scan(example: tuple[Tensor, ...], mode: str = "decomposed", simplify: bool = True,
                          opset: int = 18) -> onnx.ModelProto:
    """The scan alone as an ONNX model with inputs ``(u, delta, A, Bs, delta_bias)`` shaped like
    ``example``, built exactly as :func:`~edgevit.exporters.onnx.export_onnx` builds a model's scans
    (for op-level tests and benchmarks)."""
    from .onnx import quiet_exporter

    quiet_exporter()
    with warnings.catch_warnings(), scan_export_mode(mode):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(_ScanOnly(), example, dynamo=True, opset_version=opset, verbose=False,
                                    input_names=["u", "delta", "A", "Bs", "delta_bias"], output_names=["h"],
                                    custom_translation_table=translation_table(mode))
    proto = attach_scan_functions(program.model_proto)
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    onnx.checker.check_model(proto)
    return proto
