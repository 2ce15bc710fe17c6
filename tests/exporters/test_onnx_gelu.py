"""GELU is exported in the operand order ONNX Runtime fuses into one ``Gelu`` kernel, and stays exact."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgevit.artifact import ArtifactMetadata
from edgevit.exporters import OnnxExportOptions, export_onnx
from tests.ort_support import ort_optimized_graph


class _ConvGelu(nn.Module):
    """A conv then GELU: the shape every zoo FFN has."""

    def __init__(self, approximate: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv(x), approximate=self.approximate)


def _export(tmp_path: Path, approximate: str) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = _ConvGelu(approximate).eval()
    meta = ArtifactMetadata("conv-gelu", (8, 8), (0.5,) * 3, (0.5,) * 3, 2)
    return model, export_onnx(model, tmp_path / f"gelu-{approximate}.onnx", OnnxExportOptions((8, 8), 2), meta)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_exported_gelu_equals_torch(approximate: str, tmp_path: Path) -> None:
    model, path = _export(tmp_path, approximate)
    x = np.random.default_rng(0).normal(0.0, 3.0, (2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-6


def test_onnxruntime_fuses_the_exported_gelu(tmp_path: Path) -> None:
    """The exporter's own order (``x * (0.5 * (1 + erf))``) left Div, Erf, Add, Mul, Mul in ORT's graph."""
    _, path = _export(tmp_path, "none")
    ran = collections.Counter(n.op_type for n in ort_optimized_graph(path, tmp_path / "optimized.onnx").node)
    assert ran["Gelu"] == 1 and ran["Erf"] == 0, ran
