"""Subnormal floats are flushed in ONNX Runtime runs (pool threads and the calling thread), and only there.

The graph halves its input: a subnormal input gives 0 where the calling thread flushes (DAZ) and a subnormal
output where it does not, so the test sees the FPU bits the kernels really ran under."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgevit import runtimes
from edgevit.runtimes.denormals import caller_denormals, caller_flushes_denormals

SUBNORMAL = np.float32(1e-39)

pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False), reason="this CPU has no flush-to-zero bits")


@pytest.fixture(autouse=True)
def plain_caller() -> None:
    """Each test starts from a thread that keeps subnormals (whatever ran before in this worker)."""
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def halving_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = [1, 1 << 20]  # large enough that two intra-op threads split the Mul
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "half"], ["y"])], "halve",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [half])
    path = tmp_path_factory.mktemp("denormals") / "halve.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_the_probe_reads_the_calling_threads_bits() -> None:
    assert not caller_flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        assert caller_flushes_denormals()
    finally:
        torch.set_flush_denormal(False)


def test_the_block_sets_the_bits_asked_for_and_puts_back_what_was_there() -> None:
    with caller_denormals(flush=True) as flushing:
        assert flushing and caller_flushes_denormals()
    assert not caller_flushes_denormals()
    with caller_denormals(flush=None) as flushing:  # a call inside that sets them is undone after the block
        assert not flushing
        torch.set_flush_denormal(True)
    assert not caller_flushes_denormals()
    torch.set_flush_denormal(True)
    try:
        with caller_denormals(flush=False) as flushing:
            assert not flushing and not caller_flushes_denormals()
        assert caller_flushes_denormals()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("threads", [1, 2])
def test_onnxruntime_flushes_subnormals_unless_asked_to_keep_them(halving_onnx: Path, threads: int) -> None:
    x = np.full((1, 1 << 20), SUBNORMAL, dtype=np.float32)
    flushed = runtimes.load(halving_onnx, threads=threads)
    assert not caller_flushes_denormals()  # ONNX Runtime's constructor set them on this thread; undone
    assert flushed.info.details["denormals"] == "flushed to zero"
    assert not np.any(flushed(x)["y"])
    assert not caller_flushes_denormals()  # the caller's bits are back as they were

    kept = runtimes.load(halving_onnx, threads=threads, keep_denormals=True)
    assert kept.info.details["denormals"] == "kept"
    np.testing.assert_array_equal(kept(x)["y"], x * np.float32(0.5))
    assert np.all(kept(x)["y"] > 0)


def test_keeping_denormals_leaves_a_callers_own_flush_setting_alone(halving_onnx: Path) -> None:
    kept = runtimes.load(halving_onnx, threads=1, keep_denormals=True)
    seen: list[bool] = []
    run = kept.session.run
    kept.session.run = lambda *a, **k: (seen.append(caller_flushes_denormals()), run(*a, **k))[1]
    torch.set_flush_denormal(True)  # the caller chose to flush: ONNX Runtime as it comes runs under that choice
    try:
        kept(np.zeros((1, 1 << 20), dtype=np.float32))
        assert seen == [True] and caller_flushes_denormals()
    finally:
        torch.set_flush_denormal(False)
