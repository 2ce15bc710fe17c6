"""EMSNet ONNX export: parity in ONNX Runtime at 224 and at a non-square size, and a graph that TensorRT and
edge runtimes can take: no Col2Im (C-MHSA fold), no Gather-based im2col (unfold), no ScatterND (pooling
matrices), no adaptive pooling, ceil-mode-free MaxPool, static shapes and rank <= 4 tensors."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from edgevit import pipeline
from edgevit.exporters.tensorrt_ops import tensorrt_problems
from tests.conftest import export_verified

RTOL = 1e-4
NON_SQUARE = (160, 224)  # stage maps 40x56 .. 5x7: non-divisible pooling on one axis, odd C-MHSA grids
FORBIDDEN_OPS = {"Col2Im", "ScatterND", "ScatterElements", "Gather", "GatherND", "GatherElements", "Where",
                 "Loop", "If", "Scan", "NonZero", "Shape"}
BLOCKS = {"emsnet-xxtiny": 10, "emsnet-xtiny": 18, "emsnet-xtiny-c192": 18, "emsnet-tiny": 18}
WIDTHS = {"emsnet-xxtiny": (32, 64, 128, 192), "emsnet-xtiny": (32, 64, 96, 128),
          "emsnet-xtiny-c192": (32, 64, 96, 192), "emsnet-tiny": (64, 96, 128, 256)}


def _export(name: str, out_dir: Path, size: tuple[int, int] = (224, 224), batch: int = 1,
            features_only: bool = False) -> pipeline.ExportReport:
    return export_verified(name, out_dir, size, batch, features_only, RTOL)


def check_deployable_graph(path: Path, name: str) -> None:
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert not FORBIDDEN_OPS & set(ops), FORBIDDEN_OPS & set(ops)
    assert "Col2Im" not in ops and "ScatterND" not in ops
    assert tensorrt_problems(proto) == []
    # per block: 4 propagation transposed convs + the C-MHSA fold; 2 static max-pools
    assert ops.count("ConvTranspose") == 5 * BLOCKS[name]
    assert ops.count("MaxPool") == 2 * BLOCKS[name]
    for n in proto.graph.node:
        if n.op_type == "MaxPool":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs.get("ceil_mode", 0) == 0
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        assert all(d.HasField("dim_value") for d in dims), f"{vi.name} is not static"
        assert len(dims) <= 4, f"{vi.name} has rank {len(dims)}"


@pytest.fixture(scope="module")
def xxtiny_224(tmp_path_factory: pytest.TempPathFactory) -> pipeline.ExportReport:
    return _export("emsnet-xxtiny", tmp_path_factory.mktemp("emsnet_xxtiny"), (224, 224), batch=2)


def test_xxtiny_parity_at_224(xxtiny_224: pipeline.ExportReport) -> None:
    assert xxtiny_224.parity.worst_rel <= RTOL
    assert xxtiny_224.parity.top1_agreement == 1.0


def test_xxtiny_graph_is_deployable(xxtiny_224: pipeline.ExportReport) -> None:
    check_deployable_graph(xxtiny_224.path, "emsnet-xxtiny")


def _check_features(report: pipeline.ExportReport, name: str, size: tuple[int, int]) -> None:
    proto = onnx.load(str(report.path))
    assert [o.name for o in proto.graph.output] == ["stage1", "stage2", "stage3", "stage4"]
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output]
    assert shapes == [[1, c, size[0] // s, size[1] // s] for c, s in zip(WIDTHS[name], (4, 8, 16, 32))]
    check_deployable_graph(report.path, name)


def test_xxtiny_features_only_at_non_square_size(tmp_path: Path) -> None:
    report = _export("emsnet-xxtiny", tmp_path, NON_SQUARE, features_only=True)
    _check_features(report, "emsnet-xxtiny", NON_SQUARE)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["emsnet-xtiny", "emsnet-xtiny-c192", "emsnet-tiny"])
def test_larger_variants_match_pytorch_in_onnxruntime(name: str, tmp_path: Path) -> None:
    report = _export(name, tmp_path, (224, 224))
    assert report.parity.top1_agreement == 1.0
    check_deployable_graph(report.path, name)
    _check_features(_export(name, tmp_path, NON_SQUARE, features_only=True), name, NON_SQUARE)
