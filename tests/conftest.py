"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's PyTorch gets its share of the cores, not all of them.

    Why: two workers each running PyTorch's OpenMP pool over every core oversubscribe the machine, and
    OpenMP's spin-waiting turns that into a collapse, not a 2x slowdown: A2Mamba's eager reference at 200x260
    took 8 s alone and 59 s beside one other 2-thread PyTorch process (2 cores, measured), 230 s in the suite.
    Tests that ask for a thread count still get it (runners set it; the fixture below restores the share).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


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
