"""Reference weights (edgevit.models.init): labels, determinism, and that they only write values."""

from __future__ import annotations

import pytest
import torch

from edgevit.errors import ArtifactError
from edgevit.models import create_model, is_generated_weights, weights_label


def test_weights_labels_round_trip_and_old_labels_are_refused(tmp_path) -> None:
    assert weights_label(None, 3) == "reference(seed=3)"
    assert is_generated_weights("reference(seed=3)") and is_generated_weights(weights_label(None, -1))
    ckpt = tmp_path / "w.pth"
    assert weights_label(str(ckpt), 0) == str(ckpt.resolve()) and not is_generated_weights(str(ckpt))
    with pytest.raises(ArtifactError, match="re-export"):
        is_generated_weights("random(seed=0)")


def test_same_seed_same_weights_other_seed_other_weights_global_rng_untouched() -> None:
    before = torch.random.get_rng_state()
    a, b = create_model("s2aformer-mini"), create_model("s2aformer-mini")
    assert torch.equal(torch.random.get_rng_state(), before)
    c = create_model("s2aformer-mini", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["stages.0.embed.bn.running_var"], sc["stages.0.embed.bn.running_var"])


def test_batchnorm_statistics_are_measured_not_identity() -> None:
    model = create_model("s2aformer-mini")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(float(m.running_mean.abs().max()) > 1e-3 for m in bns)
    assert all(not torch.allclose(m.running_var, torch.ones_like(m.running_var)) for m in bns)
