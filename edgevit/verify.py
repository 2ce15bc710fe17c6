"""Parity between an artifact and the PyTorch model it came from.

The metric is the one every issue states: max abs error / max |reference| per output (a scale-free
relative error, robust to near-zero elements that break element-wise rtol), plus mean error and, for
logits, top-1 agreement. An output passes when ``max_abs <= atol + rtol * max|reference|``.

Structure is checked before values, as optimum's ``validate_model_outputs`` does: outputs are matched by
name (never by position), then their shapes, then the batch axis the artifact declares against its
metadata (static or dynamic); every difference is collected into one :class:`OutputMismatchError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import EXIT_USER_ERROR, ArtifactError, VerificationError
from .runtimes.base import Runner, run_in_calls


class OutputMismatchError(VerificationError, ValueError):
    """The artifact's outputs differ from PyTorch's in names, shapes or batch axis (every difference listed).

    Exit code 2, not 1: the artifact is being compared with a model (or options) it was not exported from,
    a mistake in the request rather than a numerical difference."""

    exit_code = EXIT_USER_ERROR


@dataclass(frozen=True)
class OutputParity:
    name: str
    max_abs: float
    max_ref: float
    mean_abs: float
    inputs: str = "seeded"  # which verification batch this worst case came from (see verify_runner)

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
    inputs: tuple[str, ...] = ("seeded",)  # the verification batches that ran (see verify_runner)

    @property
    def passed(self) -> bool:
        return all(o.passes(self.atol, self.rtol) for o in self.outputs)

    @property
    def worst_rel(self) -> float:
        return max(o.rel for o in self.outputs)

    def summary(self) -> str:
        worst = max(self.outputs, key=lambda o: o.rel)
        top1 = f", top-1 agreement {self.top1_agreement:.1%}" if self.top1_agreement is not None else ""
        on = "" if worst.inputs == "seeded" else f" on the {worst.inputs} images"
        return (f"max abs {worst.max_abs:.3e}, max rel {worst.rel:.3e} (output {worst.name!r}{on}), "
                f"mean abs {worst.mean_abs:.3e}{top1}")


def seeded_inputs(batch: int, input_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Standard-normal images, i.e. already mean/std normalised; the same for every runtime."""
    return np.random.default_rng(seed).standard_normal((batch, 3, *input_size), dtype=np.float32)


# Normalised levels of the uniform images verification also runs (image i of a batch gets level i mod 3),
# chosen so that the tied context scores of every PartialFormer variant (reference weights, 224; b0 also
# at 64 and 256x192) sit >= 0.018 score-grid steps from a grid line, ~18x the fp32 rounding spread of
# equal tokens (levels 0.0 and 0.7 came within 0.003 and 0.005): measured, not guaranteed for other weights.
UNIFORM_LEVELS = (1.0, 1.5, -1.5)
UNIFORM_UINT8_LEVELS = (128, 200, 60)  # the same idea for an artifact that takes uint8 images


