"""MAT ONNX export: parity in ONNX Runtime (and OpenVINO for MAT-1) with both Bilinear PE samplers, and
a static, rank <= 4 graph: no Resize/Range/Mod (abstract tokens and sampling grids are initializers,
window pads are constants), GridSample only with the default sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from torch import nn

from edgevit import runtimes
from edgevit.artifact import ArtifactMetadata
from edgevit.exporters.onnx import OnnxExportOptions, export_onnx
from edgevit.models import create_model, get_model_card
from edgevit.models.mat import SAMPLERS
from edgevit.pipeline import export
from edgevit.verify import ParityReport, compare_outputs, seeded_inputs, verify_runner
from tests.models.test_mat import perturb_offsets

# 224: every map divides into 7x7 windows; 192x256 (non-square): stage 3 12x16 -> padded 14x21 (2x3
# windows), stage 4 6x8 -> 7x14 (1x2), so padding, cropping and both token resizes are exported.
SIZES = [(224, 224), (192, 256)]
BATCH = 2
RTOL = 1e-4
MAT_BLOCKS = {"mat-1": 12, "mat-2": 12, "mat-3": 16, "mat-4": 16, "mat-5": 16}
FORBIDDEN_OPS = {"Resize", "Range", "Mod", "Shape", "ConstantOfShape", "If", "Loop", "NonZero"}


def _model(name: str, sampler: str) -> nn.Module:
    return perturb_offsets(create_model(name, sampler=sampler))  # offsets of several pixels, some outside


def _export(model: nn.Module, name: str, size: tuple[int, int], path: Path) -> Path:
    card = get_model_card(name)
    meta = ArtifactMetadata(model=name, input_size=size, mean=card.mean, std=card.std, batch=BATCH,
                            output_names=tuple(model.output_names))
    return export_onnx(model, path, OnnxExportOptions(size, BATCH), meta)


def _ort_parity(model: nn.Module, path: Path, size: tuple[int, int]) -> ParityReport:
    reference, candidate = runtimes.load(model, input_size=size), runtimes.load(path, "onnxruntime")
    return verify_runner(reference, candidate, BATCH, size, rtol=RTOL)


def _check_graph(path: Path, name: str, size: tuple[int, int], sampler: str) -> None:
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    ops = Counter(n.op_type for n in proto.graph.node)
    assert not FORBIDDEN_OPS & set(ops), ops
    assert ops["GridSample"] == (3 if sampler == "grid_sample" else 0)
    assert ops["GatherElements"] == (0 if sampler == "grid_sample" else 12)
    padded = any((size[0] // s) % 7 or (size[1] // s) % 7 for s in (16, 32))
    assert ops["Pad"] == (MAT_BLOCKS[name] if padded else 0)
    values = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in values}
    ranks |= {t.name: len(t.dims) for t in proto.graph.initializer}
    assert len(ranks) > 1000 and max(ranks.values()) <= 4, {k: r for k, r in ranks.items() if r > 4}


@pytest.fixture(scope="module", params=[(s, size) for s in SAMPLERS for size in SIZES],
                ids=lambda p: f"{p[0]}-{p[1][0]}x{p[1][1]}")
def mat1_artifact(request, tmp_path_factory):
    sampler, size = request.param
    model = _model("mat-1", sampler)
    path = _export(model, "mat-1", size, tmp_path_factory.mktemp("mat1") / f"mat-1-{sampler}.onnx")
    return model, path, size, sampler


def test_mat1_onnxruntime_parity(mat1_artifact) -> None:
    model, path, size, sampler = mat1_artifact
    report = _ort_parity(model, path, size)
    print(f"[ort] mat-1 {size} {sampler}: {report.summary()}")
    assert report.passed and report.worst_rel <= RTOL, report.summary()
    assert report.top1_agreement == 1.0


def test_mat1_graph_is_static_and_rank4(mat1_artifact) -> None:
    _, path, size, sampler = mat1_artifact
    _check_graph(path, "mat-1", size, sampler)


def test_mat1_openvino_parity(mat1_artifact) -> None:
    ov = pytest.importorskip("openvino")
    model, path, size, _ = mat1_artifact
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = seeded_inputs(BATCH, size)
    reference = runtimes.load(model, input_size=size).run(x)
    result = compiled([x])
    candidate = {name: np.asarray(result[compiled.output(i)]) for i, name in enumerate(reference)}
    report = compare_outputs(reference, candidate, 0.0, RTOL)
    print(f"[openvino] mat-1 {size} {path.stem}: {report.summary()}")
    assert report.passed and report.worst_rel <= RTOL, report.summary()


@pytest.mark.slow
def test_pipeline_exports_features_only_backbone(tmp_path: Path) -> None:
    report = export("mat-1", "onnx", tmp_path / "mat-1-features.onnx", input_size="192x256", batch=BATCH,
                    features_only=True, rtol=RTOL)
    assert report.parity is not None and report.parity.passed, report.parity.summary()
    outputs = [o.name for o in onnx.load(str(report.path), load_external_data=False).graph.output]
    assert outputs == ["stage1", "stage2", "stage3", "stage4"]


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", ["mat-2", "mat-3", "mat-4", "mat-5"])
def test_larger_variants_onnxruntime_parity(name: str, size: tuple[int, int], sampler: str,
                                            tmp_path: Path) -> None:
    model = _model(name, sampler)
    path = _export(model, name, size, tmp_path / f"{name}.onnx")
    report = _ort_parity(model, path, size)
    print(f"[ort] {name} {size} {sampler}: {report.summary()}")
    assert report.passed and report.worst_rel <= RTOL, report.summary()
    _check_graph(path, name, size, sampler)
