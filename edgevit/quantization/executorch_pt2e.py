"""INT8 for ExecuTorch's XNNPACK delegate: PT2E post-training quantization with the XNNPACK quantizer.

The same calibration source (:mod:`edgevit.quantization.calibration`) and the same per-family
keep-in-float rules (:mod:`edgevit.models.int8_rules`) as the ONNX and OpenVINO paths: the rules are
applied to the exported FX graph (ATen op names mapped from the rules' ONNX names) and the quantizer's
annotations are removed from the nodes they keep in float, so those nodes run in fp32.

The result is the quantized ``torch.fx.GraphModule`` (quantize/dequantize pairs around XNNPACK-ready
ops); lowering it to a ``.pte`` (``torch.export`` -> ``to_edge_transform_and_lower`` with the XNNPACK
partitioner -> ``to_executorch``) is the ExecuTorch format row's job. Needs ``executorch`` (which brings
``torchao``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailableError
from ..models.int8_rules import KeepFloat
from .float_rules import GROUP_CONV, OUTPUT_REASON, GraphView, kept_in_float
from .fx_bn_fold import fold_batch_norms

# ONNX op type (the rules' vocabulary) -> the ATen ops torch.export writes for it.
ATEN_ALIASES: dict[str, frozenset[str]] = {
    "Conv": frozenset({"conv2d", "convolution", "group_conv2d"}),
    GROUP_CONV: frozenset({"group_conv2d"}),
    "ConvTranspose": frozenset({"conv_transpose2d"}),
    "MatMul": frozenset({"matmul", "bmm", "mm", "linear"}),
    "Gemm": frozenset({"linear", "addmm"}),
    "Softmax": frozenset({"softmax", "_softmax"}),
    "LayerNormalization": frozenset({"layer_norm", "native_layer_norm"}),
    "BatchNormalization": frozenset({"batch_norm", "_native_batch_norm_legit_no_training"}),
    "GroupNormalization": frozenset({"group_norm"}),
    "InstanceNormalization": frozenset({"instance_norm"}),
    "GridSample": frozenset({"grid_sampler", "grid_sampler_2d"}),
    "TopK": frozenset({"topk"}),
    "Exp": frozenset({"exp"}),
    "CumSum": frozenset({"cumsum"}),
    "Softplus": frozenset({"softplus"}),
    "GreaterOrEqual": frozenset({"ge"}),
    "Greater": frozenset({"gt"}),
    "Pad": frozenset({"pad", "constant_pad_nd"}),
}

# What XNNPACK itself cannot run, kept float in every family on top of the family's precision rules: a pad that
# reads int8 values and writes float fails when the program loads ("Failed to create StaticConstantPad node":
# xnn_status_invalid_parameter; a2mamba-n at 224, whose scan pads its chunks and shifts its carried states).
# The ops feeding a pad (2 hops) stay float instead.
XNNPACK_CONSTRAINTS: tuple[KeepFloat, ...] = (
    KeepFloat("producers", ("Pad",), "XNNPACK cannot create a pad reading int8 values and writing float", hops=2),
)


def _aten_name(node: torch.fx.Node) -> str:
    """``aten.conv2d.default`` -> ``conv2d``; placeholders/outputs keep their op kind."""
    if node.op != "call_function":
        return node.op
    name = getattr(node.target, "__name__", str(node.target))  # e.g. "conv2d.default"
    return name.split(".")[0]


# FX ops the ONNX graph does not have (fp32 dtype no-ops, memory-layout copies): they are looked through, so a
# rule's ``hops`` count the same ops in the FX graph as in the ONNX graph it was written against
# (partialformer-b0: ``to``/``contiguous`` put the context score's nearest conv 9 hops from TopK, not 7).
TRANSPARENT = frozenset({"to", "_to_copy", "contiguous", "clone", "alias", "detach"})


def fx_graph_view(graph: torch.fx.Graph) -> GraphView[torch.fx.Node]:
    """The keep-in-float rules' view of an exported FX graph (constants/parameters end a search)."""
    def producer(a: object) -> torch.fx.Node | None:
        while isinstance(a, torch.fx.Node) and a.op == "call_function" and _aten_name(a) in TRANSPARENT:
            a = a.all_input_nodes[0] if a.all_input_nodes else None
        return a if isinstance(a, torch.fx.Node) and a.op == "call_function" else None

    def inputs(node: torch.fx.Node) -> list[torch.fx.Node | None]:
        return [producer(a) for a in node.all_input_nodes]

    return GraphView(nodes=[n for n in graph.nodes if n.op == "call_function"], kind=_rule_kind,
                     name=lambda n: n.name, inputs=inputs, aliases=ATEN_ALIASES)


