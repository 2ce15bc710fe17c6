"""Agreement with the fp32 model: the metric definitions on hand-made logits, and the evaluation set."""

from __future__ import annotations

import numpy as np
import pytest

from edgevit.errors import EdgevitError
from edgevit.images import synthetic_images
from edgevit.quantization.accuracy import compare_logits, evaluation_images, measure_agreement
from edgevit.quantization.calibration import CalibrationSource
from edgevit.runtimes.base import Runner, RunnerInfo, TensorSpec


def test_agreement_metrics_on_hand_made_logits() -> None:
    ref = np.zeros((4, 8))
    ref[np.arange(4), [0, 1, 2, 2]] = 10.0  # fp32 top-1: 0, 1, 2, 2 (three distinct classes)
    cand = ref.copy()
    cand[1, 7] = 11.0  # image 1: another top-1, the fp32 class is second: in the top 5
    cand[2, 2] = -1.0  # image 2: the fp32 class drops to last place: not in the top 5
    cand[2, 3:8] = 1.0
    report = compare_logits(ref, cand, threshold=0.5)
    assert report.top1 == 0.5 and report.top5 == 0.75 and report.distinct_classes == 3
    assert report.max_rel == pytest.approx(11.0 / 10.0)
    l2 = [0.0, 11.0 / 10.0, np.sqrt(11.0**2 + 5) / 10.0, 0.0]
    assert report.mean_rel_l2 == pytest.approx(np.mean(l2))
    assert report.passed and not compare_logits(ref, cand, threshold=0.75).passed


def test_evaluation_set_is_fixed_structured_and_not_the_calibration_set() -> None:
    a, b = evaluation_images(8, (48, 64)), evaluation_images(8, (48, 64))
    assert a.shape == (8, 48, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    calib = CalibrationSource(count=8).images_u8((48, 64))
    assert not any(np.array_equal(x, c) for x in a for c in calib)
    # not even the backgrounds: a set drawn from the calibration seed would correlate with it pixel by pixel
    assert abs(np.corrcoef(a.astype(np.float64).ravel(), calib.astype(np.float64).ravel())[0, 1]) < 0.3
    # structured: neighbouring pixels are strongly correlated (white noise would give ~0) ...
    x = a.astype(np.float64)
    corr = np.corrcoef(x[:, :, 1:].ravel(), x[:, :, :-1].ravel())[0, 1]
    assert corr > 0.8
    # ... and there are edges the smooth background alone does not have (the shapes)
    edges = lambda imgs: np.abs(np.diff(imgs.astype(np.float64), axis=2)).max(axis=(1, 2, 3))
    assert (edges(a) > 2 * edges(synthetic_images(8, (48, 64), 20260))).mean() >= 0.75


class _Table(Runner):
    """A runner returning fixed logits per image (by the image's mean), with a static batch of 3."""

    def __init__(self, flip: bool, dtype: str = "float32") -> None:
        self.inputs = [TensorSpec("input", (3, 3, 8, 8) if dtype == "float32" else (3, 8, 8, 3), dtype)]
        self.outputs = [TensorSpec("logits", (3, 10))]
        self.metadata = None
        self.info = RunnerInfo("table", "int8")
        self.flip = flip
        self.seen: list[tuple[int, str]] = []

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["input"].astype(np.float64)
        self.seen.append((len(x), str(feeds["input"].dtype)))
        logits = np.stack([np.sin(np.arange(10) * (1 + v.mean())) for v in x])
        return {"logits": -logits if self.flip else logits}


def test_measure_agreement_pads_static_batches_and_feeds_uint8_to_embedded_preprocessing() -> None:
    ref = _Table(flip=False)
    ref.inputs = [TensorSpec("input", ("batch", 3, 8, 8))]
    same = measure_agreement(ref, _Table(flip=False), (8, 8), (0.5,) * 3, (0.25,) * 3, count=7)
    assert same.top1 == 1.0 and same.images == 7 and same.candidate == "table (int8)"
    flipped = _Table(flip=True)
    assert measure_agreement(ref, flipped, (8, 8), (0.5,) * 3, (0.25,) * 3, count=7).top1 < 0.5
    assert flipped.seen == [(3, "float32")] * 3  # 7 images in whole static batches
    u8 = _Table(flip=False, dtype="uint8")
    measure_agreement(ref, u8, (8, 8), (0.5,) * 3, (0.25,) * 3, count=7)
    assert u8.seen == [(3, "uint8")] * 3  # an artifact with embedded preprocessing gets the raw pixels
    with pytest.raises(EdgevitError, match="at least one image"):
        measure_agreement(ref, same_runner := _Table(flip=False), (8, 8), (0.5,) * 3, (0.25,) * 3, count=0)
    assert same_runner.seen == []
