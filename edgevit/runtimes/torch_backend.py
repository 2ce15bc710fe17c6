"""PyTorch eager backend: the reference every artifact is verified against."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..artifact import ArtifactMetadata
from ..models import create_model
from .base import Runner, RunnerInfo, TensorSpec


class TorchRunner(Runner):
    def __init__(self, model: nn.Module | str, *, threads: int | None = None, device: str = "cpu",
                 input_size: tuple[int, int] | None = None) -> None:
        if isinstance(model, str):
            model = create_model(model)
        if threads:
            torch.set_num_threads(threads)  # process-wide in PyTorch
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        card = getattr(model, "card", None)
        # eager PyTorch takes any size the architecture accepts (the model checks); pin it only when asked
        h, w = input_size or ("height", "width")
        self.inputs = [TensorSpec("input", ("batch", 3, h, w))]
        self.outputs = [TensorSpec(n, ()) for n in getattr(model, "output_names", ["output"])]
        self.metadata = None
        if card is not None:
            self.metadata = ArtifactMetadata(model=card.name, input_size=input_size or card.input_size, mean=card.mean, std=card.std,
                                             batch=None, output_names=tuple(o.name for o in self.outputs),
                                             features_only=bool(getattr(model, "features_only", False)))
        self.info = RunnerInfo("torch", "fp32", device, torch.get_num_threads() if device == "cpu" else None)

    @torch.inference_mode()
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(feeds[self.inputs[0].name]).to(self.device)
        y = self.model(x)
        ys = y if isinstance(y, (tuple, list)) else (y,)
        return {spec.name: t.float().cpu().numpy() for spec, t in zip(self.outputs, ys)}
