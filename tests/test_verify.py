import numpy as np
import pytest

from edgevit.errors import ArtifactError
from edgevit.verify import compare_outputs, seeded_inputs


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
    with pytest.raises(ArtifactError, match="shape"):
        compare_outputs(ref, {"logits": np.zeros((2, 3), np.float32)}, 0.0, 1e-4)


def test_seeded_inputs_are_reproducible() -> None:
    a, b = seeded_inputs(2, (8, 8), seed=3), seeded_inputs(2, (8, 8), seed=3)
    assert a.dtype == np.float32 and a.shape == (2, 3, 8, 8) and np.array_equal(a, b)
    assert not np.array_equal(a, seeded_inputs(2, (8, 8), seed=4))
