"""The benchmark suite end to end on a tiny case, and its reports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from edgevit import bench
from edgevit.bench import report
from edgevit.bench.suite import default_batch, parse_runtimes
from edgevit.errors import EdgevitError

FAST = bench.TimingPolicy(warmup_iters=1, warmup_seconds=0.0, iters=2, min_seconds=0.0, repeats=2)


@pytest.fixture(scope="module")
def results() -> dict:
    rep = bench.run(["s2aformer-mini"], ["torch", "onnxruntime"], scenario="throughput",
                    resolutions=["64", "96x64"], batches=[2, 1], threads=1, policy=FAST)
    return rep.to_dict()


def test_rows_cover_resolutions_and_runtimes(results: dict) -> None:
    rows = results["results"]
    assert [(r["runtime"], r["input_size"], r["batch"]) for r in rows] == [
        ("torch", [64, 64], 2), ("onnxruntime", [64, 64], 2), ("torch", [96, 64], 1), ("onnxruntime", [96, 64], 1)]
    for r in rows:
        assert r["error"] is None, r["error"]
        assert r["images_per_s"] > 0 and len(r["images_per_s_runs"]) == 2 and r["spread"] >= 0
        assert r["latency_ms_p50"] <= r["latency_ms_p99"]
        assert r["precision"] == "fp32" and r["threads"] == 1
        assert r["peak_rss_mb"] > 0 and r["peak_gmacs_per_s"] > 0 and "MAC/cycle" in r["peak_assumption"]
        assert r["achieved_gmacs_per_s"] == pytest.approx(r["gmacs_per_image"] * r["images_per_s"])
    # MACs scale with the pixel count: 96x64 has 1.5x the pixels of 64x64
    assert rows[2]["gmacs_per_image"] / rows[0]["gmacs_per_image"] == pytest.approx(1.5, rel=0.05)
    env = results["environment"]
    assert env["scenario"] == "throughput" and env["threads"] == 1 and env["isa_flags"] is not None


def test_benchmark_restores_the_process_thread_count() -> None:
    import torch

    torch.set_num_threads(2)
    bench.run(["s2aformer-mini"], ["onnxruntime"], resolutions=["64"], batches=[1], threads=1, policy=FAST)
    assert torch.get_num_threads() == 2


def test_failing_runtime_is_a_row_not_a_crash() -> None:
    rep = bench.run(["s2aformer-mini"], ["openvino:bf16"], resolutions=["64"], batches=[1], threads=1, policy=FAST)
    (row,) = rep.to_dict()["results"]
    # either OpenVINO ran (then it reports its precision and a rate) or the row carries the reason and no rate
    if row["error"] is None:
        assert row["precision"] and row["images_per_s"] > 0
    else:
        assert row["error"].strip() and "images_per_s" not in row


def test_runtime_aliases_and_validation() -> None:
    assert [s.label for s in parse_runtimes(["torch", "openvino"], "cpu")] == ["torch", "openvino:f32",
                                                                               "openvino:default"]
    assert [s.label for s in parse_runtimes(["torch"], "cuda")] == ["torch-cuda:fp32", "torch-cuda:fp16"]
    with pytest.raises(EdgevitError, match="unknown runtime 'tensorrt' for --device cpu"):
        parse_runtimes(["tensorrt"], "cpu")
    with pytest.raises(EdgevitError, match="one per resolution"):
        bench.run(["s2aformer-mini"], ["torch"], resolutions=["64", "96"], batches=[1, 2, 3], policy=FAST)
    with pytest.raises(EdgevitError, match="latency scenario runs batch 1"):
        bench.run(["s2aformer-mini"], ["torch"], scenario="latency", batches=[8], policy=FAST)
    assert default_batch("latency", "cpu", (224, 224)) == 1
    assert default_batch("throughput", "cpu", (224, 224)) == 16
    assert default_batch("throughput", "cuda", (512, 512)) == 49
    assert default_batch("throughput", "cuda", (1024, 1024)) == 12


def test_cuda_is_refused_cleanly_without_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EdgevitError, match="needs a CUDA GPU"):
        bench.run(["s2aformer-mini"], ["torch"], device="cuda", policy=FAST)


def test_markdown_csv_and_plot(results: dict, tmp_path: Path) -> None:
    md = report.markdown(results)
    assert md.count("| s2aformer-mini |") == 4 and "Peak assumed" in md
    rows = list(csv.DictReader(io.StringIO(report.to_csv(results))))
    assert len(rows) == 4 and rows[1]["runtime"] == "onnxruntime" and float(rows[1]["images_per_s"]) > 0
    out = report.plot(results, tmp_path / "p.png")
    assert out.stat().st_size > 10_000


def test_compare_paper_puts_paper_figure_and_ratio_beside_ours() -> None:
    data = {"environment": {"cpu_model": "x", "threads": 2}, "results": [
        {"model": "s2aformer-t", "runtime": "onnxruntime", "precision": "fp32", "scenario": "throughput",
         "input_size": [224, 224], "batch": 16, "images_per_s": 56.445, "spread": 0.01, "latency_ms_p50": 1.0,
         "latency_ms_p99": 2.0, "error": None},
        {"model": "s2aformer-l", "runtime": "torch", "precision": "fp32", "scenario": "throughput",
         "input_size": [224, 224], "batch": 16, "images_per_s": 3.0, "spread": 0.01, "error": None}]}
    md = report.markdown(data, compare_paper=True)
    line = next(ln for ln in md.splitlines() if ln.startswith("| s2aformer-t"))
    assert "| 112.89 images/s | 0.50 | Intel Xeon Gold 6426Y (Table VII, batch n/s) |" in line
    line_l = next(ln for ln in md.splitlines() if ln.startswith("| s2aformer-l"))
    assert line_l.endswith("| — | — | — |")  # the paper has no L row


def test_compare_paper_latency_scenario_uses_paper_latency() -> None:
    data = {"environment": {"cpu_model": "x", "threads": 2}, "results": [
        {"model": "emsnet-xxtiny", "runtime": "torch", "precision": "fp32", "scenario": "latency",
         "input_size": [224, 224], "batch": 1, "images_per_s": 40.0, "spread": 0.01, "latency_ms_p50": 25.05,
         "latency_ms_p99": 30.0, "error": None}]}
    line = next(ln for ln in report.markdown(data, compare_paper=True).splitlines() if ln.startswith("| emsnet"))
    assert "| 50.1 ms | 0.50 | Intel Core i5-6600 @ 3.30 GHz (Table 3.8, batch n/s) |" in line


def test_report_rejects_foreign_json(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"a": 1}))
    with pytest.raises(EdgevitError, match="not an `edgevit bench --json` file"):
        report.load_results(p)


def test_benchmark_a_users_artifact(tmp_path: Path) -> None:
    from edgevit import pipeline

    out = pipeline.export("s2aformer-mini", output=tmp_path / "mini.onnx", input_size="64x96", batch=2,
                          verify=False).path
    rep = bench.run([], ["onnxruntime", "openvino:f32"], artifact=out, threads=1, policy=FAST).to_dict()
    rows = rep["results"]
    assert [(r["model"], r["runtime"], r["input_size"], r["batch"]) for r in rows] == [
        ("s2aformer-mini", "onnxruntime", [64, 96], 2), ("s2aformer-mini", "openvino:f32", [64, 96], 2)]
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in rows), rows
    with pytest.raises(EdgevitError, match="fixed batch of 2"):
        bench.run([], ["onnxruntime"], artifact=out, batches=[4], policy=FAST)
    with pytest.raises(EdgevitError, match="does not exist"):
        bench.run([], ["onnxruntime"], artifact=tmp_path / "none.onnx", policy=FAST)
