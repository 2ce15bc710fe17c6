import numpy as np
import pytest
import torch

from edgevit.artifact import ArtifactMetadata
from edgevit.errors import VerificationError
from edgevit.runtimes.base import Runner, RunnerInfo, TensorSpec
from edgevit.verify import OutputMismatchError, batch_axis_problems, compare_outputs, seeded_inputs


def test_relative_metric_uses_global_scale() -> None:
    ref = {"logits": np.array([[10.0, -5.0, 0.0]], dtype=np.float32)}
    out = {"logits": np.array([[10.0005, -5.0, 0.0001]], dtype=np.float32)}
    report = compare_outputs(ref, out, atol=0.0, rtol=1e-4)
    (o,) = report.outputs
    assert o.max_abs == pytest.approx(5e-4, rel=1e-3) and o.max_ref == 10.0
    assert o.rel == pytest.approx(5e-5, rel=1e-3)
    assert report.passed and report.top1_agreement == 1.0
    assert not compare_outputs(ref, out, atol=0.0, rtol=1e-5).passed
    assert compare_outputs(ref, out, atol=1e-3, rtol=0.0).passed


def test_top1_disagreement_and_shape_mismatch() -> None:
    ref = {"logits": np.array([[1.0, 2.0], [3.0, 1.0]], dtype=np.float32)}
    out = {"logits": np.array([[2.1, 2.0], [3.0, 1.0]], dtype=np.float32)}
    assert compare_outputs(ref, out, 0.0, 1e-4).top1_agreement == 0.5
    with pytest.raises(ValueError, match="shape"):
        compare_outputs(ref, {"logits": np.zeros((2, 3), np.float32)}, 0.0, 1e-4)


def test_seeded_inputs_are_reproducible() -> None:
    a, b = seeded_inputs(2, (8, 8), seed=3), seeded_inputs(2, (8, 8), seed=3)
    assert a.dtype == np.float32 and a.shape == (2, 3, 8, 8) and np.array_equal(a, b)
    assert not np.array_equal(a, seeded_inputs(2, (8, 8), seed=4))


def test_outputs_are_matched_by_name_not_position() -> None:
    a, b = np.ones((1, 4), np.float32), np.full((1, 4), 5.0, np.float32)
    report = compare_outputs({"stage1": a, "stage2": b}, {"stage2": b, "stage1": a}, 0.0, 1e-4)
    assert report.passed and [o.name for o in report.outputs] == ["stage1", "stage2"]


def test_every_structural_difference_is_reported_at_once() -> None:
    ref = {"stage1": np.zeros((2, 8, 4, 4), np.float32), "stage2": np.zeros((2, 16, 2, 2), np.float32),
           "stage3": np.zeros((2, 32, 1, 1), np.float32)}
    cand = {"stage1": np.zeros((2, 8, 4, 4), np.float32), "stage2": np.zeros((2, 16, 2, 3), np.float32),
            "extra": np.zeros(1, np.float32)}
    with pytest.raises(OutputMismatchError) as info:
        compare_outputs(ref, cand, 0.0, 1e-4)
    message = str(info.value)
    assert "missing output(s) 'stage3'" in message and "unexpected output(s) 'extra'" in message
    assert "output 'stage2' has shape (2, 16, 2, 3), PyTorch's (2, 16, 2, 2)" in message
    assert isinstance(info.value, VerificationError)  # the CLI exits 1, as for a value mismatch


class _Declared(Runner):
    """A runner that only declares shapes (the batch-axis check needs no inference)."""

    def __init__(self, batch: int | None, input_dim: int | str, output_dim: int | str) -> None:
        self.inputs = [TensorSpec("input", (input_dim, 3, 8, 8))]
        self.outputs = [TensorSpec("logits", (output_dim, 10))]
        self.metadata = ArtifactMetadata("s2aformer-mini", (8, 8), (0.5,) * 3, (0.5,) * 3, batch)
        self.info = RunnerInfo("fake")

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise AssertionError("not run")


def test_declared_batch_axis_must_match_the_metadata() -> None:
    assert batch_axis_problems(_Declared(None, "batch", -1)) == []  # TensorRT declares dynamic dims as -1
    assert batch_axis_problems(_Declared(2, 2, 2)) == []
    assert batch_axis_problems(_Declared(None, 1, "batch")) == [
        "input 'input' has a fixed batch of 1, the metadata says dynamic"]
    assert batch_axis_problems(_Declared(2, 2, "batch")) == ["output 'logits' has batch batch, the metadata says 2"]


