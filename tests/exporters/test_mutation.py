"""Mutation test of edgevit's verification (issue 19): change one node of an exported ONNX graph (an
attribute flip or an op swap that keeps every shape) and ``verify`` must reject the mutant, in ONNX
Runtime and in OpenVINO f32.

Each family's smallest variant is exported at 64x64 (batch 1) with its reference weights. A mutant is
*killed* when verification reports a failure (or the runtime refuses the graph); a *survivor* fails the
test, unless it is listed in ``EQUIVALENT`` with the argument why the changed graph computes the same
function. The fast tests mutate the first, middle and last occurrence of each mutable op kind of one
list of kinds per family (every family's export-friendly ops) for A2Mamba and MAT; ``-m slow`` adds the
other families and mutates every occurrence of every mutable kind.
Run with ``-rP`` for the per-family table (tried / killed / excluded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from edgevit import pipeline, runtimes
from edgevit.runtimes.base import Runner
from edgevit.verify import verify_runner

SIZE = (64, 64)
RTOL = 1e-4
FAMILIES = ("s2aformer-mini", "mat-1", "a2mamba-n", "dualformer-t", "partialformer-b0", "emsnet-xxtiny")


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

# The export-friendly ops of each family first: the fast test mutates these kinds (first/middle/last).
FAST_KINDS: dict[str, tuple[str, ...]] = {
    "s2aformer-mini": ("Softmax", "Sigmoid", "LayerNormalization", "ReduceMean", "Add", "Mul"),
    "mat-1": ("GridSample", "Softmax", "LayerNormalization", "Add", "Mul", "Erf"),
    "a2mamba-n": ("CumSum", "Softplus", "Exp", "Where", "Softmax", "LayerNormalization", "Sigmoid", "Mul"),
    "dualformer-t": ("GreaterOrEqual", "ReduceMax", "DepthToSpace", "Sigmoid", "Exp", "Where", "Div",
                     "LayerNormalization"),
    "partialformer-b0": ("TopK", "CumSum", "ScatterElements", "Floor", "ReduceMean", "Softmax",
                         "LayerNormalization", "Greater"),
    "emsnet-xxtiny": ("MaxPool", "AveragePool", "Softmax", "Sigmoid", "ReduceMean", "Sub", "Erf"),
}

# (family, op kind, mutation) -> why the mutant computes the same function as the original graph.
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("dualformer-t", "GreaterOrEqual", "->Greater"):
        "LSH bits differ only where beta . x == 0 exactly, which a continuous fp32 projection of seeded "
        "normal inputs never hits (the tie rule itself is tested with constructed ties in "
        "test_dualformer_onnx.py)",
    ("dualformer-t", "GreaterOrEqual", "->LessOrEqual"):
        "negating every bit of one hyperplane renames the partitions (code k <-> k xor 2^b): MHPA pools, "
        "weighs (one importance MLP shared by all groups, normalised over groups) and scatters per "
        "partition, so it is invariant to partition labels; differs only on exact zeros, as above",
    ("dualformer-t", "Where", "swap branches"):
        "both Where kinds of MHPA only pick the per-group stabiliser c_k of the segment softmax "
        "e = exp(x - c_k) (group max, or 0 for empty groups); swapped, c_k becomes 0 or the max over the "
        "other groups' tokens, still one finite constant per (group, channel), and intra = sum(e t) / sum(e) "
        "is invariant to it; differs only by exp overflow/underflow (|x| ~ 1 here) or when one group holds "
        "every token. Measured 2.6e-6..3.2e-6 relative, rounding level",
    ("partialformer-b0", "Floor", "->Ceil"):
        "ceil(s) = floor(s) + 1 for every non-integer score, a constant shift of all scores of a block, "
        "which TopK and the tie rule ignore; it differs only for scores exactly on the 2^-10 grid",
}


# NOT equivalent, and still accepted by verification: open gaps of the reference weights (issue 19), listed
# so that any *other* survivor fails the test, and so that fixing one of these fails it too (update here).
# (family, op, "last", mutation): the last CumSum/Exp of A2Mamba-N at 64x64 form the carry decay
# exp(cumsum(a)) * carry_in of the last stage-3 scan (L = 16, two chunks of 8); its effect on the logits
# measured 1e-6..7e-5 relative, below the 1e-4 tolerance.
KNOWN_WEAK: dict[tuple[str, str, str, str], str] = {
    ("a2mamba-n", "CumSum", "last", "exclusive"): "last scan's carry decay, 1.2e-6 relative",
    # EMSNet's last C-MHSA softmax runs over a 2x2 map at 64x64, so changing its axis moves the logits by only
    # 1.8e-6 (measured): verified only at larger inputs
    ("emsnet-xxtiny", "Softmax", "last", "axis"): "tiny last-stage attention map at 64x64, 1.8e-6 relative",
    # PartialFormer's CumSum ranks tokens *tied* at the k-th score; verification's seeded normal input has
    # no tie at the N_F boundary, so the tie path is not exercised (1.05e-6): it is covered only by the
    # constructed ties of test_partialformer_onnx.py (test_selection_ties_in_onnxruntime, tied images)
    **{("partialformer-b0", "CumSum", occ, mut): "tie rank unused without a boundary tie"
       for occ in ("0", "8", "last") for mut in ("exclusive", "reverse")},
}


@dataclass
class Mutant:
    family: str
    op: str
    occurrence: int
    total: int
    mutation: str
    mutate: Callable[[onnx.NodeProto], None]

    @property
    def key(self) -> tuple[str, str, str]:
        return self.family, self.op, self.mutation

    @property
    def weak_key(self) -> tuple[str, str, str, str]:
        return self.family, self.op, "last" if self.occurrence == self.total - 1 else str(self.occurrence), \
            self.mutation

    def label(self) -> str:
        return f"{self.op}#{self.occurrence + 1}/{self.total} {self.mutation}"


@functools.lru_cache(maxsize=None)
def _artifact(name: str, out_dir: str) -> Path:
    path = Path(out_dir) / f"{name}.onnx"
    report = pipeline.export(name, "onnx", path, input_size=SIZE, batch=1, rtol=RTOL)
    assert report.parity is not None and report.parity.passed
    return path


class _CachedReference:
    """The PyTorch reference runner, run once per input (verify_runner feeds every mutant the same batch)."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._cache: dict[bytes, dict[str, np.ndarray]] = {}
        self.inputs, self.metadata, self.info = runner.inputs, runner.metadata, runner.info

    def run(self, x):  # noqa: ANN001
        key = np.asarray(x).tobytes()
        if key not in self._cache:
            self._cache[key] = self._runner.run(x)
        return self._cache[key]


