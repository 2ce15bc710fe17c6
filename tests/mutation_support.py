"""Single-node mutations of an exported ONNX graph (issue 19), shared by the mutation test
(``tests/exporters/test_mutation.py``, smallest variants at 64x64) and the family tests that check a
mutant on an export they already make at the default size (no second export)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import helper

from edgevit import pipeline


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _get_attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _flip(name: str, default: int) -> Callable[[onnx.NodeProto], None]:
    return lambda n: _set_attr(n, name, 1 - int(_get_attr(n, name, default)))  # type: ignore[arg-type]


def _swap_op(new_type: str, keep_attrs: bool = False) -> Callable[[onnx.NodeProto], None]:
    def mutate(n: onnx.NodeProto) -> None:
        n.op_type = new_type
        if not keep_attrs:
            del n.attribute[:]
    return mutate


def _swap_inputs(i: int, j: int) -> Callable[[onnx.NodeProto], None]:
    def mutate(n: onnx.NodeProto) -> None:
        n.input[i], n.input[j] = n.input[j], n.input[i]
    return mutate


def _softmax_other_axis(n: onnx.NodeProto) -> None:
    _set_attr(n, "axis", -2 if int(_get_attr(n, "axis", -1)) == -1 else -1)  # type: ignore[arg-type]


def _grid_sample_mode(n: onnx.NodeProto) -> None:
    _set_attr(n, "mode", "nearest")


def _depth_to_space_mode(n: onnx.NodeProto) -> None:
    _set_attr(n, "mode", "DCR" if _get_attr(n, "mode", b"DCR") in ("CRD", b"CRD") else "CRD")


def _scatter_add(n: onnx.NodeProto) -> None:
    _set_attr(n, "reduction", "add")


# op kind -> [(mutation name, mutate(node))]; every mutation keeps the node's output shape and dtype
MUTATIONS: dict[str, list[tuple[str, Callable[[onnx.NodeProto], None]]]] = {
    "CumSum": [("exclusive", _flip("exclusive", 0)), ("reverse", _flip("reverse", 0))],
    "Softplus": [("->Relu", _swap_op("Relu"))],
    "Log": [("->Sqrt", _swap_op("Sqrt"))],
    "GridSample": [("mode=nearest", _grid_sample_mode), ("align_corners", _flip("align_corners", 0))],
    "Softmax": [("axis", _softmax_other_axis)],
    "TopK": [("largest=0", _flip("largest", 1))],
    "Sigmoid": [("->HardSigmoid", _swap_op("HardSigmoid"))],
    "Tanh": [("->Sigmoid", _swap_op("Sigmoid"))],
    "Add": [("->Sub", _swap_op("Sub"))],
    "Sub": [("->Add", _swap_op("Add"))],
    "Mul": [("->Add", _swap_op("Add"))],
    "Div": [("->Mul", _swap_op("Mul"))],
    "Exp": [("->Softplus", _swap_op("Softplus"))],
    "Erf": [("->Tanh", _swap_op("Tanh"))],
    "Relu": [("->Abs", _swap_op("Abs"))],
    "ReduceMean": [("->ReduceMax", _swap_op("ReduceMax", keep_attrs=True))],
    "ReduceMax": [("->ReduceMean", _swap_op("ReduceMean", keep_attrs=True))],
    "ReduceSum": [("->ReduceMean", _swap_op("ReduceMean", keep_attrs=True))],
    "MaxPool": [("->AveragePool", _swap_op("AveragePool", keep_attrs=True))],
    "AveragePool": [("->MaxPool", _swap_op("MaxPool", keep_attrs=True))],
    "LayerNormalization": [("scale<->bias", _swap_inputs(1, 2))],
    "Where": [("swap branches", _swap_inputs(1, 2))],
    "GreaterOrEqual": [("->Greater", _swap_op("Greater")), ("->LessOrEqual", _swap_op("LessOrEqual"))],
    "Greater": [("->Less", _swap_op("Less"))],
    "Floor": [("->Ceil", _swap_op("Ceil"))],
    "DepthToSpace": [("mode", _depth_to_space_mode)],
    "ScatterElements": [("reduction=add", _scatter_add)],
    "HardSwish": [("->Relu", _swap_op("Relu"))],
}


def node_index(proto: onnx.ModelProto, op: str, occurrence: int) -> int:
    """Index in ``proto.graph.node`` of the ``occurrence``-th node of kind ``op`` (negative: from the end)."""
    return [i for i, n in enumerate(proto.graph.node) if n.op_type == op][occurrence]


def write_mutant(artifact: Path, op: str, occurrence: int, mutate: Callable[[onnx.NodeProto], None],
                 out: Path) -> Path:
    """A copy of ``artifact`` (metadata included) with one node changed."""
    proto = onnx.load(str(artifact))
    mutate(proto.graph.node[node_index(proto, op, occurrence)])
    onnx.save(proto, str(out))
    return out


def verify_rejects(artifact: Path, op: str, occurrence: int, mutation: str, out_dir: Path,
                   backend: str) -> tuple[bool, str]:
    """Whether ``edgevit verify`` (the user's path: reference rebuilt from the artifact's metadata) rejects
    the artifact with one mutation applied; a runtime that refuses the mutated graph rejects it too."""
    mutate = dict(MUTATIONS[op])[mutation]
    path = write_mutant(artifact, op, occurrence, mutate, out_dir / f"mutant-{op}-{occurrence}.onnx")
    try:
        report = pipeline.verify(None, path, backend=backend)
    except Exception as exc:  # noqa: BLE001 - any refusal of the graph is a rejection
        return True, f"refused ({type(exc).__name__})"
    return not report.passed, f"max rel {report.worst_rel:.2e}"
