"""The families' keep-in-float rules: declared for every family, shown by `edgevit info`, and applied to a
graph exactly (the op itself, the producers of one input, the consumers)."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

import edgevit
from edgevit.cli import app
from edgevit.models.int8_rules import FAMILY_RULES, KeepFloat, keep_float_rules
from edgevit.quantization.onnx_qdq import OUTPUT_REASON, float_nodes, name_nodes


def _toy() -> onnx.ModelProto:
    """feature = Conv(x); offset = Conv(x) -> Add -> GridSample(feature, grid); score = MatMul(flat) -> TopK;
    decay = Exp(flat) -> Mul -> MatMul; Softmax; the output comes from a Gemm."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["feature"], name="feature_conv"),
        n("Conv", ["x", "w2"], ["offset"], name="offset_conv"),
        n("Transpose", ["offset"], ["offset_t"], perm=[0, 2, 3, 1], name="t"),
        n("Add", ["offset_t", "base"], ["grid"], name="add_base"),
        n("GridSample", ["feature", "grid"], ["sampled"], name="sampler"),
        n("Flatten", ["sampled"], ["flat"], name="flatten"),
        n("MatMul", ["flat", "proj"], ["score"], name="score_matmul"),
        n("TopK", ["score", "k"], ["vals", "idx"], name="topk"),
        n("Exp", ["flat"], ["e"], name="exp"),
        n("Mul", ["e", "mask"], ["em"], name="mask_mul"),
        n("MatMul", ["em", "proj"], ["mixed"], name="decay_matmul"),
        n("MatMul", ["flat", "proj"], ["other"], name="plain_matmul"),
        n("Softmax", ["other"], ["prob"], name="softmax"),
        n("Gemm", ["prob", "head"], ["logits"], name="head"),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", f, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("logits", f, None),
                               helper.make_tensor_value_info("vals", f, None)])
    return helper.make_model(graph)


def test_rules_select_exactly_the_declared_nodes() -> None:
    rules = (
        KeepFloat("op", ("Softmax",), "probabilities"),
        KeepFloat("producers", ("GridSample",), "coordinates", input=1),
        KeepFloat("producers", ("TopK",), "score", input=0),
        KeepFloat("consumers", ("Exp",), "decay", hops=3),
    )
    keep = float_nodes(_toy(), rules)
    assert keep == {"softmax": "Softmax: probabilities",
                    "offset_conv": "ops computing GridSample (input 1): coordinates",
                    "score_matmul": "ops computing TopK (input 0): score",
                    "decay_matmul": "ops reading Exp: decay",
                    "head": OUTPUT_REASON}
    # the sampled features' conv and the plain MatMul are quantized
    assert "feature_conv" not in keep and "plain_matmul" not in keep


def test_consumer_search_stops_after_its_hops() -> None:
    assert "decay_matmul" not in float_nodes(_toy(), (KeepFloat("consumers", ("Exp",), "d", hops=1),))
    assert "decay_matmul" in float_nodes(_toy(), (KeepFloat("consumers", ("Exp",), "d", hops=2),))


def test_unnamed_nodes_get_unique_names() -> None:
    model = _toy()
    for node in model.graph.node[:3]:
        node.name = ""
    model.graph.node[3].name = "Transpose_2"  # the name an unnamed node would get
    name_nodes(model)
    names = [node.name for node in model.graph.node]
    assert all(names) and len(set(names)) == len(names)


def test_every_registered_family_declares_its_rules() -> None:
    families = {edgevit.get_model_card(n).family for n in edgevit.list_models()}
    assert families <= set(FAMILY_RULES)
    assert {"TopK"} <= {t for r in keep_float_rules("PartialFormer") if r.kind == "producers" for t in r.op_types}
    with pytest.raises(KeyError, match="no INT8 keep-in-float rules"):
        keep_float_rules("NoSuchFamily")


def test_info_shows_the_rules() -> None:
    res = CliRunner().invoke(app, ["info", "mat-1", "--input-size", "64", "--json"])
    assert res.exit_code == 0, res.output
    rules = json.loads(res.output)["int8_keep_float"]
    assert {"kind": "producers", "op_types": ["GridSample"], "input": 1}.items() <= next(
        r for r in rules if r["kind"] == "producers").items()


