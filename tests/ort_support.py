"""Shared by tests that check what ONNX Runtime makes of an exported graph (its own fusions), not the file."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort


def ort_optimized_graph(path: Path, out: Path,
                        level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> onnx.GraphProto:
    """The graph ONNX Runtime's CPU provider runs for ``path`` at ``level``, saved to ``out`` and read back."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    options.graph_optimization_level = level
    options.log_severity_level = 3  # the save warns that an ENABLE_ALL graph is machine specific: known
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return onnx.load(str(out)).graph
