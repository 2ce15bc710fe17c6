"""DualFormer ONNX export: parity in ONNX Runtime, a static graph without scatter/gather by computed ids
or data-dependent shapes, and the LSH tie rule / empty groups holding in ONNX Runtime exactly as in the
direct reference formulation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgevit import pipeline
from edgevit.models import dualformer as df
from tests.conftest import export_verified
from tests.models.test_dualformer import _mhpa, reference_pool

RTOL = 1e-4
FORBIDDEN_OPS = {"ScatterND", "ScatterElements", "GatherElements", "GatherND", "NonZero", "Unique", "ArgMax",
                 "ArgMin", "TopK", "Loop", "If", "Scan", "Shape", "Size", "RandomNormal", "RandomUniform",
                 "RandomNormalLike", "RandomUniformLike", "Multinomial"}
MHPA_BLOCKS = {"dualformer-t": 10, "dualformer-xs": 10, "dualformer-s": 18, "dualformer-b": 50}
DOWNSAMPLED_BLOCKS = {"dualformer-t": 4, "dualformer-xs": 4, "dualformer-s": 8, "dualformer-b": 18}


def _export(name: str, out_dir: Path, size: tuple[int, int] = (224, 224), batch: int = 1,
            features_only: bool = False) -> pipeline.ExportReport:
    return export_verified(name, out_dir, size, batch, features_only, RTOL)


@pytest.fixture(scope="module")
def t_artifact(tmp_path_factory: pytest.TempPathFactory) -> pipeline.ExportReport:
    return _export("dualformer-t", tmp_path_factory.mktemp("dualformer_t"), batch=2)


def _constants(proto: onnx.ModelProto) -> set[str]:
    names = {i.name for i in proto.graph.initializer}
    return names | {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}


def check_static_partition_graph(path: Path, name: str) -> None:
    """No scatter/gather by computed ids, no data-dependent shapes, and the MHPA ops where expected."""
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert not FORBIDDEN_OPS & set(ops), FORBIDDEN_OPS & set(ops)
    consts = _constants(proto)
    for n in proto.graph.node:
        if n.op_type in ("Reshape", "Expand", "Tile", "Slice", "Pad", "ConstantOfShape", "Resize"):
            assert all(i in consts for i in n.input[1:] if i), f"{n.op_type} {n.name} takes a computed shape"
        if n.op_type == "Gather":
            assert n.input[1] in consts, f"Gather {n.name} has runtime indices"
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    for vi in [*inferred.graph.value_info, *inferred.graph.output]:
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), f"{vi.name} is not static"
    # one hash (GreaterOrEqual) and one one-hot (Equal) per MHPA; channel to spatial as DepthToSpace (CRD)
    assert ops.count("GreaterOrEqual") == MHPA_BLOCKS[name]
    assert ops.count("Equal") == MHPA_BLOCKS[name]
    d2s = [n for n in proto.graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == DOWNSAMPLED_BLOCKS[name]
    for n in d2s:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["blocksize"] == 2 and attrs.get("mode", b"DCR") == b"CRD"
    assert "BatchNormalization" not in ops  # every BN sits after a conv and is folded


def test_t_export_parity_at_224(t_artifact: pipeline.ExportReport) -> None:
    assert t_artifact.parity.worst_rel <= RTOL
    assert t_artifact.parity.top1_agreement == 1.0


def test_t_graph_is_static_without_scatter(t_artifact: pipeline.ExportReport) -> None:
    check_static_partition_graph(t_artifact.path, "dualformer-t")


def test_t_features_only_export_at_non_square_size(tmp_path: Path) -> None:
    report = _export("dualformer-t", tmp_path, size=(96, 160), features_only=True)
    proto = onnx.load(str(report.path))
    assert [o.name for o in proto.graph.output] == ["stage1", "stage2", "stage3", "stage4"]
    shapes = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in proto.graph.output]
    assert shapes == [[1, 64, 24, 40], [1, 128, 12, 20], [1, 256, 6, 10], [1, 320, 3, 5]]


class _PartitionCore(nn.Module):
    """The export form of one MHPA's partition step: one-hot A, proxies, and the per-token scatter back."""

    def __init__(self, m: df.PartitionAttention) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = df.lsh_partition(x, self.m.beta, self.m.powers, self.m.group_ids)
        intra, inter = df.partition_pool(x, t, a, self.m.imp)
        return a, intra, inter, a @ torch.cat((intra, inter), dim=-1)


def _run_core_in_ort(core: _PartitionCore, x: torch.Tensor, t: torch.Tensor, path: Path) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(core, (x, t), dynamo=True, opset_version=18, input_names=["x", "t"],
                                    output_names=["assign", "intra", "inter", "tokens"], verbose=False)
    onnx.save(program.model_proto, str(path))
    ops = {n.op_type for n in program.model_proto.graph.node}
    assert not FORBIDDEN_OPS & ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.numpy(), "t": t.numpy()})


def test_ties_and_empty_groups_in_onnxruntime_follow_the_reference(tmp_path: Path) -> None:
    m = _mhpa(64, 1)
    beta = torch.zeros(8, 8, 2)
    beta[:, 0, 0], beta[:, 1, 1] = 1.0, -1.0  # axis planes; -e_1 . x is -0.0 where x_1 == +0
    m.beta.copy_(beta)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 48, 8, generator=g)
    x[..., :2] = torch.randint(-1, 2, (2, 8, 48, 2), generator=g).float()  # many exact ties
    x[0, :, :6, :2] = 0.0
    x[1, :, :6, :2] = -0.0
    x[1, 3, :, 1] = -x[1, 3, :, 1].abs()  # head 3 of sample 1: bit 1 always set -> groups 0, 1 empty
    t = torch.randn(2, 8, 48, 8, generator=g)
    with torch.no_grad():
        gid, intra, inter, tokens = reference_pool(x, t, m.beta, m.imp, 4)
    assert (gid[:, :, :6] == 3).all() and set(gid[1, 3].unique().tolist()) <= {2, 3}
    got = _run_core_in_ort(_PartitionCore(m).eval(), x, t, tmp_path / "core.onnx")
    assert np.array_equal(got[0], torch.nn.functional.one_hot(gid, 4).float().numpy())  # identical groups
    for ours, ref in zip(got[1:], (intra, inter, tokens)):
        ref = ref.numpy()
        assert np.isfinite(ours).all()
        assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dualformer-xs", "dualformer-s", "dualformer-b"])
def test_larger_variants_match_pytorch_in_onnxruntime(name: str, tmp_path: Path) -> None:
    report = _export(name, tmp_path)
    assert report.parity.top1_agreement == 1.0
    check_static_partition_graph(report.path, name)