@functools.lru_cache(maxsize=None)
def _reference(name: str) -> _CachedReference:
    from edgevit.models import create_model

    return _CachedReference(runtimes.load(create_model(name), input_size=SIZE))


def mutants(name: str, proto: onnx.ModelProto, kinds: tuple[str, ...] | None) -> list[Mutant]:
    """First, middle and last occurrence of each kind (``kinds=None``: every kind, every occurrence)."""
    by_op: dict[str, list[int]] = {}
    for i, node in enumerate(proto.graph.node):
        by_op.setdefault(node.op_type, []).append(i)
    out = []
    for op in (kinds if kinds is not None else sorted(set(by_op) & set(MUTATIONS))):
        nodes = by_op.get(op, [])
        assert nodes or kinds is None, f"{name} has no {op} node to mutate"
        picks = range(len(nodes)) if kinds is None else sorted({0, len(nodes) // 2, len(nodes) - 1})
        for k in picks:
            for mutation, mutate in MUTATIONS[op]:
                out.append(Mutant(name, op, k, len(nodes), mutation, mutate))
    return out


def _node_index(proto: onnx.ModelProto, op: str, occurrence: int) -> int:
    return [i for i, n in enumerate(proto.graph.node) if n.op_type == op][occurrence]


def rejected(name: str, artifact: Path, mutant: Mutant, out_dir: Path, backend: str) -> tuple[bool, str]:
    proto = onnx.load(str(artifact))
    mutant.mutate(proto.graph.node[_node_index(proto, mutant.op, mutant.occurrence)])
    path = out_dir / f"{name}-mutant.onnx"
    onnx.save(proto, str(path))
    try:
        options = {"precision": "f32"} if backend == "openvino" else {}
        report = verify_runner(_reference(name), runtimes.load(path, backend, **options), 1, SIZE, rtol=RTOL)  # type: ignore[arg-type]
    except Exception as exc:  # a runtime that refuses the mutated graph rejects it too
        return True, f"refused ({type(exc).__name__})"
    return not report.passed, f"max rel {report.worst_rel:.2e}"


def _run(name: str, kinds: tuple[str, ...] | None, backend: str, tmp_path: Path,
         tmp_path_factory: pytest.TempPathFactory) -> None:
    artifact = _artifact(name, str(tmp_path_factory.getbasetemp()))
    all_mutants = mutants(name, onnx.load(str(artifact)), kinds)
    survivors, killed, excluded, known = [], 0, 0, []
    for m in all_mutants:
        if m.key in EQUIVALENT:
            excluded += 1
            print(f"  {name} {backend} {m.label():40s} EXCLUDED (equivalent: {EQUIVALENT[m.key][:60]}...)")
            continue
        dead, how = rejected(name, artifact, m, tmp_path, backend)
        killed += dead
        print(f"  {name} {backend} {m.label():40s} {'killed' if dead else 'SURVIVED'} ({how})")
        if m.weak_key in KNOWN_WEAK:
            known.append((m.weak_key, dead))
        elif not dead:
            survivors.append(f"{m.label()} ({how})")
    print(f"{name} {backend}: tried {len(all_mutants)}, killed {killed}, excluded {excluded}, "
          f"known weak {sum(not d for _, d in known)}, other survivors {len(survivors)}")
    assert not survivors, f"{name}: verification in {backend} accepted mutants: {survivors}"
    assert not [k for k, dead in known if dead], "a KNOWN_WEAK mutant is now killed: remove it from the list"


def _families(fast: tuple[str, ...]) -> list:
    """Exports dominate the cost (~20-60 s each): the fast suite mutates the families whose ops passed
    verification before the reference weights (A2Mamba's scan, MAT's sampler); the rest run with -m slow."""
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in FAMILIES]


@pytest.mark.parametrize("name", _families(("a2mamba-n", "mat-1")))
def test_verify_rejects_single_node_mutants_in_onnxruntime(name: str, tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    _run(name, FAST_KINDS[name], "onnxruntime", tmp_path, tmp_path_factory)


@pytest.mark.parametrize("name", _families(("a2mamba-n",)))
def test_verify_rejects_single_node_mutants_in_openvino(name: str, tmp_path: Path,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("openvino")
    _run(name, FAST_KINDS[name][:3], "openvino", tmp_path, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("name", FAMILIES)
def test_verify_rejects_every_single_node_mutant(name: str, backend: str, tmp_path: Path,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    if backend == "openvino":
        pytest.importorskip("openvino")
    _run(name, None, backend, tmp_path, tmp_path_factory)
