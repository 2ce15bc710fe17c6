"""CPU-side TensorRT checks: every family's export uses only parser-supported operators, and engine
manifests refuse mismatched TensorRT versions and GPUs before anything is deserialised."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import edgevit
from edgevit import pipeline
from edgevit.errors import BackendUnavailableError, EdgevitError
from edgevit.exporters.tensorrt import EngineManifest, TensorRTBuildOptions, compatibility_problem
from edgevit.exporters.tensorrt_ops import SUPPORTED_OPS, tensorrt_problems
from edgevit.models import get_model_card


def smallest_variant_per_family() -> list[str]:
    first: dict[str, str] = {}
    for name in edgevit.list_models():
        first.setdefault(get_model_card(name).family, name)
    return list(first.values())


def small_size(name: str) -> int:
    card = get_model_card(name)
    m = card.input_multiple
    return max(card.min_input_size, 64 + (-64) % m)


# a2mamba-n (140 s) is slow: its decomposed scan and gathers use only ops listed for the other families too
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n.startswith("a2mamba") else n
                                  for n in smallest_variant_per_family()])
def test_exported_graph_only_uses_tensorrt_supported_ops(name: str, tmp_path: Path) -> None:
    out = pipeline.export(name, output=tmp_path / f"{name}.onnx", input_size=small_size(name), verify=False).path
    assert tensorrt_problems(onnx.load(str(out))) == []


def test_checker_flags_what_tensorrt_rejects() -> None:
    k = helper.make_tensor("k", TensorProto.INT64, [1], [5000])
    nodes = [helper.make_node("Col2Im", ["x", "s", "b"], ["y"]),
             helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0),
             helper.make_node("SelectiveScan", ["x"], ["z"], domain="edgevit")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[k])
    problems = tensorrt_problems(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    text = " | ".join(problems)
    assert "Col2Im is not supported" in text
    assert "TopK with sorted=0" in text and "below 3840" in text
    assert "custom op edgevit.SelectiveScan has no function body" in text
    assert "LayerNormalization" in SUPPORTED_OPS and "Col2Im" not in SUPPORTED_OPS


def manifest(**kw: str) -> EngineManifest:
    base = dict(tensorrt="10.15.1", gpu="NVIDIA H100", compute_capability="9.0", precision="fp16", input_name="input",
                min_shape=[1, 3, 224, 224], opt_shape=[8, 3, 224, 224], max_shape=[32, 3, 224, 224],
                outputs=["logits"])
    base.update(kw)
    return EngineManifest(**base)  # type: ignore[arg-type]


def test_engine_manifest_roundtrip_and_compatibility(tmp_path: Path) -> None:
    m = manifest()
    m.write(tmp_path / "e.json")
    assert EngineManifest.read(tmp_path / "e.json") == m
    assert compatibility_problem(m, "10.15.1", "NVIDIA H100", "9.0") is None
    assert "built with TensorRT 10.15.1, this machine has 10.3.0" in compatibility_problem(m, "10.3.0", "x", "9.0")
    msg = compatibility_problem(m, "10.15.1", "NVIDIA L4", "8.9")
    assert "built for NVIDIA H100 (sm_90), this GPU is NVIDIA L4 (sm_89)" in msg


def test_build_options_validate() -> None:
    with pytest.raises(EdgevitError, match="min-batch"):
        TensorRTBuildOptions(min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(EdgevitError, match="fp32 or fp16"):
        TensorRTBuildOptions(precision="int4")
    assert TensorRTBuildOptions(min_batch=1, opt_batch=8, max_batch=32).dynamic_batch


def test_tensorrt_export_without_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are present: the real build is tested in tests/runtimes/test_gpu.py")
    with pytest.raises((BackendUnavailableError, EdgevitError), match="TensorRT|tensorrt"):
        pipeline.export("s2aformer-mini", "tensorrt", tmp_path / "m.engine", input_size=64)
    assert not (tmp_path / "m.engine").exists()
