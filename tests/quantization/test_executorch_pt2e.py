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


# PartialFormer in PT2E/XNNPACK int8 was inaccurate (64x64: 18.8 % agreement; 224x224: 82.6 % decisive) until its
# rules kept the selection's arithmetic float (``arithmetic`` rule, README "INT8"). Measured at 224 because the
# small-input case is not a deployment one: at 64x64 the last stages hold 4-16 tokens and even the fixed recipe
# agrees on 57 % (32 images), where each int8 step moves a token across the foreground cut.
KNOWN_INACCURATE: dict[str, str] = {}


# PartialFormer's TopK-score rule must hold in the PT2E graph too: its FX graph has `to`/`contiguous` nodes the
# ONNX graph does not, which once put the score's nearest convolution beyond the rule's reach (fixed by
# looking through them: executorch_pt2e.TRANSPARENT).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["partialformer-b0", "dualformer-t"])
def test_pt2e_xnnpack_keeps_the_rules_and_agrees(name: str) -> None:
    from edgevit.quantization.executorch_pt2e import quantize_xnnpack

    card, size = get_model_card(name), (224, 224)
    model = create_model(name)
    samples = CalibrationSource().batches(size, card.mean, card.std, 1)  # the default recipe (64 images)
    quantized, kept = quantize_xnnpack(model, samples, keep_float_rules(card.family))
    decided_by = {"partialformer-b0": "ops computing TopK", "dualformer-t": "ops computing GreaterOrEqual"}[name]
    assert any(why.startswith(decided_by) for why in kept.values()), kept
    assert any(why.startswith("elementwise arithmetic") for why in kept.values()), kept
    nodes = {n.name: n for n in quantized.graph.nodes}
    quantized_ops = [n for n in quantized.graph.nodes if n.op == "call_function"
                     and "quantize_per_tensor" in str(n.target)]
    assert quantized_ops  # activations really are quantized ...
    for name_kept in kept:  # ... but every kept node keeps float weights (no per-channel int8 weight feeds it)
        if name_kept in nodes:
            assert not any("dequantize_per_channel" in str(a.target) for a in nodes[name_kept].all_input_nodes
                           if a.op == "call_function"), name_kept
    for node in quantized.graph.nodes:  # and attention probabilities are never quantized (1/255 steps)
        if "softmax" in str(node.target):
            assert not any("quantize" in str(u.target) for u in node.users), node.name
    x = torch.from_numpy(to_tensor(evaluation_images(48, size), card.mean, card.std))
    with torch.no_grad():
        ref = model(x).numpy()
        out = np.concatenate([quantized(x[i:i + 1]).numpy() for i in range(len(x))])
    report = compare_logits(ref, out)
    print(name, report.summary())
    if name in KNOWN_INACCURATE:  # kept visible: fixing it fails this line, so the entry is removed then
        assert not report.passed, f"{name} now agrees: remove it from KNOWN_INACCURATE"
    else:
        assert report.passed
