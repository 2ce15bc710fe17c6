"""How close an INT8 artifact is to its fp32 model, measured without ImageNet.

A fixed, seeded set of structured synthetic images (:func:`evaluation_images`: smooth colour fields with
shapes, edges and gratings on top, so activations look like a natural image's rather than noise) goes
through the deployment preprocessing (:func:`edgevit.images.to_tensor`) into both models. Reported:

* **top-1 agreement**: share of images whose int8 top-1 class equals the fp32 top-1 class;
* **top-5 agreement**: share of images whose fp32 top-1 class is among the int8 model's five best;
* **relative logit error**: max |int8 - fp32| / max |fp32| over the set (the parity metric of
  :mod:`edgevit.verify`), and the mean over images of ||int8 - fp32||_2 / ||fp32||_2;
* how many distinct classes the fp32 model predicts on the set: agreement over a set the model maps to
  one class says nothing, and the report shows it;
* **decisive top-1 agreement**: top-1 agreement over the images whose fp32 top-1 margin (best minus
  second-best logit) is at least :data:`MARGIN_FLOOR` standard deviations of that image's logits.

The gate is the decisive agreement (>= :data:`TOP1_THRESHOLD`). Why not plain top-1 agreement: with the
reference weights the classifier head is random, so an image's 1000 logits are close to 1000 Gaussian
draws and its top-1 is their extreme value, typically only ~0.2 standard deviations above the runner-up
(measured, README "INT8"). Any perturbation flips such near-ties, an fp32 re-run on another kernel
included; plain agreement then measures the head's ties, not the quantisation. An image whose fp32 margin
exceeds the floor is one where a faithful int8 model (logit noise well under the floor) keeps the class
and a broken one does not. With trained weights the margins are large, almost every image is decisive
and the gate becomes plain top-1 agreement. The set is disjoint from the calibration set (another seed
and generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..errors import EdgevitError
from ..images import synthetic_images, to_tensor
from ..runtimes.base import Runner, run_in_calls

EVAL_COUNT = 500
EVAL_SEED = 20260  # not calibration.CALIB_SEED: the ranges must not be fitted on the images that judge them
TOP1_THRESHOLD = 0.95  # on the decisive images; README "INT8" gives the measurements behind it
MARGIN_FLOOR = 0.25  # fp32 top-1 margin, in standard deviations of the image's logits, of a decisive image


@dataclass(frozen=True)
class AgreementReport:
    images: int
    top1: float
    top5: float
    max_rel: float  # max |int8 - fp32| / max |fp32| over the whole set
    mean_rel_l2: float  # mean over images of ||int8 - fp32|| / ||fp32||
    distinct_classes: int  # distinct fp32 top-1 classes on the set
    decisive: int  # images whose fp32 top-1 margin is at least MARGIN_FLOOR logit standard deviations
    top1_decisive: float  # top-1 agreement on those images (on all images when none is decisive)
    threshold: float
    candidate: str = ""  # what ran the artifact, e.g. "onnxruntime (int8)"

    @property
    def passed(self) -> bool:
        return self.top1_decisive >= self.threshold

    def summary(self) -> str:
        return (f"top-1 agreement {self.top1_decisive:.1%} on the {self.decisive} images with a clear fp32 "
                f"class (threshold {self.threshold:.0%}), {self.top1:.1%} on all {self.images}, top-5 "
                f"{self.top5:.1%}, logit error max {self.max_rel:.3g} / mean L2 {self.mean_rel_l2:.3g} "
                f"relative ({self.distinct_classes} distinct fp32 classes)")

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
    agree = cand.argmax(1) == ref_top1
    top5 = np.argsort(-cand, axis=1, kind="stable")[:, :5]
    diff = np.abs(cand - ref)
    norms = np.linalg.norm(ref, axis=1)
    decisive = top1_margins(ref) >= MARGIN_FLOOR
    return AgreementReport(
        images=len(ref), top1=float(agree.mean()),
        top5=float((top5 == ref_top1[:, None]).any(1).mean()),
        max_rel=float(diff.max() / np.abs(ref).max()),
        mean_rel_l2=float(np.mean(np.linalg.norm(cand - ref, axis=1) / np.where(norms > 0, norms, 1.0))),
        distinct_classes=len(np.unique(ref_top1)), decisive=int(decisive.sum()),
        top1_decisive=float(agree[decisive].mean() if decisive.any() else agree.mean()), threshold=threshold)


def top1_margins(logits: np.ndarray) -> np.ndarray:
    """Per image: (best - second-best logit) / standard deviation of its logits over the classes (a
    single-class or constant row has margin 0: nothing distinguishes its top-1)."""
    x = np.asarray(logits, np.float64)
    if x.shape[1] < 2:
        return np.zeros(len(x))
    top2 = np.partition(x, -2, axis=1)[:, -2:]
    std = x.std(axis=1)
    return np.where(std > 0, (top2[:, 1] - top2[:, 0]) / np.where(std > 0, std, 1.0), 0.0)


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
    refs, cands = _logits(run_in_calls(reference, x, step)), _logits(run_in_calls(candidate, feed, step))
    report = compare_logits(refs, cands, threshold)
    return replace(report, candidate=f"{candidate.info.backend} ({candidate.info.precision})")


def _logits(outputs: dict[str, np.ndarray]) -> np.ndarray:
    if len(outputs) != 1:
        raise ValueError(f"agreement is measured on a classifier's logits; got outputs {list(outputs)}")
    return next(iter(outputs.values()))
