"""ONNX export of S2AFormer: named I/O, metadata, simplification, atomic writes and parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgevit
from edgevit import pipeline, runtimes
from edgevit.artifact import ArtifactMetadata
from edgevit.errors import InputShapeError, VerificationError
from edgevit.exporters import OnnxExportOptions, export_onnx, fold_batchnorm
from edgevit.verify import seeded_inputs

FAST = ["s2aformer-mini", "s2aformer-t"]
SLOW = ["s2aformer-xs", "s2aformer-s", "s2aformer-m", "s2aformer-l"]


def test_export_writes_named_io_metadata_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "t.onnx"
    report = pipeline.export("S2AFormer_T", output=out)
    assert report.path == out and out.exists()
    assert report.parity is not None and report.parity.passed and report.parity.worst_rel <= 1e-4
    assert report.parity.top1_agreement == 1.0
    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 224, 224]
    meta = ArtifactMetadata.from_props({p.key: p.value for p in proto.metadata_props})
    assert meta is not None and meta.model == "s2aformer-t" and meta.input_size == (224, 224)
    assert meta.mean == (0.485, 0.456, 0.406) and meta.std == (0.229, 0.224, 0.225)
    assert meta.edgevit_version == edgevit.__version__ and meta.batch == 1
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Loop", "Scan", "If", "ScatterND", "ScatterElements", "NonZero"}
    assert "LayerNormalization" in ops  # channel LN exported fused (spec hazard 5)
    assert [p.name for p in tmp_path.iterdir()] == ["t.onnx"]  # no temporary left behind


def test_batchnorm_is_folded_except_the_standalone_head_norm(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    pipeline.export("s2aformer-mini", output=out, verify=False)
    bns = [n for n in onnx.load(str(out)).graph.node if n.op_type == "BatchNormalization"]
    assert len(bns) <= 1  # only the classifier's BN (no conv before it) may remain


def test_fold_batchnorm_is_identical_with_real_statistics() -> None:
    model = edgevit.create_model("s2aformer-mini")  # reference weights: measured, non-identity BN statistics
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, folded = model(x), fold_batchnorm(model)(x)
    assert float((ref - folded).abs().max() / ref.abs().max()) <= 1e-5


def test_dynamic_batch_features_only(tmp_path: Path) -> None:
    out = tmp_path / "f.onnx"
    report = pipeline.export("s2aformer-mini", output=out, input_size="64x96", dynamic_batch=True,
                             features_only=True)
    assert report.parity is not None and report.parity.passed
    runner = runtimes.load(out)
    assert [o.name for o in runner.outputs] == ["stage1", "stage2", "stage3", "stage4"]
    assert isinstance(runner.inputs[0].shape[0], str)
    ys = runner.run(seeded_inputs(3, (64, 96)))
    assert [y.shape for y in ys.values()] == [(3, 32, 16, 24), (3, 64, 8, 12), (3, 128, 4, 6), (3, 256, 2, 3)]


def test_failed_verification_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgevit.exporters.onnx as onnx_exporter

    real = onnx_exporter.export_onnx

    def corrupting_export(model, path, options, metadata):  # noqa: ANN001, ANN202
        with torch.no_grad():
            model.head.fc.bias.add_(1.0)  # the artifact no longer matches the reference
        try:
            return real(model, path, options, metadata)
        finally:
            with torch.no_grad():
                model.head.fc.bias.sub_(1.0)

    monkeypatch.setattr(onnx_exporter, "export_onnx", corrupting_export)
    out = tmp_path / "bad.onnx"
    with pytest.raises(VerificationError, match="nothing was written"):
        pipeline.export("s2aformer-mini", output=out, input_size=64)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_size_is_a_user_error() -> None:
    with pytest.raises(InputShapeError, match="try --input-size 224x224"):
        pipeline.export("s2aformer-t", input_size="200")
    with pytest.raises(InputShapeError, match="cannot read input size"):
        pipeline.export("s2aformer-t", input_size="big")


def test_export_without_simplify_and_other_opset(tmp_path: Path) -> None:
    model = edgevit.create_model("s2aformer-mini")
    meta = ArtifactMetadata("s2aformer-mini", (64, 64), (0.5,) * 3, (0.5,) * 3, 2)
    path = export_onnx(model, tmp_path / "raw.onnx", OnnxExportOptions((64, 64), 2, False, 20, False), meta)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 20
    runner = runtimes.load(path)
    x = seeded_inputs(2, (64, 64))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = runner.run(x)["logits"]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_every_variant_matches_pytorch_in_onnxruntime(name: str, tmp_path: Path) -> None:
    report = pipeline.export(name, output=tmp_path / f"{name}.onnx", batch=2)
    assert report.parity is not None
    assert report.parity.worst_rel <= 1e-4, report.parity.summary()


@pytest.mark.parametrize("name", SLOW)
def test_large_variants_match_at_small_input(name: str, tmp_path: Path) -> None:
    """The same graph at 64x64 keeps the big variants' parity in the fast suite."""
    report = pipeline.export(name, output=tmp_path / f"{name}.onnx", input_size=64)
    assert report.parity is not None and report.parity.worst_rel <= 1e-4, report.parity.summary()


def test_optimizer_runs_without_the_quadratic_multi_output_rules() -> None:
    """onnxscript matches multi-output patterns by re-indexing the graph per node (O(nodes^2): minutes
    on A2Mamba); the export drops those rules for its duration only and keeps every other rule."""
    from onnxscript import rewriter

    from edgevit.exporters.onnx import _single_output_rewrites

    before = rewriter._DEFAULT_REWRITE_RULES
    assert any(not r._target_pattern.has_single_output_node for r in before)
    with _single_output_rewrites():
        during = rewriter._DEFAULT_REWRITE_RULES
        assert all(r._target_pattern.has_single_output_node for r in during)
        assert len(during) == len(before) - sum(not r._target_pattern.has_single_output_node for r in before)
    assert rewriter._DEFAULT_REWRITE_RULES is before
