"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


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


def export_verified(name: str, out_dir: Path, size: tuple[int, int] = (224, 224), batch: int = 1,
                    features_only: bool = False, rtol: float = 1e-4):
    """Export ``name`` with its reference weights (realistic norm statistics, every path carrying signal:
    ``edgevit.models.init``) and assert ONNX Runtime parity within ``rtol``."""
    from edgevit import pipeline

    report = pipeline.export(name, "onnx", out_dir / f"{name}-{size[0]}x{size[1]}.onnx", input_size=size,
                             batch=batch, features_only=features_only, rtol=rtol)
    assert report.parity is not None and report.parity.passed, report.parity.summary()
    assert report.parity.worst_rel <= rtol
    print(f"{name} {size[0]}x{size[1]} b{batch}{' features' if features_only else ''}: "
          f"{report.parity.summary()} ({report.seconds:.0f} s)")
    return report