def uniform_inputs(batch: int, input_size: tuple[int, int],
                   colours: tuple[tuple[float, float, float], ...] = ()) -> np.ndarray:
    """Images of one constant value each, the second set of images every verification runs: ``batch``
    grey levels (:data:`UNIFORM_LEVELS`), then one image per flat ``colour``, cycled up to a multiple of
    ``batch`` (an artifact with a fixed batch runs them in several calls).

    Seeded noise makes every token different, so a data-dependent choice between *equal* values never
    happens on it: PartialFormer's rule for context scores tied at the foreground boundary (lower token
    index wins, a cumulative count of the tied tokens) was never exercised, and a graph that broke it
    still verified. In a uniform image every token away from the border is equal in exact arithmetic,
    and the model's score grid makes such tokens tie exactly in every runtime (``partialformer.
    context_score``), so the tie rule decides real foreground slots here. Grey levels tie only in the
    blocks whose maps have an interior; the variant's measured ``colours`` (model card
    ``verification_colours``) make the deeper blocks tie too (and, for A2Mamba, make the last stage's
    scan carry move the logits well past the tolerance). A blank frame is also an input a deployed
    model meets."""
    levels = np.resize(np.asarray(UNIFORM_LEVELS, np.float32), (batch, 1))
    values = np.concatenate([np.repeat(levels, 3, axis=1), np.asarray(colours, np.float32).reshape(-1, 3)])
    return flat_frames(np.resize(values, (-(-len(values) // batch) * batch, 3)), input_size)


# A sign decision closer than this (relative) to its threshold is left to rounding: ~100x fp32's error of a
# 32..64-term dot product. Flat frames with such a decision are replaced by FALLBACK_LEVELS, in order.
DECISION_MARGIN = 1e-5
FALLBACK_LEVELS = (0.5, -0.5, 2.0, -1.0, 0.25, -0.25, 2.5, -2.0)


def decided_by_rounding(reference: Runner, frames: np.ndarray, batch: int) -> np.ndarray:
    """Per frame: does the reference make a sign decision within :data:`DECISION_MARGIN` of its threshold
    (``edgevit.models.decisions``)? All false for models without sign decisions (nothing is run)."""
    module = getattr(reference, "model", None)
    if not getattr(module, "sign_decisions", False):
        return np.zeros(len(frames), bool)
    from .models.decisions import recording_decision_margins

    close = []
    for start in range(0, len(frames), batch):
        rows = frames[start:start + batch]
        with recording_decision_margins() as margins:
            run_in_calls(reference, rows, batch)
        smallest = np.min(np.stack([m.numpy() for m in margins]), axis=0) if margins else np.full(batch, np.inf)
        close.append(smallest[:len(rows)] < DECISION_MARGIN)
    return np.concatenate(close)


def screened_uniform_inputs(reference: Runner, batch: int, input_size: tuple[int, int]) -> np.ndarray:
    """:func:`uniform_inputs` for ``reference``, each frame on which rounding would decide a sign decision
    replaced by the first grey level of :data:`FALLBACK_LEVELS` on which it does not (dropped if none does).

    Why: on such a frame two correct runtimes may assign the whole interior differently (see
    ``edgevit.models.decisions``), so a comparison there measures the coin, not the artifact."""
    frames = uniform_inputs(batch, input_size, verification_colours(reference))
    close = decided_by_rounding(reference, frames, batch)
    if not close.any():
        return frames
    spares = flat_frames(np.repeat(np.asarray(FALLBACK_LEVELS, np.float32)[:, None], 3, axis=1), input_size)
    spares = spares[~decided_by_rounding(reference, spares, batch)]
    kept = [f for f in frames[~close]] + list(spares[:int(close.sum())])
    if not kept:
        return frames[:0]
    return np.resize(np.stack(kept), (-(-len(kept) // batch) * batch, *frames.shape[1:]))


def flat_frames(colours: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """(N, 3, H, W) float32 images, image i filled with the normalised per-channel values ``colours[i]``."""
    colours = np.asarray(colours, np.float32)
    return np.broadcast_to(colours[:, :, None, None], (len(colours), 3, *input_size)).copy()


# Verification colours were measured with the reference weights of this seed; other weights get grey levels.
COLOUR_SEED = 0


def verification_colours(reference: Runner) -> tuple[tuple[float, float, float], ...]:
    """The flat colours measured for the reference model's variant, size and weights (else none)."""
    from .models import get_model_card, weights_label

    meta = reference.metadata
    if meta is None or meta.weights != weights_label(None, COLOUR_SEED):
        return ()
    return get_model_card(meta.model).colours_for(meta.input_size)


def structure_problems(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> list[str]:
    """Output names (by name), then the shapes of the outputs both have."""
    problems = []
    missing = [n for n in reference if n not in candidate]
    extra = [n for n in candidate if n not in reference]
    if missing:
        problems.append(f"missing output(s) {', '.join(map(repr, missing))} (the artifact has "
                        f"{', '.join(map(repr, candidate)) or 'none'})")
    if extra:
        problems.append(f"unexpected output(s) {', '.join(map(repr, extra))}")
    for name, ref in reference.items():
        if name in candidate and tuple(ref.shape) != tuple(np.shape(candidate[name])):
            problems.append(f"output {name!r} has shape {tuple(np.shape(candidate[name]))}, PyTorch's "
                            f"{tuple(ref.shape)}")
    return problems


def batch_axis_problems(candidate: Runner) -> list[str]:
    """The batch axis every input and output declares must be what the metadata says: dynamic (a named or
    negative dim) for ``batch=None``, else that static size."""
    if candidate.metadata is None:
        return []
    want = candidate.metadata.batch
    problems = []
    for kind, specs in (("input", candidate.inputs), ("output", candidate.outputs)):
        for spec in specs:
            if not spec.shape:  # the runtime does not declare this output's shape
                continue
            dim = spec.shape[0]
            dynamic = not isinstance(dim, int) or dim < 0
            if want is None and not dynamic:
                problems.append(f"{kind} {spec.name!r} has a fixed batch of {dim}, the metadata says dynamic")
            elif want is not None and (dynamic or dim != want):
                problems.append(f"{kind} {spec.name!r} has batch {dim}, the metadata says {want}")
    return problems


def raise_structure_problems(problems: list[str]) -> None:
    if problems:
        raise OutputMismatchError(f"artifact outputs do not match PyTorch's: {'; '.join(problems)}")


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], atol: float,
                    rtol: float) -> ParityReport:
    """Structure first (:class:`OutputMismatchError` lists every difference), then the scale-free value check
    of every output, matched by name."""
    raise_structure_problems(structure_problems(reference, candidate))
    for name, ref in reference.items():
        if not np.isfinite(ref).all():
            raise VerificationError(
                f"the PyTorch reference output {name!r} itself is not finite ({int((~np.isfinite(ref)).sum())} "
                "NaN/inf values), so there is nothing to compare against: the weights or the model overflow; "
                "check the checkpoint")
    results = []
    for name, ref in reference.items():
        ref64, cand64 = ref.astype(np.float64), np.asarray(candidate[name]).astype(np.float64)
        diff = np.abs(ref64 - cand64)
        results.append(OutputParity(name, float(diff.max()), float(np.abs(ref64).max()), float(diff.mean())))
    top1 = None
    if len(reference) == 1:
        ref = next(iter(reference.values()))
        if ref.ndim == 2:
            cand = np.asarray(candidate[next(iter(reference))])
            top1 = float((ref.argmax(1) == cand.argmax(1)).mean())
    return ParityReport(results, atol, rtol, top1)


def verify_runner(reference: Runner, candidate: Runner, batch: int, input_size: tuple[int, int], *,
                  seed: int = 0, atol: float = 0.0, rtol: float = 1e-4) -> ParityReport:
    """Run two sets of images through both runners, the seeded batch and uniform images
    (:func:`uniform_inputs`, with the reference variant's :func:`verification_colours`), and compare every
    output of both; each output reports its worse set, top-1 agreement the seeded one.

    The uniform batch runs only for an fp32 candidate: a reduced-precision runtime computes tokens that are
    equal in exact arithmetic with rounding differences of ~1e-3, as large as the score grid, so their ties
    are not exact there (the PartialFormer model card says so) and would fail a correct artifact.

    A candidate that takes uint8 images (preprocessing embedded, e.g. an OpenVINO IR exported with
    ``--embed-preprocess``) gets seeded synthetic images and uniform uint8 images; the reference gets
    them normalised.
    """
    uniform = screened_uniform_inputs(reference, batch, input_size)
    batches = {"seeded": (seeded_inputs(batch, input_size, seed),) * 2, "uniform": (uniform,) * 2}
    if not len(uniform):
        del batches["uniform"]
    if len(candidate.inputs) == 1 and candidate.inputs[0].dtype == "uint8":
        from .images import synthetic_images, to_tensor

        if candidate.metadata is None:
            raise ArtifactError("a uint8-input artifact needs its edgevit metadata (mean/std) to be verified; "
                                "re-export it with `edgevit export --embed-preprocess`")
        grey = np.resize(np.asarray(UNIFORM_UINT8_LEVELS, np.uint8), batch)  # no colours: uint8 rounding
        feeds = {"seeded": synthetic_images(batch, input_size, seed),  # moves them off the measured values
                 "uniform": np.broadcast_to(grey[:, None, None, None], (batch, *input_size, 3)).copy()}
        batches = {k: (to_tensor(f, candidate.metadata.mean, candidate.metadata.std), f) for k, f in feeds.items()}
    if candidate.info.precision != "fp32":  # equal tokens round differently in fp16/bf16: no exact ties
        batches.pop("uniform", None)
    declared = batch_axis_problems(candidate)
    reports = {}
    for label, (x, feed) in batches.items():
        ref_out, cand_out = run_in_calls(reference, x, batch), run_in_calls(candidate, feed, batch)
        raise_structure_problems(declared + structure_problems(ref_out, cand_out))
        reports[label] = compare_outputs(ref_out, cand_out, atol, rtol)
    worst = [max((replace(r.outputs[i], inputs=label) for label, r in reports.items()),
                 key=lambda o: o.max_abs - atol - rtol * o.max_ref)
             for i in range(len(reports["seeded"].outputs))]
    return ParityReport(worst, atol, rtol, reports["seeded"].top1_agreement, batch,
                        f"{candidate.info.backend} ({candidate.info.precision})", dict(candidate.info.details),
                        tuple(reports))
