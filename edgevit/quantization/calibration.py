"""The one calibration source of every INT8 export (ONNX QDQ, OpenVINO/NNCF, ExecuTorch/XNNPACK).

A calibration set is a folder of the user's images (``--calib-images DIR``) or, without one, a documented
deterministic synthetic set. Either way the images go through the deployment preprocessing contract of
:mod:`edgevit.images` (centre crop to the aspect ratio, bilinear resize, ``(x/255 - mean)/std``), the same
steps an application and the C++ example apply at inference: INT8 ranges are measured on exactly the
distribution the artifact will see.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import ArtifactMetadata
from ..errors import EdgevitError
from ..images import fit_to, image_files, read_image, synthetic_images, to_tensor

# Calibration images (the synthetic set's size, and how many of a folder's images are read). 64 synthetic
# images under-cover activation extremes: emsnet-xxtiny in OpenVINO agreed on 94.8 % of decisive images with
# 64 and 98.7 % with 256 (224x224, 500 evaluation images; README "INT8"). NNCF's own default subset is 300.
DEFAULT_CALIB_COUNT = 256
CALIB_SEED = 0  # the accuracy set (edgevit.quantization.accuracy) uses other seeds, so the two never overlap


@dataclass(frozen=True)
class CalibrationSource:
    """Where the INT8 ranges come from: the first ``count`` images of a folder (``images``, sorted by name)
    or, without one, ``count`` synthetic images of ``seed``."""

    images: Path | None = None
    count: int = DEFAULT_CALIB_COUNT
    seed: int = CALIB_SEED

    def check(self) -> None:
        """Validate before any export work starts (a bad folder must not cost a model export)."""
        if self.count < 1:
            raise EdgevitError(f"the calibration set needs at least one image, got {self.count}")
        if self.images is not None:
            image_files(self.images)  # raises a one-line EdgevitError for a missing or empty folder

    def describe(self) -> str:
        """One line for the manifest/metadata: a reader can tell a representative set from the synthetic one."""
        if self.images is not None:
            return f"{len(self.files())} images from {Path(self.images).resolve()}"
        return (f"synthetic: {self.count} deterministic smooth-noise images (edgevit.images.synthetic_images, "
                f"seed {self.seed}); pass --calib-images DIR for a representative set")

    def files(self) -> list[Path]:
        return image_files(self.images)[:self.count] if self.images is not None else []

    def images_u8(self, size: tuple[int, int]) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB at the artifact's input size (crop + resize of the user's images)."""
        if self.images is not None:
            return np.stack([fit_to(read_image(f), size) for f in self.files()])
        return synthetic_images(self.count, size, self.seed)

    def batches(self, size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                batch: int | None) -> list[np.ndarray]:
        """Normalised NCHW float32 batches of the artifact's static batch size (1 for a dynamic batch);
        fewer images than one batch are repeated to fill it."""
        return batches_of(to_tensor(self.images_u8(size), mean, std), batch or 1)


def calibration_option(calib_images: Path | None, precision: str, count: int | None = None) -> CalibrationSource:
    """The calibration source an export's ``--calib-images``/``--calib-count``/``--precision`` name (``count``
    None: :data:`DEFAULT_CALIB_COUNT`), validated before any export work: a calibration option with a
    non-int8 precision would change nothing, so it is refused rather than ignored, and a missing or empty
    folder fails now, not after minutes of exporting."""
    for flag, value in (("--calib-images", calib_images), ("--calib-count", count)):
        if value is not None and precision != "int8":
            raise EdgevitError(f"{flag} only applies to --precision int8")
    if count is not None and count < 1:
        raise EdgevitError(f"--calib-count must be at least 1, got {count}")
    source = CalibrationSource(Path(calib_images) if calib_images is not None else None,
                               DEFAULT_CALIB_COUNT if count is None else count)
    source.check()
    return source


def int8_metadata(meta: ArtifactMetadata, calibration: CalibrationSource, kept: Mapping[str, str]) -> ArtifactMetadata:
    """``meta`` of an int8 artifact: its precision, where its ranges came from and how many ops each
    keep-in-float rule left in float (the same keys for every format, so ``verify``/``info`` read them alike)."""
    extra = {**meta.extra, "precision": "int8", "calibration": calibration.describe(),
             "kept_in_float": json.dumps(dict(Counter(kept.values())))}
    return dataclasses.replace(meta, extra=extra)


def batches_of(x: np.ndarray, batch: int) -> list[np.ndarray]:
    """Split ``x`` into whole batches of ``batch`` (repeating ``x`` when it holds less than one)."""
    if len(x) < batch:
        x = np.concatenate([x] * -(-batch // len(x)))
    usable = (len(x) // batch) * batch
    return [x[i:i + batch] for i in range(0, usable, batch)]
