"""ONNX QDQ INT8: integer kernels really run in ONNX Runtime, the family's float rules hold in the written
graph, metadata survives, and the result agrees with fp32."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from edgevit import pipeline, runtimes
from edgevit.errors import EdgevitError, VerificationError
from edgevit.formats import format_options
from edgevit.models import get_model_card
from edgevit.models.int8_rules import keep_float_rules
from edgevit.quantization.accuracy import AgreementReport
from edgevit.quantization.calibration import CalibrationSource
from edgevit.quantization.onnx_qdq import quantize_qdq
from tests.openvino_support import small_size
from tests.ort_support import ort_optimized_graph

_FP32: dict[str, Path] = {}


def _quantized(name: str, factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    size = small_size(name)
    if name not in _FP32:
        _FP32[name] = pipeline.export(name, "onnx", factory.mktemp("qdq") / "fp32.onnx", input_size=size,
                                      verify=False).path
    src = _FP32[name]
    card = get_model_card(name)
    samples = CalibrationSource(count=4).batches(size, card.mean, card.std, 1)
    dst = src.with_name("int8.onnx")
    keep = quantize_qdq(onnx.load(str(src)), dst, samples, keep_float_rules(card.family))
    return src, dst, keep


def test_s2aformer_convolutions_run_as_integer_kernels(tmp_path_factory: pytest.TempPathFactory,
                                                       tmp_path: Path) -> None:
    src, dst, keep = _quantized("s2aformer-mini", tmp_path_factory)
    model = onnx.load(str(dst))
    assert {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}.items() <= {
        p.key: p.value for p in model.metadata_props}.items()
    # ONNX Runtime fuses every quantized Conv into QLinearConv (u8 activations, s8 weights); with int8
    # activations most of them would stay float Convs on dequantized inputs, slower than fp32
    graph = ort_optimized_graph(dst, tmp_path / "optimized.onnx", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    kinds = [n.op_type for n in graph.node]
    n_conv = sum(n.op_type == "Conv" for n in onnx.load(str(src)).graph.node)
    assert kinds.count("QLinearConv") == n_conv and "Conv" not in kinds
    # the kept nodes (the classifier head here) keep float weights
    assert set(keep.values()) <= {r.describe() for r in keep_float_rules("S2AFormer")} | {
        "produces a graph output (logits stay float)"}
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in keep and node.op_type in ("Conv", "MatMul", "Gemm"):
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                       for i in node.input[1:]), node.name
    # the MatMuls weighting values by attention probabilities read the Softmax output in float
    softmax_out = {o for n in model.graph.node if n.op_type == "Softmax" for o in n.output}
    prob_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and softmax_out & set(n.input)]
    assert len(prob_matmuls) == sum(n.op_type == "Softmax" for n in model.graph.node) > 0
    assert all(n.name in keep for n in prob_matmuls)


def test_family_rules_hold_in_the_written_graph(tmp_path_factory: pytest.TempPathFactory) -> None:
    """PartialFormer: the ops computing the context score read no quantized weights; the others do."""
    _, dst, keep = _quantized("partialformer-b0", tmp_path_factory)
    reasons = set(keep.values())
    assert any(r.startswith("ops computing TopK") for r in reasons)
    model = onnx.load(str(dst))
    producers = {o: n for n in model.graph.node for o in n.output}
    quantized_weights = {n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")
                         and any(i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input)}
    assert quantized_weights and not quantized_weights & set(keep)


def test_export_int8_onnx_is_quantized_and_verified_by_agreement(tmp_path: Path) -> None:
    """Exported without the gate (whether an export clears it is a measurement on 500 images, not a unit
    test on 16), then checked by `verify`'s agreement path."""
    out = tmp_path / "q.onnx"
    report = pipeline.export("s2aformer-mini", "onnx", out, input_size=64, verify=False,
                             format_options=format_options("onnx", precision="int8"))
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node) > 50
    meta = runtimes.load(out).metadata
    assert meta is not None and meta.extra["precision"] == "int8" and meta.extra["calibration"].startswith("synthetic")
    assert report.metadata.extra["calibration"] == meta.extra["calibration"]
    again = pipeline.verify(None, out, eval_images=16)
    assert isinstance(again, AgreementReport) and again.images == 16
    assert again.candidate == "onnxruntime (int8+fp32)" and again.top5 >= 0.9  # int8 noise, not a broken graph
    with pytest.raises(EdgevitError, match="verified by top-1 agreement"):
        pipeline.export("s2aformer-mini", "onnx", tmp_path / "r.onnx", input_size=64, rtol=1e-2,
                        format_options=format_options("onnx", precision="int8"))


def test_miscalibrated_int8_fails_verification_and_writes_nothing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibration ranges from inputs 1000x too small (a preprocessing mismatch) saturate every activation:
    the agreement check must catch it before the artifact appears."""
    real = CalibrationSource.batches
    monkeypatch.setattr(CalibrationSource, "batches", lambda self, *a: [b * 1e-3 for b in real(self, *a)])
    with pytest.raises(VerificationError, match="disagrees with fp32"):
        pipeline.export("s2aformer-mini", "onnx", tmp_path / "q.onnx", input_size=64, eval_images=32,
                        format_options=format_options("onnx", precision="int8"))
    assert list(tmp_path.iterdir()) == []
