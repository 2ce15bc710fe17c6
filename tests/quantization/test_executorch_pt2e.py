"""ExecuTorch int8 (PT2E + XNNPACK quantizer), standalone: the family's float rules hold in the quantized
FX graph and the result agrees with fp32. Lowering to .pte belongs to the ExecuTorch format row."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from edgevit.models import create_model, get_model_card
from edgevit.models.int8_rules import keep_float_rules
from edgevit.quantization.accuracy import compare_logits, evaluation_images
from edgevit.quantization.calibration import CalibrationSource
from edgevit.images import to_tensor

pytestmark = pytest.mark.skipif(importlib.util.find_spec("executorch") is None,
                                reason="ExecuTorch int8 needs executorch (pip install executorch)")


# Known failure, kept visible (strict: it fails the run once it passes, so the mark is removed then): with the
# reference weights the PT2E/XNNPACK graph of partialformer-b0 no longer shows the TopK-score rule as kept in
# float (the rule matches FX node names that changed); ExecuTorch int8 is not wired into the format table yet.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="TopK-score keep-float rule not matched in the PT2E graph (issue 15, open)")
@pytest.mark.parametrize("name", ["partialformer-b0"])
def test_pt2e_xnnpack_keeps_the_rules_and_agrees(name: str) -> None:
    from edgevit.quantization.executorch_pt2e import quantize_xnnpack

    card, size = get_model_card(name), (64, 64)
    model = create_model(name)
    samples = CalibrationSource(count=4).batches(size, card.mean, card.std, 1)
    quantized, kept = quantize_xnnpack(model, samples, keep_float_rules(card.family))
    assert any(why.startswith("ops computing TopK") for why in kept.values()), kept
    nodes = {n.name: n for n in quantized.graph.nodes}
    quantized_ops = [n for n in quantized.graph.nodes if n.op == "call_function"
                     and "quantize_per_tensor" in str(n.target)]
    assert quantized_ops  # activations really are quantized ...
    for name_kept in kept:  # ... but no kept node reads a dequantized activation
        if name_kept in nodes:
            assert all("dequantize" not in str(a.target) for a in nodes[name_kept].all_input_nodes
                       if a.op == "call_function"), name_kept
    x = torch.from_numpy(to_tensor(evaluation_images(16, size), card.mean, card.std))
    with torch.no_grad():
        ref = model(x).numpy()
        out = np.concatenate([quantized(x[i:i + 1]).numpy() for i in range(len(x))])
    report = compare_logits(ref, out)
    print(name, report.summary())
    assert report.passed