def test_group_conv_rules_tell_depthwise_from_dense_convolutions() -> None:
    """DualFormer's rule: depth-wise convs, and the convs reading one directly, stay float; dense convs and a
    conv behind an activation are quantized. ``Conv`` still names both kinds (the output's producer rule)."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w_dw"], ["dw"], group=2, name="depthwise"),
        n("Conv", ["dw", "w_pw"], ["pw"], name="pointwise_after_dw"),
        n("Relu", ["dw"], ["act"], name="relu"),
        n("Conv", ["act", "w_pw"], ["pw2"], group=1, name="pointwise_after_act"),
        n("Conv", ["pw2", "w_pw"], ["out"], name="dense_after_dense"),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "dw", [helper.make_tensor_value_info("x", f, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("pw", f, None), helper.make_tensor_value_info("out", f, None)])
    rules = (KeepFloat("op", ("GroupConv",), "dw"), KeepFloat("consumers", ("GroupConv",), "after dw", hops=1))
    keep = float_nodes(helper.make_model(graph), rules)
    assert keep == {"depthwise": "GroupConv: dw", "pointwise_after_dw": "ops reading GroupConv: after dw",
                    "dense_after_dense": OUTPUT_REASON}


def test_fx_view_names_grouped_convolutions_like_onnx() -> None:
    """The ExecuTorch path reads the same rule off torch.export's graph (``groups`` is an ATen argument)."""
    torch = pytest.importorskip("torch")
    from edgevit.quantization.executorch_pt2e import fx_graph_view
    from edgevit.quantization.float_rules import kept_in_float

    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), torch.nn.Conv2d(4, 8, 1),
                              torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1))
    graph = torch.export.export(net.eval(), (torch.zeros(1, 4, 8, 8),)).graph
    rules = (KeepFloat("op", ("GroupConv",), "dw"), KeepFloat("consumers", ("GroupConv",), "after dw", hops=1))
    keep = kept_in_float(fx_graph_view(graph), rules)
    convs = [node.name for node in graph.nodes if node.op == "call_function" and "conv" in str(node.target)]
    assert keep == {convs[0]: "GroupConv: dw", convs[1]: "ops reading GroupConv: after dw"}


def test_arithmetic_quantizers_keep_the_ops_between_a_producers_target_and_its_producers() -> None:
    """For quantizers that also quantize elementwise ops (XNNPACK), the protected value must be float all the
    way: the coordinates' Transpose and Add, not only the offset Conv. Consumer rules are unchanged."""
    rules = (KeepFloat("producers", ("GridSample",), "coordinates", input=1),
             KeepFloat("consumers", ("Exp",), "decay", hops=3))
    plain = float_nodes(_toy(), rules)
    name_nodes(model := _toy())
    from edgevit.quantization.float_rules import kept_in_float
    from edgevit.quantization.onnx_qdq import onnx_graph_view

    paths = kept_in_float(onnx_graph_view(model), rules, arithmetic_quantized=True)
    assert set(paths) - set(plain) == {"t", "add_base"}
    assert "mask_mul" not in paths  # between Exp and its consumer: consumer rules keep only the consumer


def test_arithmetic_rule_applies_only_where_arithmetic_is_quantized() -> None:
    from edgevit.quantization.float_rules import kept_in_float
    from edgevit.quantization.onnx_qdq import onnx_graph_view

    name_nodes(model := _toy())
    rules = (KeepFloat("arithmetic", (), "selection"),)
    assert kept_in_float(onnx_graph_view(model), rules) == {}
    kept = kept_in_float(onnx_graph_view(model), rules, arithmetic_quantized=True)
    assert {"add_base", "mask_mul", "t", "exp"} <= set(kept) and kept["mask_mul"] == "elementwise arithmetic: selection"
    assert not {"feature_conv", "score_matmul", "head"} & set(kept)  # Conv/MatMul/Gemm keep their int8


