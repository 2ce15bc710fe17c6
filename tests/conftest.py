"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmarks cache artifacts; tests must never read or fill the user's cache."""
    monkeypatch.setenv("EDGEVIT_CACHE", str(tmp_path_factory.getbasetemp() / "edgevit-cache"))


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Runners take ``threads=`` and PyTorch's thread count is process-wide: a test that asks for one
    thread must not leave the rest of the suite single-threaded."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def randomize_norm_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms.

    Freshly built BNs are identities (mean 0, var 1, weight 1, bias 0), which hides folding and
    ordering bugs; parity tests must see real statistics.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def export_with_random_stats(name: str, out_dir: Path, size: tuple[int, int] = (224, 224), batch: int = 1,
                             features_only: bool = False, rtol: float = 1e-4):
    """Export ``name`` with random weights *and* non-trivial BatchNorm statistics (saved as a checkpoint so
    export and reference share them) and assert ONNX Runtime parity within ``rtol``."""
    from edgevit import pipeline
    from edgevit.models import create_model

    model = randomize_norm_stats(create_model(name), seed=1)
    weights = out_dir / f"{name}.pth"
    torch.save(model.state_dict(), weights)
    report = pipeline.export(name, "onnx", out_dir / f"{name}-{size[0]}x{size[1]}.onnx", input_size=size,
                             batch=batch, weights=str(weights), features_only=features_only, rtol=rtol)
    assert report.parity is not None and report.parity.passed, report.parity.summary()
    assert report.parity.worst_rel <= rtol
    print(f"{name} {size[0]}x{size[1]} b{batch}{' features' if features_only else ''}: "
          f"{report.parity.summary()} ({report.seconds:.0f} s)")
    return report
