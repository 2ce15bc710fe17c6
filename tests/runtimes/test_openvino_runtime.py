"""The OpenVINO backend in the common runtime interface: IR folders, .xml and .onnx sources, explicit
inference precision read back from the compiled model, threads/streams, metadata, CLI verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
from openvino import opset13 as ops
from typer.testing import CliRunner

from edgevit import pipeline, runtimes
from edgevit.cli import app
from edgevit.errors import ArtifactError, EdgevitError
from edgevit.verify import seeded_inputs
from tests.openvino_support import exported_ir

MODEL = "s2aformer-mini"


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "mini.onnx"
    pipeline.export(MODEL, "onnx", out, input_size=64)
    return out


@pytest.fixture(scope="module")
def ir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_ir(tmp_path_factory, MODEL)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_onnx_file_with_backend_openvino_matches_and_reads_metadata(onnx_path: Path) -> None:
    runner = runtimes.load(onnx_path, "openvino")
    assert runner.backend == "openvino" and runner.info.precision == "fp32"
    assert runner.info.details["inference_precision"] == "f32"
    assert runner.metadata is not None and runner.metadata.model == MODEL  # ONNX metadata_props
    x = seeded_inputs(1, (64, 64))
    ref = runtimes.load(onnx_path).run(x)["logits"]
    assert _rel(runner.run(x)["logits"], ref) <= 1e-5


def test_folder_and_xml_pick_the_backend_by_themselves(ir: Path) -> None:
    assert runtimes.backend_for_path(ir) == "openvino"
    for source in (ir, ir / "model.xml", str(ir)):
        runner = runtimes.load(source)
        assert runner.backend == "openvino" and runner.metadata is not None
        assert runner.metadata.extra["precision"] == "fp32"
        assert [s.name for s in runner.outputs] == ["logits"] and runner.inputs[0].shape == (1, 3, 64, 64)


@pytest.mark.parametrize("requested", ["f32", "bf16", "f16"])
def test_precision_is_explicit_and_read_back(onnx_path: Path, requested: str) -> None:
    """What the runner reports is what the compiled model uses (f16 may fall back on CPUs without it)."""
    runner = runtimes.load(onnx_path, "openvino", precision=requested)
    used = runner.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    assert runner.info.details["inference_precision"] == used
    assert runner.info.precision == {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}[used]
    x = seeded_inputs(1, (64, 64))
    err = _rel(runner.run(x)["logits"], runtimes.load(onnx_path).run(x)["logits"])
    if used == "f32":
        assert requested == "f32" and err <= 1e-5
    else:  # a real reduced-precision run: visibly less exact, still the same network
        assert 1e-4 < err < 0.1


def test_default_is_f32_even_where_the_cpu_default_is_bf16(onnx_path: Path) -> None:
    assert runtimes.load(onnx_path, "openvino").info.details["inference_precision"] == "f32"
    cpu_default = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert cpu_default in ("f32", "bf16", "f16")  # documents what edgevit overrides


def test_threads_and_streams_are_applied_and_read_back(ir: Path) -> None:
    runner = runtimes.load(ir, "openvino", threads=2, streams=2)
    assert runner.info.threads == 2 and runner.info.details["streams"] == "2"
    assert runner.run(seeded_inputs(1, (64, 64)))["logits"].shape == (1, 1000)
    # a stream needs a thread: OpenVINO caps the streams, and the report says what it really uses
    capped = runtimes.load(ir, "openvino", threads=1, streams=2)
    assert capped.info.threads == 1 and capped.info.details["streams"] == "1"


def test_outputs_are_copies_not_views_of_the_request(ir: Path) -> None:
    runner = runtimes.load(ir)
    a = runner.run(seeded_inputs(1, (64, 64), seed=1))["logits"]
    a_copy = a.copy()
    runner.run(seeded_inputs(1, (64, 64), seed=2))
    np.testing.assert_array_equal(a, a_copy)


def test_foreign_ir_without_metadata_and_manifest_fallback(tmp_path: Path) -> None:
    x = ops.parameter([1, 3], np.float32, name="x")
    model = ov.Model([ops.relu(x)], [x], "foreign")
    ov.save_model(model, str(tmp_path / "model.xml"))
    runner = runtimes.load(tmp_path)
    assert runner.metadata is None
    np.testing.assert_array_equal(runner.run(np.array([[-1, 0, 2]], np.float32))[runner.outputs[0].name],
                                  [[0, 0, 2]])
    props = {"edgevit.model": json.dumps("s2aformer-mini"), "edgevit.input_size": "[2, 2]",
             "edgevit.mean": "[0, 0, 0]", "edgevit.std": "[1, 1, 1]", "edgevit.batch": "1"}
    (tmp_path / "manifest.json").write_text(json.dumps({"metadata": props}))
    meta = runtimes.load(tmp_path).metadata
    assert meta is not None and meta.model == "s2aformer-mini" and meta.input_size == (2, 2)


def test_errors_are_one_line_user_errors(tmp_path: Path, onnx_path: Path) -> None:
    with pytest.raises(ArtifactError, match="holds no model.xml"):
        runtimes.load(tmp_path, "openvino")
    with pytest.raises(EdgevitError, match="unknown OpenVINO precision"):
        runtimes.load(onnx_path, "openvino", precision="int8")
    (tmp_path / "broken.xml").write_text("<net>")
    (tmp_path / "broken.bin").write_bytes(b"")  # present, so the XML itself is what cannot be read
    with pytest.raises(ArtifactError, match="OpenVINO cannot read"):
        runtimes.load(tmp_path / "broken.xml")


def test_cli_verify_with_runtime_openvino(onnx_path: Path, ir: Path) -> None:
    res = CliRunner().invoke(app, ["verify", MODEL, str(onnx_path), "--runtime", "openvino", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["runtime"] == "openvino (fp32)" and data["max_rel"] <= 1e-4
    res = CliRunner().invoke(app, ["verify", MODEL, str(ir / "model.xml"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["runtime"] == "openvino (fp32)"


def test_benchmark_cache_builds_an_ir_once(monkeypatch: pytest.MonkeyPatch) -> None:
    path = pipeline.cached_artifact(MODEL, "openvino", (64, 64), 1)
    assert path.parent == pipeline.cache_dir() and path.name == f"{MODEL}-64x64-b1-openvino-fp32"

    def no_second_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached IR should have been reused")

    monkeypatch.setattr(pipeline, "export", no_second_export)
    assert pipeline.cached_artifact(MODEL, "openvino", (64, 64), 1) == path
    runner = runtimes.load(path, "openvino", threads=1, precision="bf16")
    assert runner.info.precision in ("bf16", "fp32") and runner.info.threads == 1


def test_kernel_summary_counts_compute_layers_by_dtype_and_isa() -> None:
    from edgevit.runtimes.openvino_backend import kernel_summary

    layers = [("FullyConnected", "brgemm_avx512_amx_I8", "u8"), ("Convolution", "brgconv_avx512_amx_1x1_i8", "i8"),
              ("Convolution", "jit_avx512_I8", "u8"), ("Convolution", "brgconv_avx512_dw_f32", "f32"),
              ("MatMul", "gemm_mlas_f32", "f32"), ("Softmax", "jit_avx512_FP32", "f32"), ("Eltwise", "ref", "f32")]
    # element-wise layers are not counted; an ISA-less primitive keeps its own name
    assert kernel_summary(layers) == "int8 amx 2, int8 avx512 1, fp32 avx512 1, fp32 gemm_mlas_f32 1"
    assert kernel_summary([]) == ""


def test_runner_reports_the_kernels_of_its_compiled_model(onnx_path: Path) -> None:
    runner = runtimes.load(onnx_path, "openvino", threads=1, precision="fp32")
    # an f32 model on any CPU: every conv/matmul layer runs fp32, and the summary says so
    kernels = runner.info.details["kernels"]
    assert kernels and all(part.startswith("fp32 ") for part in kernels.split(", ")), kernels
