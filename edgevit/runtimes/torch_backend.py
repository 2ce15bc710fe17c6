"""PyTorch backend: eager CPU (the reference every artifact is verified against) and CUDA.

On CUDA it offers what a deployer would try before TensorRT: fp16/bf16 autocast, channels-last memory
format, ``torch.compile`` and CUDA-graph capture (``compile="reduce-overhead"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..artifact import ArtifactMetadata
from ..errors import BackendUnavailableError, EdgevitError
from ..models import create_model
from .base import Runner, RunnerInfo, TensorSpec

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchRunner(Runner):
    def __init__(self, model: nn.Module | str, *, threads: int | None = None, device: str = "cpu",
                 input_size: tuple[int, int] | None = None, precision: str = "fp32",
                 channels_last: bool = False, compile: str | bool = False) -> None:
        if isinstance(model, str):
            model = create_model(model)
        if precision not in ("fp32", *_AUTOCAST):
            raise EdgevitError(f"unknown torch precision {precision!r}; choose fp32, fp16 or bf16")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("torch CUDA backend needs a CUDA GPU and a CUDA build of torch")
        if threads:
            torch.set_num_threads(threads)  # process-wide in PyTorch
        self.device = torch.device(device)
        self.precision = precision
        if self.device.type == "cuda" and precision == "fp32":
            # "fp32" means fp32: PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa)
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        module = model.eval().to(self.device, memory_format=self.memory_format)
        self.model: Callable[[torch.Tensor], object] = module
        if compile:
            self.model = torch.compile(module, mode=compile if isinstance(compile, str) else None)
        card = getattr(model, "card", None)
        # eager PyTorch takes any size the architecture accepts (the model checks); pin it only when asked
        h, w = input_size or ("height", "width")
        self.inputs = [TensorSpec("input", ("batch", 3, h, w))]
        self.outputs = [TensorSpec(n, ()) for n in getattr(model, "output_names", ["output"])]
        self.metadata = None
        if card is not None:
            self.metadata = ArtifactMetadata(model=card.name, input_size=input_size or card.input_size,
                                             mean=card.mean, std=card.std, batch=None,
                                             output_names=tuple(o.name for o in self.outputs),
                                             features_only=bool(getattr(model, "features_only", False)),
                                             weights=getattr(model, "weights_label", "unknown"))
        details = {"torch": torch.__version__}
        if self.device.type == "cuda":
            details["gpu"] = torch.cuda.get_device_name(self.device)
        else:
            details["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        if channels_last:
            details["memory_format"] = "channels_last"
        if compile:
            details["compile"] = str(compile)
        self.info = RunnerInfo("torch", precision, self.device.type,
                               torch.get_num_threads() if self.device.type == "cpu" else None, details)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision])

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.inference_mode(), self._autocast():
            y = self.model(x.contiguous(memory_format=self.memory_format))
        return tuple(y) if isinstance(y, (tuple, list)) else (y,)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ys = self._forward(torch.from_numpy(feeds[self.inputs[0].name]).to(self.device))
        return {spec.name: t.float().cpu().numpy() for spec, t in zip(self.outputs, ys)}

    def benchmark_callable(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> Callable[[], object]:
        x = torch.from_numpy(self._check_feeds(feeds)[self.inputs[0].name]).to(self.device)
        if self.device.type != "cuda":
            return lambda: self._forward(x)

        def call() -> None:  # input stays on the GPU; time until the kernels have finished
            self._forward(x)
            torch.cuda.synchronize(self.device)

        return call
