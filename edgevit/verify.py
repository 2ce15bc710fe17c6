"""Parity between an artifact and the PyTorch model it came from.

The metric is the one every issue states: max abs error / max |reference| per output (a scale-free
relative error, robust to near-zero elements that break element-wise rtol), plus mean error and, for
logits, top-1 agreement. An output passes when ``max_abs <= atol + rtol * max|reference|``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ArtifactError, VerificationError
from .runtimes.base import Runner


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    max_ref: float
    mean_abs: float

    @property
    def rel(self) -> float:
        return self.max_abs / self.max_ref if self.max_ref > 0 else (0.0 if self.max_abs == 0 else float("inf"))

    def passes(self, atol: float, rtol: float) -> bool:
        return bool(self.max_abs <= atol + rtol * self.max_ref)


@dataclass(frozen=True)
class ParityReport:
    outputs: list[OutputParity]
    atol: float
    rtol: float
    top1_agreement: float | None = None
    batch: int = 0
    candidate: str = ""
    details: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passes(self.atol, self.rtol) for o in self.outputs)

    @property
    def worst_rel(self) -> float:
        return max(o.rel for o in self.outputs)

    def summary(self) -> str:
        worst = max(self.outputs, key=lambda o: o.rel)
        top1 = f", top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        return (f"max abs {worst.max_abs:.3e}, max rel {worst.rel:.3e} (output {worst.name!r}), "
                f"mean abs {worst.mean_abs:.3e}{top1}")


def seeded_inputs(batch: int, input_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Standard-normal images, i.e. already mean/std normalised; the same for every runtime."""
    return np.random.default_rng(seed).standard_normal((batch, 3, *input_size), dtype=np.float32)


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float,
                    rtol: float) -> ParityReport:
    if list(reference) != list(candidate):
        # names may differ (e.g. an older artifact); outputs are compared in order
        if len(reference) != len(candidate):
            raise ArtifactError(f"the artifact has {len(candidate)} outputs {list(candidate)}, the PyTorch model "
                                f"{len(reference)} {list(reference)}: it was exported from another model or "
                                "with other options (e.g. --features-only); verify it against the right model")
    for name, ref in reference.items():
        if not np.isfinite(ref).all():
            raise VerificationError(
                f"the PyTorch reference output {name!r} itself is not finite ({int((~np.isfinite(ref)).sum())} "
                "NaN/inf values), so there is nothing to compare against: the weights or the model overflow; "
                "check the checkpoint")
    results = []
    for (name, ref), cand in zip(reference.items(), candidate.values()):
        ref64, cand64 = ref.astype(np.float64), np.asarray(cand).astype(np.float64)
        if ref64.shape != cand64.shape:
            raise ArtifactError(f"output {name!r} has shape {cand64.shape} in the artifact but {ref64.shape} in "
                                "PyTorch: it was exported from another model or with other options; verify it "
                                "against the right model")
        diff = np.abs(ref64 - cand64)
        results.append(OutputParity(name, float(diff.max()), float(np.abs(ref64).max()), float(diff.mean())))
    top1 = None
    if len(reference) == 1:
        ref = next(iter(reference.values()))
        if ref.ndim == 2:
            cand = np.asarray(next(iter(candidate.values())))
            top1 = float((ref.argmax(1) == cand.argmax(1)).mean())
    return ParityReport(results, atol, rtol, top1)


def verify_runner(reference: Runner, candidate: Runner, batch: int, input_size: tuple[int, int], *,
                  seed: int = 0, atol: float = 0.0, rtol: float = 1e-4) -> ParityReport:
    """Run the same seeded batch through both runners and compare every output.

    A candidate that takes uint8 images (preprocessing embedded, e.g. an OpenVINO IR exported with
    ``--embed-preprocess``) gets seeded synthetic images; the reference gets them normalised.
    """
    x = feed = seeded_inputs(batch, input_size, seed)
    if len(candidate.inputs) == 1 and candidate.inputs[0].dtype == "uint8":
        from .images import synthetic_images, to_tensor

        if candidate.metadata is None:
            raise ArtifactError("a uint8-input artifact needs its edgevit metadata (mean/std) to be verified; "
                                "re-export it with `edgevit export --embed-preprocess`")
        feed = synthetic_images(batch, input_size, seed)
        x = to_tensor(feed, candidate.metadata.mean, candidate.metadata.std)
    report = compare_outputs(reference.run(x), candidate.run(feed), atol, rtol)
    return ParityReport(report.outputs, atol, rtol, report.top1_agreement, batch,
                        f"{candidate.info.backend} ({candidate.info.precision})", dict(candidate.info.details))