def test_xnnpack_int8_keeps_what_feeds_a_pad_float() -> None:
    """XNNPACK cannot create a pad that reads int8 values and writes float (a2mamba-n's int8 program failed to
    load at 224); with the ExecuTorch quantizer's constraints the ops feeding the scan's pads (end padding of a
    chunked sequence and the carried states' shift) stay float, and nothing quantizable lies within the
    constraint's hops of them (no Conv/MatMul is given up)."""
    torch = pytest.importorskip("torch")
    from edgevit.models.ops.selective_scan import selective_scan_chunked
    from edgevit.quantization.executorch_pt2e import XNNPACK_CONSTRAINTS, fx_graph_view
    from edgevit.quantization.float_rules import kept_in_float

    class Scan(torch.nn.Module):
        def forward(self, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            return selective_scan_chunked(u, delta, -torch.ones(4, 1), u[:, :1] * 2, torch.zeros(4))

    length = 22  # 3 chunks of 8: the end is padded, and chunk-end states are carried (a front pad)
    graph = torch.export.export(Scan(), (torch.rand(1, 4, length), torch.rand(1, 4, length))).graph
    view = fx_graph_view(graph)
    pads = [n for n in view.nodes if view.kind(n) in ("pad", "constant_pad_nd")]
    feeding = {view.name(p) for pad in pads for p in view.inputs(pad) if p is not None}
    assert len(pads) >= 3 and feeding
    kept = kept_in_float(view, keep_float_rules("A2Mamba") + XNNPACK_CONSTRAINTS, arithmetic_quantized=True)
    assert feeding <= set(kept), sorted(feeding - set(kept))
    pad_rule = [r for r in XNNPACK_CONSTRAINTS if r.op_types == ("Pad",)]
    assert pad_rule and kept_in_float(view, pad_rule) == {}  # nothing quantizable within its hops


def test_xnnpack_int8_keeps_the_scan_recurrence_float() -> None:
    """The scan's recurrence ``h = exp(a) h + x`` (a Mul and an Add per step of a chunk, and the carry update)
    gets no int8 range from XNNPACK's quantizer under A2Mamba's rules: a quantized running state would carry its
    rounding into every later step."""
    torch = pytest.importorskip("torch")
    from edgevit.models.ops.selective_scan import selective_scan_chunked
    from edgevit.quantization.executorch_pt2e import fx_graph_view
    from edgevit.quantization.float_rules import kept_in_float

    class Scan(torch.nn.Module):
        def forward(self, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
            return selective_scan_chunked(u, delta, -torch.ones(4, 1), u[:, :1] * 2, torch.zeros(4))

    graph = torch.export.export(Scan(), (torch.rand(1, 4, 70), torch.rand(1, 4, 70))).graph
    view = fx_graph_view(graph)
    arithmetic = {view.name(n) for n in view.nodes if view.kind(n) in ("mul", "add")}
    assert len(arithmetic) >= 2 * 7  # the recurrence over a chunk of 8 steps, at least once
    kept = kept_in_float(view, keep_float_rules("A2Mamba"), arithmetic_quantized=True)
    assert arithmetic <= set(kept), sorted(arithmetic - set(kept))


def test_xnnpack_quantizer_applies_its_constraints_to_every_family() -> None:
    """The constraint reaches the quantized program: no pad reads a dequantized (int8) value, whatever the
    family's rules (here none at all)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("executorch")
    import numpy as np

    from edgevit.models.ops.selective_scan import selective_scan_chunked
    from edgevit.quantization.executorch_pt2e import quantize_xnnpack

    class Scan(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(20, 20)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            u = self.proj(x)
            return selective_scan_chunked(u, u * 0.5, -torch.ones(4, 1), u[:, :1] * 2, torch.zeros(4))

    samples = [np.random.default_rng(i).standard_normal((1, 4, 20)).astype(np.float32) for i in range(2)]
    converted, _ = quantize_xnnpack(Scan(), samples, ())
    pads = [n for n in converted.graph.nodes if n.op == "call_function" and "pad" in str(n.target)]
    assert pads
    assert not [p.name for p in pads if any("dequantize" in str(a.target) for a in p.all_input_nodes)]