# where ``groups`` sits in the positional arguments of each ATen convolution
_GROUPS_ARG = {"conv2d": 6, "convolution": 8}


def _rule_kind(node: torch.fx.Node) -> str:
    """The ATen name, with a convolution of ``groups > 1`` named ``group_conv2d`` (the rules' GroupConv)."""
    kind = _aten_name(node)
    index = _GROUPS_ARG.get(kind)
    if index is not None and len(node.args) > index and isinstance(node.args[index], int) and node.args[index] > 1:
        return "group_conv2d"
    return kind


def _drop_orphaned_sharing(graph: torch.fx.Graph) -> None:
    """Unannotate every node whose quantization spec shares its parameters with a node left unannotated.

    Why: XNNPACK's quantizer lets layout ops (permute, reshape, cat ...) share the qparams of their producer
    (``SharedQuantizationSpec``); once a kept-float producer loses its annotation, ``prepare_pt2e`` fails on the
    dangling reference (``KeyError: linear_3`` on partialformer-b0). Those followers carry no arithmetic, so
    they simply stay float with their producer; repeated until no reference dangles.
    """
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    def refers_to_unannotated(spec: object) -> bool:
        if not isinstance(spec, SharedQuantizationSpec):
            return False
        target = spec.edge_or_node
        nodes = target if isinstance(target, tuple) else (target,)
        return any("quantization_annotation" not in n.meta for n in nodes
                   if isinstance(n, torch.fx.Node) and n.op == "call_function")

    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            ann = node.meta.get("quantization_annotation")
            if ann is None:
                continue
            specs = [*ann.input_qspec_map.values(), ann.output_qspec]
            if any(refers_to_unannotated(s) for s in specs):
                node.meta.pop("quantization_annotation")
                changed = True


def quantize_xnnpack(model: nn.Module, samples: Sequence[np.ndarray],
                     rules: Sequence[KeepFloat]) -> tuple[torch.fx.GraphModule, dict[str, str]]:
    """PT2E static INT8 of ``model`` for XNNPACK (per-channel symmetric int8 weights, int8 activations),
    calibrated on ``samples`` (whole input batches); returns the converted module and what stayed float."""
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise BackendUnavailableError("ExecuTorch int8 needs executorch: pip install executorch") from exc

    class RuleAwareQuantizer(XNNPACKQuantizer):  # type: ignore[misc]
        """XNNPACK's annotations, minus those on the nodes the family keeps in float."""

        kept: dict[str, str] = {}

        def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
            gm = super().annotate(gm)
            RuleAwareQuantizer.kept = kept_in_float(fx_graph_view(gm.graph), (*rules, *XNNPACK_CONSTRAINTS),
                                                    arithmetic_quantized=True)
            outputs = {a.name for n in gm.graph.nodes if n.op == "output"
                       for a in n.all_input_nodes}  # the logits' producer stays float, as in ONNX
            for node in gm.graph.nodes:
                if node.name in outputs and node.op == "call_function":
                    RuleAwareQuantizer.kept.setdefault(node.name, OUTPUT_REASON)
                if node.name in RuleAwareQuantizer.kept:
                    node.meta.pop("quantization_annotation", None)
            _drop_orphaned_sharing(gm.graph)
            return gm

    quantizer = RuleAwareQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    example = (torch.from_numpy(samples[0]),)
    with torch.no_grad():
        graph = torch.export.export(model.eval(), example).module()
        fold_batch_norms(graph)  # before prepare_pt2e, whose own conv-BN fold drops BN chains (see fx_bn_fold)
        prepared: Any = prepare_pt2e(graph, quantizer)
        for batch in samples:
            prepared(torch.from_numpy(batch))
        converted = convert_pt2e(prepared)
    return converted, dict(RuleAwareQuantizer.kept)
