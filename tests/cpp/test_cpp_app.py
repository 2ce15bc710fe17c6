"""The C++ example (cpp/): built with the system compiler against the OpenVINO wheel's CMake package,
run on exported artifacts, and checked against Python for the same input: top-5 and logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino
import pytest

from edgevit import pipeline, runtimes
from edgevit.images import fit_to, read_image, synthetic_images, to_tensor, write_ppm
from edgevit.verify import seeded_inputs
from tests.cpp.support import cmake_build, missing_toolchain, run_app
from tests.openvino_support import exported_ir

MODEL = "s2aformer-mini"
SIZE = (64, 64)
OPENVINO_CMAKE = Path(openvino.__file__).parent / "cmake"


def _missing_tool() -> str | None:
    if missing_toolchain():
        return missing_toolchain()
    if not (OPENVINO_CMAKE / "OpenVINOConfig.cmake").exists():
        return f"the openvino wheel has no CMake package at {OPENVINO_CMAKE}"
    return None


pytestmark = pytest.mark.skipif(_missing_tool() is not None, reason=f"C++ app not buildable: {_missing_tool()}")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cmake_build(tmp_path_factory.mktemp("cpp-build"), f"-DOpenVINO_DIR={OPENVINO_CMAKE}") / "edgevit_infer"


def top5(line: str) -> list[int]:
    return [int(item.split(":")[0]) for item in line.split(",")]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-square PPM: the app must centre-crop and resize it exactly like edgevit.images."""
    path = tmp_path_factory.mktemp("img") / "frame.ppm"
    write_ppm(path, synthetic_images(1, (90, 120), seed=5)[0])
    return path


def python_logits(image: Path) -> tuple[np.ndarray, np.ndarray]:
    """(PyTorch, OpenVINO-in-Python) logits for the same image through the same preprocessing."""
    meta_src = runtimes.load(MODEL)
    x = to_tensor(fit_to(read_image(image), SIZE)[None], meta_src.metadata.mean, meta_src.metadata.std)
    return meta_src.run(x)["logits"], x


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_ir_with_app_side_preprocessing(app: Path, image: Path, tmp_path: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    ir = exported_ir(tmp_path_factory, MODEL)
    out = run_app(app, ir, image, "--logits-out", tmp_path / "l.bin", "--runs", 3)
    assert out["edgevit_model"] == MODEL and out["inference_precision"] == "f32"
    assert out["preprocess"] == "app" and out["input_shape"] == "1x3x64x64" and out["output_shape"] == "1x1000"
    logits = np.fromfile(tmp_path / "l.bin", np.float32).reshape(1, 1000)
    ref, x = python_logits(image)
    # same pixels in C++ and Python: identical to the Python OpenVINO runner, close to PyTorch
    assert _rel(logits, runtimes.load(ir).run(x)["logits"]) <= 1e-6
    assert _rel(logits, ref) <= 1e-4
    assert top5(out["top5"]) == list(np.argsort(-ref[0], kind="stable")[:5])
    assert out["runs"] == "3" and 0 < float(out["latency_ms_min"]) <= float(out["latency_ms_median"])


def test_ir_with_embedded_preprocessing(app: Path, image: Path, tmp_path: Path,
                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    ir = exported_ir(tmp_path_factory, MODEL, embed_preprocess=True)
    out = run_app(app, ir / "model.xml", image, "--logits-out", tmp_path / "l.bin")
    assert out["preprocess"] == "embedded" and out["input_type"] == "u8" and out["input_shape"] == "1x64x64x3"
    logits = np.fromfile(tmp_path / "l.bin", np.float32).reshape(1, 1000)
    ref, _ = python_logits(image)
    assert _rel(logits, ref) <= 1e-4
    assert top5(out["top5"]) == list(np.argsort(-ref[0], kind="stable")[:5])


def test_onnx_file_with_raw_tensor_input(app: Path, tmp_path: Path) -> None:
    onnx_path = pipeline.export(MODEL, "onnx", tmp_path / "m.onnx", input_size=SIZE, verify=False).path
    x = seeded_inputs(1, SIZE, seed=3)
    x.tofile(tmp_path / "x.raw")
    out = run_app(app, onnx_path, tmp_path / "x.raw", "--logits-out", tmp_path / "l.bin")
    assert out["preprocess"] == "none" and out["edgevit_model"] == MODEL  # ONNX metadata via rt_info
    ref = runtimes.load(MODEL).run(x)["logits"]
    assert _rel(np.fromfile(tmp_path / "l.bin", np.float32).reshape(1, 1000), ref) <= 1e-4
    bf16 = run_app(app, onnx_path, tmp_path / "x.raw", "--precision", "bf16", "--runs", 1)
    assert bf16["inference_precision"] in ("bf16", "f32")  # read back: f32 where the CPU lacks bf16
    (tmp_path / "short.raw").write_bytes(b"\0" * 100)
    err = run_app(app, onnx_path, tmp_path / "short.raw", ok=False)["error"]
    assert "has 100 bytes" in err and f"takes {x.nbytes}" in err
