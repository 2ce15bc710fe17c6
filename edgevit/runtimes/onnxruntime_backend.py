"""ONNX Runtime backend (CPU provider by default; any installed provider can be requested)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import ArtifactMetadata
from ..errors import ArtifactError
from .base import Runner, RunnerInfo, TensorSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: str | Path, *, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"ONNX Runtime cannot load {str(path)!r}: {first}") from exc
        self.inputs = [TensorSpec(i.name, _dims(i.shape), _ORT_TYPES.get(i.type, "float32"))
                       for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, _dims(o.shape), _ORT_TYPES.get(o.type, "float32"))
                        for o in self.session.get_outputs()]
        self.metadata = ArtifactMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, str(path))
        provider = self.session.get_providers()[0]
        precision = "fp16" if self.inputs and self.inputs[0].dtype == "float16" else "fp32"
        details = {"provider": provider, "onnxruntime": ort.__version__}
        stored = self.metadata.extra.get("precision") if self.metadata else None
        if stored == "int8":  # a QDQ model: quantized ops run integer kernels, the rest float
            precision = f"int8+{precision}"
            details["model_precision"] = stored
        self.info = RunnerInfo("onnxruntime", precision, "cuda" if "CUDA" in provider else "cpu", threads, details)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(None, feeds)
        return {spec.name: v for spec, v in zip(self.outputs, values)}


def _dims(shape: list) -> tuple[int | str, ...]:
    return tuple(d if isinstance(d, int) else str(d or "dynamic") for d in shape)
