"""CUDA and TensorRT paths: real tests where a GPU (and TensorRT) exist, clean skips elsewhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit import pipeline, runtimes
from edgevit.formats import format_options
from edgevit.verify import compare_outputs, seeded_inputs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
needs_tensorrt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                                    reason="TensorRT is not installed (pip install 'edgevit[tensorrt]')")


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_fp32_matches_cpu() -> None:
    x = seeded_inputs(2, (224, 224))
    ref = runtimes.load("s2aformer-mini").run(x)
    gpu = runtimes.load("s2aformer-mini", device="cuda")
    assert gpu.info.device == "cuda" and gpu.info.precision == "fp32"
    report = compare_outputs(ref, gpu.run(x), atol=0.0, rtol=1e-4)
    assert report.passed, report.summary()


@pytest.mark.gpu
@needs_cuda
def test_torch_cuda_fp16_channels_last_is_close() -> None:
    x = seeded_inputs(2, (224, 224))
    ref = runtimes.load("s2aformer-mini").run(x)
    gpu = runtimes.load("s2aformer-mini", device="cuda", precision="fp16", channels_last=True)
    # fp16 autocast: 10-bit mantissa, so 1e-2 of the logit range is the meaningful bound
    report = compare_outputs(ref, gpu.run(x), atol=0.0, rtol=1e-2)
    assert report.passed, report.summary()
    call = gpu.benchmark_callable(x)
    call()
    assert torch.cuda.max_memory_allocated() > 0


@pytest.mark.gpu
@needs_cuda
@needs_tensorrt
def test_tensorrt_engine_matches_pytorch(tmp_path: Path) -> None:
    report = pipeline.export("s2aformer-mini", "tensorrt", tmp_path / "mini.engine",
                             format_options=format_options("tensorrt", precision="fp32"))
    runner = runtimes.load(report.path)
    x = seeded_inputs(1, (224, 224))
    # the README's fp32 bound (TF32 is off in fp32 engines); export already verified at this bound
    parity = compare_outputs(runtimes.load("s2aformer-mini").run(x), runner.run(x), atol=0.0,
                             rtol=pipeline.TENSORRT_RTOL["fp32"])
    assert parity.passed, parity.summary()
    assert np.isfinite(next(iter(runner.run(x).values()))).all()
