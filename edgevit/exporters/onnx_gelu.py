"""GELU written to ONNX in the operand order runtimes fuse into one kernel.

Opset 18 has no ``Gelu`` node, so the exporter writes ``gelu(x) = x * 0.5 * (1 + erf(x / sqrt(2)))`` as
five elementwise nodes. The torch exporter's own translation multiplies ``0.5 * (1 + erf(...))`` first and
``x`` last; ONNX Runtime's ``GeluFusion`` (1.32) matches ``(x * 0.5) * (1 + erf(...))`` and
``(x * (1 + erf(...))) * 0.5`` but not that order, so every GELU ran as Div, Erf, Add, Mul, Mul - five passes
over the activation instead of one ``Gelu`` kernel. Measured (batch 16 at 224, 1 thread, interleaved; issue
20, session 18): a2mamba-n 0.833 -> 0.749 s, mat-1 0.268 -> 0.239 s per call. OpenVINO's GELU fusion
matches both orders. The function is the same; only the rounding of one product moves (<= 1 ulp).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from onnxscript import ir
from onnxscript import opset18 as op


def _gelu(self, approximate: str = "none"):
    """``aten::gelu`` with ``x * 0.5`` formed first (the order :mod:`onnxruntime` fuses). ``self`` is the
    exporter's symbolic value (onnxscript), typed at trace time."""

    def const(value: float) -> object:
        return ir.tensor(value, dtype=self.dtype)

    half_x = op.Mul(self, const(0.5))
    if approximate == "tanh":
        cubic = op.Add(self, op.Mul(const(0.044715), op.Pow(self, const(3))))
        inner = op.Tanh(op.Mul(const(math.sqrt(2.0 / math.pi)), cubic))
    else:
        inner = op.Erf(op.Div(self, const(math.sqrt(2.0))))
    return op.Mul(half_x, op.Add(inner, const(1)))


def gelu_translation() -> dict[Callable, Callable]:
    """``custom_translation_table`` entry for ``torch.onnx.export``."""
    return {torch.ops.aten.gelu.default: _gelu}
