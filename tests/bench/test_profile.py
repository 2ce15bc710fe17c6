"""`edgevit profile`: per-op time from the runtimes' own counters, only for the calls asked for."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from edgevit import cli, pipeline, runtimes
from edgevit.bench.profile import ProfileReport, profile
from edgevit.bench.roof import BandwidthPoint, bandwidth_at
from edgevit.models import create_model
from edgevit.models.counting import count_macs
from edgevit.runtimes.base import OpTime, product_macs
from edgevit.errors import EdgevitError
from edgevit.runtimes.onnxruntime_backend import ort_op_times
from edgevit.verify import seeded_inputs

MODEL, SIZE = "s2aformer-mini", (64, 64)


def _node(op: str, ts: int, dur: int, size: int = 0, shape: list[int] | None = None) -> dict:
    return {"cat": "Node", "name": f"{op}_0_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op, "provider": "CPUExecutionProvider", "activation_size": str(size),
                     "parameter_size": "100", "output_size": str(2 * size),
                     "input_type_shape": [{"float": shape or [1, 8]}, {"int64": [4]}],
                     "output_type_shape": [{"float": shape or [1, 8]}]}}


def test_ort_times_count_only_the_last_runs_and_average_them() -> None:
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}, _node("Conv", 10, 90_000),  # warm-up
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100}, _node("Conv", 210, 4000, 1000),
              _node("Softmax", 250, 1000),
              {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100}, _node("Conv", 410, 2000),
              _node("Softmax", 450, 1000), {"cat": "Node", "name": "Conv_0_fence_before", "ts": 420, "dur": 7}]
    times = {t.op: t for t in ort_op_times(events, calls=2)}
    assert times["Conv"].ms == pytest.approx(3.0) and times["Conv"].nodes == 1
    assert times["Conv"].bytes == pytest.approx((3100 + 100) / 2)  # activations + parameters + outputs, per call
    assert times["Softmax"].ms == pytest.approx(1.0)
    assert [t.op for t in ort_op_times(events, calls=2)] == ["Conv", "Softmax"]  # slowest first


def test_ort_times_by_shape_split_a_kind_by_its_nodes_shapes() -> None:
    run = {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}
    events = [run, _node("Gather", 10, 3000, shape=[16, 3136, 16]), _node("Gather", 20, 1000, shape=[2, 8]),
              _node("Gather", 30, 2000, shape=[16, 3136, 16]), _node("Add", 40, 500)]
    rows = ort_op_times(events, calls=1, by_shape=True)
    assert [(t.op, t.shapes, t.nodes, t.ms) for t in rows] == [
        ("Gather", "16x3136x16, 4 -> 16x3136x16", 2, pytest.approx(5.0)),
        ("Gather", "2x8, 4 -> 2x8", 1, pytest.approx(1.0)), ("Add", "1x8, 4 -> 1x8", 1, pytest.approx(0.5))]
    by_kind = ort_op_times(events, calls=1)
    assert [(t.op, t.shapes, t.nodes) for t in by_kind] == [("Gather", "", 3), ("Add", "", 1)]


def test_onnxruntime_profile_covers_the_graph_ops() -> None:
    rep = profile(MODEL, "onnxruntime", input_size=SIZE, threads=1, calls=3, warmup=1)
    graph_ops = {n.op_type for n in onnx.load(rep.artifact).graph.node}
    assert rep.ops and rep.calls == 3 and rep.precision == "fp32"
    assert {"Conv", "Softmax"} <= {t.op for t in rep.ops} <= graph_ops | {
        "FusedConv", "FusedMatMul", "ReorderInput", "ReorderOutput", "FusedGemm", "Gelu", "BiasGelu"}
    assert 0 < rep.op_ms <= rep.wall_ms
    # floors: every op kind reports its traffic; the whole graph cannot run at the memory roof, and the
    # compute floor is the model's MACs (s2aformer-mini at 64x64) over a roof of this machine
    assert all(t.bytes > 0 for t in rep.ops)
    assert rep.memory_floor_ms is not None and 0 < rep.memory_floor_ms < rep.op_ms
    assert rep.macs == count_macs(create_model(MODEL), SIZE).total
    assert rep.compute_floor_ms is not None and 0 < rep.compute_floor_ms < rep.op_ms


def test_memory_floor_uses_the_bandwidth_of_the_ops_own_size() -> None:
    curve = [BandwidthPoint(1.0, 100.0), BandwidthPoint(16.0, 20.0)]
    assert bandwidth_at(curve, 2**20) == 100.0 and bandwidth_at(curve, 2**20 + 1) == 20.0
    assert bandwidth_at(curve, 2**30) == 20.0  # beyond the largest probe: the streaming rate
    rep = ProfileReport(MODEL, "onnxruntime", "fp32", SIZE, 1, 1, 1, 1.0, bandwidth=curve,
                        ops=[OpTime("Where", "cpu", 1.0, 2, 6 * 2**20),  # two nodes of 1 MiB operands: cached
                             OpTime("Add", "cpu", 1.0, 1, 3 * 2**21), OpTime("Conv", "cpu", 1.0, 1)])
    where, add, conv = (rep.floor_ms(t) for t in rep.ops)
    assert where == pytest.approx(6 * 2**20 / 100e9 * 1e3) and add == pytest.approx(3 * 2**21 / 20e9 * 1e3)
    assert conv is None and rep.memory_floor_ms == pytest.approx(where + add)


def test_product_macs_follow_from_the_node_shapes() -> None:
    # tiled attention logits: q (…, 49, 16) times k (…, 289, 16) transposed -> 49 x 289 per tile, inner 16
    assert product_macs("FusedMatMul", [[16, 1, 64, 49, 16], [16, 1, 64, 289, 16]], [[16, 1, 64, 49, 289]]) == \
        16 * 64 * 49 * 289 * 16
    assert product_macs("MatMul", [[8, 7, 5], [5, 3]], [[8, 7, 3]]) == 8 * 7 * 3 * 5
    assert product_macs("Gemm", [[5, 7], [5, 3]], [[7, 3]]) == 7 * 3 * 5  # transA: inner is A's other side
    assert product_macs("FullyConnected", [[2, 10, 64], [32, 64]], [[2, 10, 32]]) == 2 * 10 * 32 * 64
    assert product_macs("MatMul", [[6], [6, 4]], [[4]]) == 4 * 6  # vector times matrix
    assert product_macs("Conv", [[2, 32, 9, 9], [64, 32, 3, 3], [64]], [[2, 64, 9, 9]]) == 2 * 64 * 81 * 32 * 9
    assert product_macs("Conv", [[2, 32, 9, 9], [32, 1, 5, 5]], [[2, 32, 9, 9]]) == 2 * 32 * 81 * 25  # depth-wise
    assert product_macs("GroupConvolution", [[2, 32, 9, 9], [32, 1, 1, 3, 3]], [[2, 32, 9, 9]]) == 2 * 32 * 81 * 9
    assert product_macs("Add", [[2, 8], [2, 8]], [[2, 8]]) == 0
    assert product_macs("MatMul", [["batch", 7, 5], [5, 3]], [["batch", 7, 3]]) == 0  # unknown size: not guessed


def test_onnxruntime_profile_counts_the_models_macs_in_its_product_nodes() -> None:
    # emsnet-xxtiny's graph has no padded products: the MACs its nodes executed are the model's count (the
    # counter counts products only, within 0.2 %: ONNX Runtime's blocked layout pads a few channel counts)
    rep = profile("emsnet-xxtiny", "onnxruntime", input_size=SIZE, threads=1, calls=2, warmup=1)
    assert rep.macs and rep.executed_macs == pytest.approx(rep.macs, rel=2e-3)
    assert {t.op for t in rep.ops if t.macs} >= {"Conv", "MatMul"}


def test_roofline_floor_takes_each_rows_larger_floor_and_views_move_nothing() -> None:
    curve = [BandwidthPoint(1.0, 10.0)]
    conv = OpTime("Conv", "cpu", 5.0, 1, 1e6, macs=2e9)  # 0.1 ms of traffic, 20 ms of arithmetic at 100 GMAC/s
    add = OpTime("Add", "cpu", 1.0, 1, 3e6)  # 0.3 ms of traffic
    view = OpTime("Reshape", "cpu", 0.01, 4, 8e6)  # aliases its input: no traffic floor
    rep = ProfileReport(MODEL, "onnxruntime", "fp32", SIZE, 1, 1, 1, 1.0, bandwidth=curve, gemm_roof_gmacs_per_s=100.0,
                        ops=[conv, add, view])
    assert rep.compute_ms(conv) == pytest.approx(20.0) and rep.memory_ms(conv) == pytest.approx(0.1)
    assert rep.floor_ms(conv) == pytest.approx(20.0) and rep.floor_ms(add) == pytest.approx(0.3)
    assert rep.memory_ms(view) == 0.0 and rep.compute_ms(add) is None
    assert rep.roofline_floor_ms == pytest.approx(20.3) and rep.memory_floor_ms == pytest.approx(0.4)
    assert rep.executed_macs == 2e9
    no_sizes = ProfileReport(MODEL, "openvino:f32", "fp32", SIZE, 1, 1, 1, 1.0, gemm_roof_gmacs_per_s=100.0,
                             ops=[OpTime("Convolution", "x", 5.0, 1, macs=2e9), OpTime("Add", "x", 1.0, 1)])
    assert no_sizes.floor_ms(no_sizes.ops[0]) == pytest.approx(20.0)  # a product's compute floor needs no sizes
    assert no_sizes.roofline_floor_ms is None  # without every row's traffic there is no whole-graph floor


def test_openvino_profile_names_the_f32_kernels_that_ran() -> None:
    pytest.importorskip("openvino")
    rep = profile(MODEL, "openvino:f32", input_size=SIZE, threads=1, calls=3, warmup=1)
    convs = [t for t in rep.ops if t.op in ("Convolution", "GroupConvolution")]
    assert convs and all(t.kernel.endswith("_f32") for t in convs)  # f32 asked, f32 ran (no silent bf16)
    assert 0 < rep.op_ms <= rep.wall_ms and rep.runtime == "openvino:f32"
    assert rep.memory_floor_ms is None and rep.bandwidth == []  # OpenVINO's counters carry no tensor sizes
    assert rep.macs and rep.executed_macs == pytest.approx(rep.macs, rel=0.01)  # MACs from the layers' shapes
    assert rep.roofline_floor_ms is None


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino:f32"])
def test_profile_by_shape_names_each_rows_shapes(runtime: str) -> None:
    if runtime.startswith("openvino"):
        pytest.importorskip("openvino")
    rep = profile(MODEL, runtime, input_size=SIZE, threads=1, calls=1, warmup=1, by_shape=True)
    image = f"1x3x{SIZE[0]}x{SIZE[1]}"
    assert all(" -> " in t.shapes and "?" not in t.shapes for t in rep.ops)  # every layer's shapes found
    stem = [t for t in rep.ops if t.shapes.startswith(image) and "Conv" in t.op]
    assert len(stem) == 1 and stem[0].nodes == 1  # the stem conv reads the image: one node of its own
    kinds = [t.op for t in rep.ops]
    assert any(kinds.count(op) > 1 for op in kinds)  # some kind runs at several shapes: split into rows


def test_profile_refuses_runtimes_without_counters_and_unprofiled_runners() -> None:
    with pytest.raises(EdgevitError, match="per-op profiles come from onnxruntime and openvino"):
        profile(MODEL, "torch", input_size=SIZE)
    path = pipeline.cached_artifact(MODEL, "onnx", SIZE, 1)
    with pytest.raises(EdgevitError, match="profile=True"):
        runtimes.load(path, "onnxruntime").op_profile(seeded_inputs(1, SIZE), 1)
    with pytest.raises(EdgevitError, match="no per-op profile"):
        runtimes.load(MODEL, input_size=SIZE).op_profile(seeded_inputs(1, SIZE), 1)


def test_cli_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    result = CliRunner().invoke(cli.app, ["profile", MODEL, "--input-size", "64", "--threads", "1", "--calls", "2",
                                          "--top", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "ms/call" in result.output and "more op kinds" in result.output
    assert "GMAC/s" in result.output and "roofline floor" in result.output
    data = json.loads(out.read_text())["profile"]
    assert data["model"] == MODEL and sum(op["share"] for op in data["ops"]) == pytest.approx(1.0)
    assert data["roofline_floor_ms"] == pytest.approx(sum(op["floor_ms"] for op in data["ops"]))
    user = tmp_path / "user.json"
    user.write_text('{"mine": 1}')
    refused = CliRunner().invoke(cli.app, ["profile", MODEL, "--input-size", "64", "--json", str(user)])
    assert refused.exit_code == 2 and user.read_text() == '{"mine": 1}'
    shapes = CliRunner().invoke(cli.app, ["profile", MODEL, "--input-size", "64", "--threads", "1", "--calls", "1",
                                          "--by", "shape", "--top", "2"])
    assert shapes.exit_code == 0 and "shapes" in shapes.output and "more rows" in shapes.output, shapes.output
    wrong = CliRunner().invoke(cli.app, ["profile", MODEL, "--by", "node"])
    assert wrong.exit_code == 2 and "--by takes 'kind' or 'shape'" in wrong.output