class _TieRule(Runner):
    """A stand-in model with a data-dependent choice between equal values: per image, the index of the
    largest of the first 8 pixels of channel 0, ties to the lower index (or, ``broken``, to the higher one).
    On seeded noise no two pixels are equal, so only the uniform batch can tell the two rules apart."""

    def __init__(self, broken: bool = False) -> None:
        self.inputs = [TensorSpec("input", ("batch", 3, 8, 8))]
        self.outputs = [TensorSpec("logits", ("batch", 2))]
        self.metadata = None
        self.info = RunnerInfo("fake")
        self.broken = broken

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = feeds["input"][:, 0, 0, :8]
        pick = 7 - first[:, ::-1].argmax(1) if self.broken else first.argmax(1)
        return {"logits": np.stack([pick, np.ones_like(pick)], 1).astype(np.float32)}


def test_verification_also_runs_uniform_images_where_ties_are_exact() -> None:
    from edgevit.verify import uniform_inputs, verify_runner

    x = uniform_inputs(3, (8, 8))
    assert x.shape == (3, 3, 8, 8) and (x == x[:, :1, :1, :1]).all() and len(set(x[:, 0, 0, 0])) == 3
    ok = verify_runner(_TieRule(), _TieRule(), 2, (8, 8))
    assert ok.passed and ok.worst_rel == 0.0
    report = verify_runner(_TieRule(), _TieRule(broken=True), 2, (8, 8))
    assert not report.passed and report.outputs[0].inputs == "uniform"
    assert "on the uniform images" in report.summary() and report.top1_agreement == 1.0  # top-1: seeded batch
    assert report.inputs == ("seeded", "uniform")
    half = _TieRule(broken=True)
    half.info = RunnerInfo("fake", "fp16")  # equal tokens round differently in fp16: no exact ties to test
    assert verify_runner(_TieRule(), half, 2, (8, 8)).inputs == ("seeded",)


def test_verification_colours_only_for_the_weights_they_were_measured_with() -> None:
    """A card's colours were measured with the reference weights of COLOUR_SEED: another seed or a checkpoint
    gets the grey frames only (the colours' distance from the score grid is not known for them)."""
    from dataclasses import replace

    from edgevit.models import get_model_card
    from edgevit.verify import uniform_inputs, verification_colours

    colours = get_model_card("partialformer-b0").colours_for((224, 224))
    assert colours and get_model_card("partialformer-b0").colours_for((256, 192)) == ()
    runner = _TieRule()
    runner.metadata = ArtifactMetadata("partialformer-b0", (224, 224), (0.5,) * 3, (0.5,) * 3, None)
    assert verification_colours(runner) == colours
    frames = uniform_inputs(2, (224, 224), verification_colours(runner))
    assert frames.shape == (2 + len(colours) + 1, 3, 224, 224)  # cycled to whole calls of 2
    for weights in ("reference(seed=1)", "/models/b0.pth"):
        runner.metadata = replace(runner.metadata, weights=weights)
        assert verification_colours(runner) == ()



class _SignToy(torch.nn.Module):
    """Decides by the sign of (pixel - 1.0): a flat frame at 1.0 sits on the threshold."""

    sign_decisions = True
    output_names = ("logits",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from edgevit.models.decisions import note_decision_margins, recording

        value = x[:, :1] - 1.0
        if recording():
            note_decision_margins(value, torch.ones_like(value))
        return (value >= 0).float().flatten(1)[:, :4]


def test_flat_frames_that_rounding_decides_are_replaced() -> None:
    from edgevit import runtimes
    from edgevit.verify import FALLBACK_LEVELS, UNIFORM_LEVELS, decided_by_rounding, screened_uniform_inputs

    ref = runtimes.load(_SignToy(), input_size=(8, 8))
    frames = screened_uniform_inputs(ref, 3, (8, 8))
    assert UNIFORM_LEVELS[0] == 1.0  # the toy's threshold
    assert sorted(frames[:, 0, 0, 0].tolist()) == sorted([1.5, -1.5, FALLBACK_LEVELS[0]])
    assert not decided_by_rounding(ref, frames, 3).any()
    plain = runtimes.load(torch.nn.Conv2d(3, 4, 1), input_size=(8, 8))  # no sign decisions: nothing is run
    assert not decided_by_rounding(plain, frames, 3).any()


def test_dualformer_grey_frame_at_224_is_decided_by_rounding_and_replaced() -> None:
    """Measured: dualformer-t at 224 on grey 1.0 has an LSH margin of 3.7e-7 (block 7); XNNPACK's program
    was 4.4e-4 from PyTorch there. Verification must not compare on it."""
    from edgevit import runtimes
    from edgevit.verify import decided_by_rounding, screened_uniform_inputs, uniform_inputs

    ref = runtimes.load("dualformer-t", input_size=(224, 224))
    assert decided_by_rounding(ref, uniform_inputs(1, (224, 224)), 1).tolist() == [True]
    frames = screened_uniform_inputs(ref, 1, (224, 224))
    assert frames.shape == (1, 3, 224, 224) and frames[0, 0, 0, 0] != 1.0
    assert not decided_by_rounding(ref, frames, 1).any()
