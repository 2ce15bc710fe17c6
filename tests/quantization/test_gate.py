"""The INT8 gate at a deployment-like size: the smallest variant of every family, exported to int8 ONNX (ONNX
Runtime) and OpenVINO with the default recipe (the default synthetic calibration set), passes top-1 agreement on
the decisive evaluation images. Slow (an export and 2 x 200 forward passes per case); the same numbers,
with speed, come from scripts/int8_table.py (README "INT8")."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from edgevit import pipeline
from edgevit.formats import format_options
from tests.openvino_support import smallest_per_family

SIZE, IMAGES = 128, 200  # the table's setting (README "INT8 measurements")
# PartialFormer's output is discontinuous in its token selection (a token that changes side goes through MMSA
# instead of SQA); at 128x128 its last blocks hold 64 and 16 tokens. With the reference weights a relative weight
# noise of 1e-2 (int8's kind) leaves 73 % decisive agreement, and its int8 ONNX export measured 67 %
# (docs/models/partialformer.md, "INT8 at small inputs"): at 128 the gate judges the selection's ties, not the
# quantization. It is judged at 224, the README table's size, where it measured 97 %.
SIZE_OF = {"partialformer-b0": 224}


@pytest.mark.slow
@pytest.mark.parametrize("to", ["onnx", "openvino"])
@pytest.mark.parametrize("name", smallest_per_family())
def test_int8_export_passes_the_agreement_gate(name: str, to: str, tmp_path: Path) -> None:
    if to == "openvino" and importlib.util.find_spec("nncf") is None:
        pytest.skip("OpenVINO int8 needs nncf")
    out = tmp_path / ("q.onnx" if to == "onnx" else "q")
    report = pipeline.export(name, to, out, input_size=SIZE_OF.get(name, SIZE), eval_images=IMAGES,
                             format_options=format_options(to, precision="int8"))
    assert report.agreement is not None and report.agreement.passed, report.agreement
    assert report.agreement.candidate.endswith("(int8+fp32)")  # integer kernels ran, not an fp32 fallback
    assert report.agreement.decisive >= IMAGES // 10, report.agreement.summary()  # the gate judged enough images
