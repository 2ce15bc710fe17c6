"""Exporters turn a PyTorch model into a deployable artifact; they never run it (see ``runtimes``)."""

from .onnx import OnnxExportOptions, export_onnx
from .transforms import fold_batchnorm

__all__ = ["OnnxExportOptions", "export_onnx", "fold_batchnorm"]
