"""The one calibration source: the inference preprocessing contract, determinism, batching, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgevit.errors import EdgevitError
from edgevit.formats import format_options
from edgevit.images import fit_to, read_image, synthetic_images, to_tensor, write_ppm
from edgevit.quantization.calibration import DEFAULT_CALIB_COUNT, CalibrationSource, batches_of

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_folder_images_go_through_the_inference_preprocessing(tmp_path: Path) -> None:
    for i, img in enumerate(synthetic_images(3, (50, 70), seed=5)):  # wider than tall: cropped, then resized
        write_ppm(tmp_path / f"{i}.ppm", img)
    (tmp_path / "notes.txt").write_text("not an image")
    source = CalibrationSource(images=tmp_path)
    source.check()
    batches = source.batches((32, 32), MEAN, STD, batch=1)
    expected = to_tensor(np.stack([fit_to(read_image(tmp_path / f"{i}.ppm"), (32, 32)) for i in range(3)]),
                         MEAN, STD)
    assert len(batches) == 3 and all(b.shape == (1, 3, 32, 32) and b.dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), expected)
    assert source.describe() == f"3 images from {tmp_path.resolve()}"


def test_synthetic_set_is_deterministic_and_documented() -> None:
    a = CalibrationSource(count=5).batches((32, 48), MEAN, STD, batch=None)
    b = CalibrationSource(count=5).batches((32, 48), MEAN, STD, batch=None)
    assert len(a) == 5 and a[0].shape == (1, 3, 32, 48)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
    np.testing.assert_array_equal(np.concatenate(a), to_tensor(synthetic_images(5, (32, 48), 0), MEAN, STD))
    assert CalibrationSource(count=5).describe().startswith("synthetic: 5 deterministic")


def test_static_batches_are_whole_and_a_short_set_is_repeated() -> None:
    x = np.arange(5, dtype=np.float32)[:, None]
    assert [b[:, 0].tolist() for b in batches_of(x, 2)] == [[0, 1], [2, 3]]
    assert [b[:, 0].tolist() for b in batches_of(x[:1], 3)] == [[0, 0, 0]]


@pytest.mark.parametrize("source, message", [
    (CalibrationSource(count=0), "at least one image"),
    (CalibrationSource(images=Path("/nonexistent/calib")), "is not a directory"),
])
def test_bad_sources_are_refused_before_any_work(source: CalibrationSource, message: str) -> None:
    with pytest.raises(EdgevitError, match=message):
        source.check()


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgevitError, match="no images"):
        CalibrationSource(images=tmp_path).check()


def test_count_caps_a_folder_in_name_order(tmp_path: Path) -> None:
    for i, img in enumerate(synthetic_images(3, (20, 20), seed=5)):
        write_ppm(tmp_path / f"{i}.ppm", img)
    source = CalibrationSource(images=tmp_path, count=2)
    assert [f.name for f in source.files()] == ["0.ppm", "1.ppm"] and len(source.batches((8, 8), MEAN, STD, 1)) == 2


@pytest.mark.parametrize("to", ["onnx", "openvino", "executorch"])
def test_every_int8_format_takes_the_calibration_count(to: str) -> None:
    """One calibration source for every int8 format: --calib-count reaches each, and each has the same default."""
    assert format_options(to, precision="int8", calib_count=7).calibration().count == 7
    assert format_options(to, precision="int8").calibration().describe().startswith(
        f"synthetic: {DEFAULT_CALIB_COUNT} deterministic")
    with pytest.raises(EdgevitError, match="--calib-count only applies to --precision int8"):
        format_options(to, calib_count=7)
    with pytest.raises(EdgevitError, match="--calib-count must be at least 1, got 0"):
        format_options(to, precision="int8", calib_count=0)
