"""Apply a family's keep-in-float rules (:mod:`edgevit.models.int8_rules`) to a concrete graph.

One interpreter for every quantizer: an exporter describes its graph with a :class:`GraphView` (how to
list nodes, read an op type, a name and the producer of each input) and gets back the names of the nodes
to leave in float, each with the rule's reason, ready for ONNX Runtime's ``nodes_to_exclude`` or NNCF's
``IgnoredScope``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..models.int8_rules import KeepFloat

N = TypeVar("N")

# What the quantizers turn into integer kernels, in ONNX names: every other op already runs in float.
QUANTIZABLE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})

# The rules' one name that is not an ONNX op type: a Conv with ``group > 1`` (depth-wise or grouped), which
# each view tells apart from a dense Conv; "Conv" in a rule or in QUANTIZABLE still means both.
GROUP_CONV = "GroupConv"

OUTPUT_REASON = "produces a graph output (logits stay float)"  # why every format keeps the logits float


@dataclass(frozen=True)
class GraphView(Generic[N]):
    """A graph as the rules see it. ``inputs(node)`` is the producer of each input, ``None`` for a constant
    or a graph input; ``aliases`` maps an ONNX op type to this graph's names for it (OpenVINO: Conv ->
    Convolution/GroupConvolution)."""

    nodes: Sequence[N]
    kind: Callable[[N], str]
    name: Callable[[N], str]
    inputs: Callable[[N], list[N | None]]
    aliases: Mapping[str, frozenset[str]]

    def types(self, onnx_types: Iterable[str]) -> set[str]:
        return {t for o in onnx_types for t in self.aliases.get(o, frozenset({o}))}


def kept_in_float(graph: GraphView[N], rules: Sequence[KeepFloat],
                  arithmetic_quantized: bool = False) -> dict[str, str]:
    """Node name -> reason, for every node the rules keep in float (first matching rule's reason).

    ``arithmetic_quantized``: the quantizer gives elementwise arithmetic int8 ranges too (XNNPACK's adds, muls
    and means). Then ``arithmetic`` rules apply, and a ``producers`` rule also keeps the ops between its target
    and the quantizable producers it finds: otherwise the value it protects, e.g. PartialFormer's context
    score ``floor(mean(x + cpe(x)) * 1/grid)``, is still computed from int8 operands. ONNX Runtime and NNCF
    quantize only Conv/MatMul here, so those ops are float there anyway."""
    quantizable = graph.types(QUANTIZABLE)
    consumers: dict[str, list[N]] = defaultdict(list)
    for node in graph.nodes:
        for producer in graph.inputs(node):
            if producer is not None:
                consumers[graph.name(producer)].append(node)
    keep: dict[str, str] = {}
    for rule in rules:
        if rule.kind == "arithmetic":
            if arithmetic_quantized:
                for node in graph.nodes:
                    if graph.kind(node) not in quantizable:
                        keep.setdefault(graph.name(node), rule.describe())
            continue
        targets = graph.types(rule.op_types)
        for node in graph.nodes:
            if graph.kind(node) not in targets:
                continue
            if rule.kind == "op":
                found: list[N] = [node]
            elif rule.kind == "producers":
                ports = graph.inputs(node)
                start = ports if rule.input is None else ports[rule.input:rule.input + 1]
                found, between = _nearest(graph, start, graph.inputs, quantizable, rule.hops)
                if arithmetic_quantized:
                    found += between
            else:
                found, _ = _nearest(graph, consumers[graph.name(node)], lambda n: consumers[graph.name(n)],
                                    quantizable, rule.hops)
            for hit in found:
                keep.setdefault(graph.name(hit), rule.describe())
    return keep


def _nearest(graph: GraphView[N], start: Iterable[N | None], step: Callable[[N], Iterable[N | None]],
             kinds: set[str], hops: int) -> tuple[list[N], list[N]]:
    """The first nodes of ``kinds`` met on every path from ``start`` (following ``step``), ``hops`` deep, and
    the other nodes passed on the way."""
    found: list[N] = []
    between: list[N] = []
    seen: set[str] = set()
    frontier = [n for n in start if n is not None]
    for _ in range(hops):
        nxt: list[N] = []
        for n in frontier:
            key = graph.name(n)
            if key in seen:
                continue
            seen.add(key)
            if graph.kind(n) in kinds:
                found.append(n)
            else:
                between.append(n)
                nxt.extend(p for p in step(n) if p is not None)
        frontier = nxt
    return found, between
