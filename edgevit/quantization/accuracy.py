"""How close an INT8 artifact is to its fp32 model, measured without ImageNet.

A fixed, seeded set of structured synthetic images (:func:`evaluation_images`: smooth colour fields with
shapes, edges and gratings on top, so activations look like a natural image's rather than noise) goes
through the deployment preprocessing (:func:`edgevit.images.to_tensor`) into both models. Reported:

* **top-1 agreement**: share of images whose int8 top-1 class equals the fp32 top-1 class;
* **top-5 agreement**: share of images whose fp32 top-1 class is among the int8 model's five best;
* **relative logit error**: max |int8 - fp32| / max |fp32| over the set (the parity metric of
  :mod:`edgevit.verify`), and the mean over images of ||int8 - fp32||_2 / ||fp32||_2;
* how many distinct classes the fp32 model predicts on the set: agreement over a set the model maps to
  one class says nothing, and the report shows it.

An artifact passes when top-1 agreement >= :data:`TOP1_THRESHOLD` (the README's INT8 section says why
that number). The set is disjoint from the calibration set (another seed and generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import EdgevitError
from ..images import synthetic_images, to_tensor
from ..runtimes.base import Runner

EVAL_COUNT = 500
EVAL_SEED = 20260  # not calibration.CALIB_SEED: the ranges must not be fitted on the images that judge them
TOP1_THRESHOLD = 0.90


@dataclass(frozen=True)
class AgreementReport:
    images: int
    top1: float
    top5: float
    max_rel: float  # max |int8 - fp32| / max |fp32| over the whole set
    mean_rel_l2: float  # mean over images of ||int8 - fp32|| / ||fp32||
    distinct_classes: int  # distinct fp32 top-1 classes on the set
    threshold: float
    candidate: str = ""  # what ran the artifact, e.g. "onnxruntime (int8)"

    @property
    def passed(self) -> bool:
        return self.top1 >= self.threshold

    def summary(self) -> str:
        return (f"top-1 agreement {self.top1:.1%} (threshold {self.threshold:.0%}), top-5 {self.top5:.1%}, "
                f"logit error max {self.max_rel:.3g} / mean L2 {self.mean_rel_l2:.3g} relative, on "
                f"{self.images} images ({self.distinct_classes} distinct fp32 classes)")

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "passed": self.passed}


def evaluation_images(count: int, size: tuple[int, int], seed: int = EVAL_SEED) -> np.ndarray:
    """(count, H, W, 3) uint8: :func:`edgevit.images.synthetic_images` backgrounds with 2-6 random filled
    rectangles/ellipses and a sinusoidal grating blended in, i.e. edges, flat regions and texture."""
    rng = np.random.default_rng(seed)
    out = synthetic_images(count, size, seed).astype(np.float64)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    for img in out:
        for _ in range(int(rng.integers(2, 7))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.4) * h, rng.uniform(0.05, 0.4) * w
            if rng.random() < 0.5:
                mask = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
            else:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            img[mask] = rng.uniform(0, 255, 3)
        angle, period = rng.uniform(0, np.pi), rng.uniform(4.0, max(5.0, w / 2))
        grating = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        img += rng.uniform(0, 48) * grating[..., None] * rng.uniform(-1, 1, 3)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def compare_logits(reference: np.ndarray, candidate: np.ndarray,
                   threshold: float = TOP1_THRESHOLD) -> AgreementReport:
    """Agreement of (N, classes) ``candidate`` logits with ``reference`` logits."""
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ValueError(f"expected two (N, classes) logit arrays of one shape, got {ref.shape} and {cand.shape}")
    ref_top1 = ref.argmax(1)
    top5 = np.argsort(-cand, axis=1, kind="stable")[:, :5]
    diff = np.abs(cand - ref)
    norms = np.linalg.norm(ref, axis=1)
    return AgreementReport(
        images=len(ref), top1=float((cand.argmax(1) == ref_top1).mean()),
        top5=float((top5 == ref_top1[:, None]).any(1).mean()),
        max_rel=float(diff.max() / np.abs(ref).max()),
        mean_rel_l2=float(np.mean(np.linalg.norm(cand - ref, axis=1) / np.where(norms > 0, norms, 1.0))),
        distinct_classes=len(np.unique(ref_top1)), threshold=threshold)


def measure_agreement(reference: Runner, candidate: Runner, size: tuple[int, int], mean: Sequence[float],
                      std: Sequence[float], *, count: int = EVAL_COUNT, seed: int = EVAL_SEED,
                      threshold: float = TOP1_THRESHOLD) -> AgreementReport:
    """Run the evaluation set through both runners (in the candidate's static batch, if it has one) and
    compare their logits. A candidate with embedded preprocessing (uint8 input) gets the raw images."""
    if count < 1:
        raise EdgevitError(f"the evaluation set needs at least one image, got {count}")
    images = evaluation_images(count, size, seed)
    x = to_tensor(images, mean, std)
    spec = candidate.inputs[0]
    feed = images if spec.dtype == "uint8" else x
    step = spec.shape[0] if isinstance(spec.shape[0], int) else 16
    refs, cands = [], []
    for i in range(0, count, step):
        rows = slice(i, min(i + step, count))
        pad = step - (rows.stop - rows.start) if isinstance(spec.shape[0], int) else 0
        cand_in = feed[rows] if not pad else np.concatenate([feed[rows], feed[:pad]])
        refs.append(_logits(reference.run(x[rows])))
        cands.append(_logits(candidate.run(cand_in))[:rows.stop - rows.start])
    report = compare_logits(np.concatenate(refs), np.concatenate(cands), threshold)
    return replace(report, candidate=f"{candidate.info.backend} ({candidate.info.precision})")


def _logits(outputs: dict[str, np.ndarray]) -> np.ndarray:
    if len(outputs) != 1:
        raise ValueError(f"agreement is measured on a classifier's logits; got outputs {list(outputs)}")
    return next(iter(outputs.values()))
