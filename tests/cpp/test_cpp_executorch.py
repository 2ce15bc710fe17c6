"""The C++ ExecuTorch runner (cpp/src/executorch_main.cpp): built against the executorch wheel's
headers, libraries and CMake package, run on an exported .pte, checked against Python for the same
input (image through the shared preprocessing, and a raw tensor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevit import runtimes
from edgevit.images import fit_to, read_image, synthetic_images, to_tensor, write_ppm
from edgevit.verify import seeded_inputs
from tests.cpp.support import cmake_build, missing_toolchain, run_app
from tests.mobile_support import MODEL, SIZE, exported_path


def _package_dir() -> Path | None:
    try:
        import executorch
    except ImportError:
        return None
    return Path(next(iter(executorch.__path__))) / "share" / "cmake"  # a namespace package: no __file__


def _missing_tool() -> str | None:
    if missing_toolchain():
        return missing_toolchain()
    package = _package_dir()
    if package is None or not (package / "executorch-config.cmake").exists():
        return "the executorch wheel (edgevit[executorch]) with its CMake package is not installed"
    return None


pytestmark = pytest.mark.skipif(_missing_tool() is not None, reason=f"ExecuTorch runner not buildable: {_missing_tool()}")


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the ExecuTorch target (OpenVINO off): one configure + build per test session."""
    build = cmake_build(tmp_path_factory.mktemp("cpp-et-build"), "-DEDGEVIT_OPENVINO=OFF", "-DEDGEVIT_EXECUTORCH=ON",
                        f"-Dexecutorch_DIR={_package_dir()}")
    return build / "edgevit_infer_et"


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def pte(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported_path(tmp_path_factory, "executorch")


def test_program_with_image_input_matches_python(app: Path, pte: Path, tmp_path: Path) -> None:
    image = tmp_path / "frame.ppm"
    write_ppm(image, synthetic_images(1, (90, 120), seed=5)[0])  # non-square: crop + resize like Python
    out = run_app(app, pte, image, "--threads", 1, "--runs", 3, "--logits-out", tmp_path / "l.bin")
    assert out["edgevit_model"] == MODEL and out["runtime"] == "executorch" and out["delegate"] == "XnnpackBackend"
    assert out["threads"] == "1" and out["preprocess"] == "app" and out["output"] == "logits"
    assert out["input_shape"] == "1x3x64x64" and out["output_shape"] == "1x1000"
    logits = np.fromfile(tmp_path / "l.bin", np.float32).reshape(1, 1000)
    torch_runner = runtimes.load(MODEL, input_size=SIZE)
    x = to_tensor(fit_to(read_image(image), SIZE)[None], torch_runner.metadata.mean, torch_runner.metadata.std)
    ref = torch_runner.run(x)["logits"]
    assert _rel(logits, runtimes.load(pte).run(x)["logits"]) <= 1e-6  # the same runtime in Python, same pixels
    assert _rel(logits, ref) <= 1e-4
    top5 = [int(item.split(":")[0]) for item in out["top5"].split(",")]
    assert top5 == list(np.argsort(-ref[0], kind="stable")[:5])
    assert out["runs"] == "3" and 0 < float(out["latency_ms_min"]) <= float(out["latency_ms_median"])


def test_program_with_raw_tensor_and_bad_input(app: Path, pte: Path, tmp_path: Path) -> None:
    x = seeded_inputs(1, SIZE, seed=3)
    x.tofile(tmp_path / "x.raw")
    out = run_app(app, pte, tmp_path / "x.raw", "--logits-out", tmp_path / "l.bin", "--runs", 1)
    assert out["preprocess"] == "none"
    ref = runtimes.load(MODEL, input_size=SIZE).run(x)["logits"]
    assert _rel(np.fromfile(tmp_path / "l.bin", np.float32).reshape(1, 1000), ref) <= 1e-4
    (tmp_path / "short.raw").write_bytes(b"\0" * 100)
    err = run_app(app, pte, tmp_path / "short.raw", ok=False)["error"]
    assert "has 100 bytes" in err and f"takes {x.nbytes}" in err
    assert "no such program" in run_app(app, tmp_path / "missing.pte", tmp_path / "x.raw", ok=False)["error"]
