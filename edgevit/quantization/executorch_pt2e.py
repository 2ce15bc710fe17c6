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
from .float_rules import OUTPUT_REASON, GraphView, kept_in_float

# ONNX op type (the rules' vocabulary) -> the ATen ops torch.export writes for it.
ATEN_ALIASES: dict[str, frozenset[str]] = {
    "Conv": frozenset({"conv2d", "convolution"}),
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
}


def _aten_name(node: torch.fx.Node) -> str:
    """``aten.conv2d.default`` -> ``conv2d``; placeholders/outputs keep their op kind."""
    if node.op != "call_function":
        return node.op
    name = getattr(node.target, "__name__", str(node.target))  # e.g. "conv2d.default"
    return name.split(".")[0]


def fx_graph_view(graph: torch.fx.Graph) -> GraphView[torch.fx.Node]:
    """The keep-in-float rules' view of an exported FX graph (constants/parameters end a search)."""
    def inputs(node: torch.fx.Node) -> list[torch.fx.Node | None]:
        return [a if isinstance(a, torch.fx.Node) and a.op == "call_function" else None for a in node.all_input_nodes]

    return GraphView(nodes=list(graph.nodes), kind=_aten_name, name=lambda n: n.name, inputs=inputs,
                     aliases=ATEN_ALIASES)


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
            RuleAwareQuantizer.kept = kept_in_float(fx_graph_view(gm.graph), rules)
            outputs = {a.name for n in gm.graph.nodes if n.op == "output"
                       for a in n.all_input_nodes}  # the logits' producer stays float, as in ONNX
            for node in gm.graph.nodes:
                if node.name in outputs and node.op == "call_function":
                    RuleAwareQuantizer.kept.setdefault(node.name, OUTPUT_REASON)
                if node.name in RuleAwareQuantizer.kept:
                    node.meta.pop("quantization_annotation", None)
            return gm

    quantizer = RuleAwareQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    example = (torch.from_numpy(samples[0]),)
    with torch.no_grad():
        graph = torch.export.export(model.eval(), example).module()
        prepared: Any = prepare_pt2e(graph, quantizer)
        for batch in samples:
            prepared(torch.from_numpy(batch))
        converted = convert_pt2e(prepared)
    return converted, dict(RuleAwareQuantizer.kept)
