"""TensorRT runtime: deserialises an engine (after checking its manifest) and runs it on torch CUDA buffers.

UNVERIFIED here (no GPU/TensorRT on the development and CI machines); written against the TensorRT 10
tensor-address API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..artifact import ArtifactMetadata
from ..errors import ArtifactError, BackendUnavailableError
from ..exporters.tensorrt import EngineManifest, compatibility_problem, gpu_identity, manifest_path
from .base import Runner, RunnerInfo, TensorSpec


class TensorRTRunner(Runner):
    def __init__(self, path: str | Path, **_: object) -> None:
        try:
            import tensorrt as trt
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("the TensorRT runtime needs: pip install 'edgevit[tensorrt]'") from exc
        path = Path(path)
        manifest = EngineManifest.read(manifest_path(path))
        gpu, cc = gpu_identity()
        problem = compatibility_problem(manifest, trt.__version__, gpu, cc)
        if problem:
            raise ArtifactError(f"{path.name}: {problem}")
        self._torch = torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not deserialise {str(path)!r}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._dtypes = {n: torch.from_numpy(np.zeros(0, trt.nptype(self.engine.get_tensor_dtype(n)))).dtype
                        for n in names}
        batch_dim = "batch" if manifest.min_shape[0] != manifest.max_shape[0] else manifest.min_shape[0]
        self.inputs = [TensorSpec(n, (batch_dim, *manifest.min_shape[1:]), "float32") for n in names if is_input[n]]
        self.outputs = [TensorSpec(n, tuple(self.engine.get_tensor_shape(n))) for n in names if not is_input[n]]
        self.metadata = ArtifactMetadata.from_props(manifest.metadata)
        self.info = RunnerInfo("tensorrt", manifest.precision, "cuda", None,
                               {"tensorrt": trt.__version__, "gpu": gpu, "fp32_layers": str(manifest.fp32_layers)})

    def _execute(self, inputs: dict[str, object]) -> dict[str, object]:
        torch = self._torch
        outputs = {}
        for name, tensor in inputs.items():
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            out = torch.empty(shape, dtype=self._dtypes[spec.name], device="cuda")
            self.context.set_tensor_address(spec.name, out.data_ptr())
            outputs[spec.name] = out
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ArtifactError("TensorRT execution failed")
        stream.synchronize()
        return outputs

    def _device_inputs(self, feeds: dict[str, np.ndarray]) -> dict[str, object]:
        torch = self._torch
        return {n: torch.from_numpy(a).to("cuda", self._dtypes[n]).contiguous() for n, a in feeds.items()}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self._execute(self._device_inputs(feeds))
        return {n: t.float().cpu().numpy() for n, t in out.items()}

    def benchmark_callable(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> Callable[[], object]:
        resident = self._device_inputs(self._check_feeds(feeds))
        return lambda: self._execute(resident)
