from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgevit
from edgevit import pipeline, runtimes
from edgevit.errors import ArtifactError, EdgevitError, InputShapeError
from edgevit.verify import seeded_inputs


@pytest.fixture(scope="module")
def mini_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "mini.onnx"
    pipeline.export("s2aformer-mini", output=out, input_size=64, batch=2, verify=False)
    return out


def test_load_picks_backend_from_source(mini_onnx: Path) -> None:
    assert runtimes.load(mini_onnx).backend == "onnxruntime"
    assert runtimes.load(edgevit.create_model("s2aformer-mini")).backend == "torch"
    assert runtimes.load("s2aformer-mini").backend == "torch"


def test_runners_share_one_interface(mini_onnx: Path) -> None:
    x = seeded_inputs(2, (64, 64))
    ort_runner = runtimes.load(mini_onnx, threads=1)
    torch_runner = runtimes.load("s2aformer-mini", input_size=(64, 64))
    for runner in (ort_runner, torch_runner):
        assert [s.name for s in runner.inputs] == ["input"]
        assert [s.name for s in runner.outputs] == ["logits"]
        assert runner.info.precision == "fp32"
        out = runner.run(x)
        assert list(out) == ["logits"] and out["logits"].shape == (2, 1000)
        assert out["logits"].dtype == np.float32
    assert ort_runner.inputs[0].shape == (2, 3, 64, 64)
    assert ort_runner.metadata is not None and ort_runner.metadata.model == "s2aformer-mini"
    assert ort_runner.info.details["provider"] == "CPUExecutionProvider"
    np.testing.assert_allclose(ort_runner(x)["logits"], torch_runner(x)["logits"], atol=1e-4)


def test_onnxruntime_memory_pattern_is_off_unless_asked_and_changes_no_output(mini_onnx: Path) -> None:
    x = seeded_inputs(2, (64, 64))
    plain = runtimes.load(mini_onnx, threads=1)
    pattern = runtimes.load(mini_onnx, threads=1, memory_pattern=True)
    assert not plain.session.get_session_options().enable_mem_pattern
    assert pattern.session.get_session_options().enable_mem_pattern
    assert pattern.info.details["memory_pattern"] == "on" and "memory_pattern" not in plain.info.details
    np.testing.assert_array_equal(pattern(x)["logits"], plain(x)["logits"])  # an allocation plan, not numerics


def test_wrong_shape_is_a_one_line_error(mini_onnx: Path) -> None:
    runner = runtimes.load(mini_onnx)
    with pytest.raises(InputShapeError, match=r"has shape \(1, 3, 64, 64\).*expects \(2, 3, 64, 64\)"):
        runner.run(seeded_inputs(1, (64, 64)))
    with pytest.raises(InputShapeError, match="missing input 'input'"):
        runner.run({"image": seeded_inputs(2, (64, 64))})


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        runtimes.load(tmp_path / "nope.onnx")
    weird = tmp_path / "model.tflite"
    weird.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="cannot tell the runtime"):
        runtimes.load(weird)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx")
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot load"):
        runtimes.load(garbage)
    with pytest.raises(EdgevitError, match="unknown runtime 'tvm'"):
        runtimes.load(garbage, backend="tvm")
