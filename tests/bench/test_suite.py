"""The benchmark suite end to end on a tiny case, and its reports."""

from __future__ import annotations

import csv
import dataclasses
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
                    resolutions=["64", "96x64"], batches=[2, 1], threads=1, policy=FAST, roof_seconds=0.05)
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
        assert r["roof_precision"] == "fp32" and r["roof_gmacs_per_s"] > 0
        assert r["roof_fraction"] == pytest.approx(r["achieved_gmacs_per_s"] / r["roof_gmacs_per_s"])
        assert r["load_mb"] is not None and r["infer_mb"] is not None and r["first_call_seconds"] > 0
        # one MAC convention per column: all-op for efficiency, the paper's (conv+linear) beside it
        assert r["macs_convention"] == "all" and r["paper_macs_convention"] == "conv+linear"
        assert 0 < r["gmacs_per_image_paper"] < r["gmacs_per_image"]
    # MACs scale with the pixel count: 96x64 has 1.5x the pixels of 64x64
    assert rows[2]["gmacs_per_image"] / rows[0]["gmacs_per_image"] == pytest.approx(1.5, rel=0.05)
    env = results["environment"]
    assert env["scenario"] == "throughput" and env["threads"] == 1 and env["isa_flags"] is not None
    assert env["roof"]["fp32"]["gmacs_per_s"] > 0 and env["roof"]["fp32"]["threads"] == 1


def test_benchmark_restores_the_process_thread_count() -> None:
    import torch

    torch.set_num_threads(2)
    bench.run(["s2aformer-mini"], ["onnxruntime"], resolutions=["64"], batches=[1], threads=1, policy=FAST,
              roof_seconds=0.05)
    assert torch.get_num_threads() == 2


def test_failing_runtime_is_a_row_not_a_crash() -> None:
    rep = bench.run(["s2aformer-mini"], ["openvino:bf16"], resolutions=["64"], batches=[1], threads=1, policy=FAST,
                    roof_seconds=0)
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
    assert [s.label for s in parse_runtimes(["torch-compile", "torch:channels-last", "torch:bf16"], "cpu")] == [
        "torch-compile", "torch:channels-last", "torch:bf16"]
    assert parse_runtimes(["torch-compile"], "cpu")[0].options(2, None)["compile"] is True
    (pattern,) = parse_runtimes(["onnxruntime:memory-pattern"], "cpu")
    assert pattern.artifact == "onnx" and pattern.options(2, None) == {"threads": 2, "memory_pattern": True}
    assert "memory_pattern" not in parse_runtimes(["onnxruntime"], "cpu")[0].options(2, None)
    (kept,) = parse_runtimes(["onnxruntime:denormals"], "cpu")
    assert kept.options(2, None) == {"threads": 2, "keep_denormals": True}
    assert "keep_denormals" not in parse_runtimes(["onnxruntime"], "cpu")[0].options(2, None)
    with pytest.raises(EdgevitError, match="latency scenario runs batch 1"):
        bench.run(["s2aformer-mini"], ["torch"], scenario="latency", batches=[8], policy=FAST)
    assert default_batch("latency", "cpu", (224, 224)) == 1
    assert default_batch("throughput", "cpu", (224, 224)) == 16
    assert default_batch("throughput", "cuda", (512, 512)) == 49
    assert default_batch("throughput", "cuda", (1024, 1024)) == 12


def test_int8_columns_name_the_artifact_precision_apart_from_the_compute_precision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgevit import pipeline
    from edgevit.bench import suite

    specs = parse_runtimes(["int8"], "cpu")
    assert [s.label for s in specs] == ["onnxruntime:int8", "openvino:int8", "executorch:xnnpack-int8"]
    assert {s.artifact_precision for s in specs} == {"int8"}
    assert specs[1].artifact == "openvino" and specs[1].options(1, None)["precision"] == "f32"  # float parts f32
    asked: list[tuple[str, str | None]] = []
    monkeypatch.setattr(pipeline, "cached_artifact",
                        lambda model, fmt, size, batch, precision=None: asked.append((fmt, precision)) or Path("x"))
    for spec in specs + parse_runtimes(["onnxruntime", "openvino:f32"], "cpu"):
        suite.artifact_for(suite.BenchCase("s2aformer-mini", spec, "latency", (64, 64), 1, 1))
    # the int8 columns export int8; the float ones the plain ONNX file, whatever OpenVINO computes in
    assert asked == [("onnx", "int8"), ("openvino", "int8"), ("executorch", "int8"), ("onnx", None), ("onnx", None)]


def test_an_int8_row_runs_the_gated_int8_export_against_the_int8_roof() -> None:
    rep = bench.run(["s2aformer-mini"], ["onnxruntime:int8"], scenario="latency", resolutions=["64"], threads=1,
                    policy=FAST, roof_seconds=0.05)
    (row,) = rep.to_dict()["results"]
    assert row["error"] is None, row["error"]
    assert row["precision"] == "int8+fp32" and row["artifact_precision"] == "int8"
    assert row["details"]["artifact"].endswith("int8.onnx") and row["images_per_s"] > 0
    # compared with the int8 GEMM probe where the CPU has an int8 dot-product unit, else with fp32's
    assert row["roof_precision"] == "int8"
    assert row["roof_gmacs_per_s"] == rep.environment["roof"].get("int8", {}).get("gmacs_per_s")


def test_cuda_is_refused_cleanly_without_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EdgevitError, match="needs a CUDA GPU"):
        bench.run(["s2aformer-mini"], ["torch"], device="cuda", policy=FAST)


def test_markdown_csv_and_plot(results: dict, tmp_path: Path) -> None:
    md = report.markdown(results)
    assert md.count("| s2aformer-mini |") == 4 and "GEMM roof fp32: measured" in md and "all-op MACs" in md
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
    rep = bench.run([], ["onnxruntime", "openvino:f32"], artifact=out, threads=1, policy=FAST, reference=True,
                    roof_seconds=0).to_dict()
    rows = rep["results"]
    assert [(r["model"], r["runtime"], r["input_size"], r["batch"]) for r in rows] == [
        ("s2aformer-mini", "onnxruntime", [64, 96], 2), ("s2aformer-mini", "openvino:f32", [64, 96], 2)]
    assert all(r["error"] is None and r["images_per_s"] > 0 for r in rows), rows
    # the runtimes' own tools ran on the user's file with the same threads, beside edgevit's figure
    ort_ref, ov_ref = rows[0]["reference"], rows[1]["reference"]
    assert ort_ref["images_per_s"] > 0 and str(out) in ort_ref["command"], ort_ref
    assert ort_ref["command"].endswith(" 1")  # subnormals flushed in the plain session too, as by the runner
    assert ov_ref["tool"] == "benchmark_app" and ov_ref["images_per_s"] > 0, ov_ref
    assert f"-m {out} " in ov_ref["command"] and "-nthreads 1" in ov_ref["command"]
    assert "-infer_precision f32" in ov_ref["command"]
    with pytest.raises(EdgevitError, match="fixed batch of 2"):
        bench.run([], ["onnxruntime"], artifact=out, batches=[4], policy=FAST)
    with pytest.raises(EdgevitError, match="does not exist"):
        bench.run([], ["onnxruntime"], artifact=tmp_path / "none.onnx", policy=FAST)


def test_torch_variants_run_and_a_failing_compile_is_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    class InductorFailure(Exception):  # torch.compile raises many exception types, not only RuntimeError
        pass

    def broken_compile(*_a: object, **_k: object) -> None:
        raise InductorFailure("inductor: C++ compile failed")

    monkeypatch.setattr(torch, "compile", broken_compile)
    rep = bench.run(["s2aformer-mini"], ["torch-compile", "torch:channels-last"], resolutions=["64"], batches=[1],
                    threads=1, policy=FAST, roof_seconds=0).to_dict()
    failed, cl = rep["results"]
    assert failed["runtime"] == "torch-compile" and failed["error"] == "inductor: C++ compile failed"
    assert cl["error"] is None and cl["details"]["memory_format"] == "channels_last" and cl["images_per_s"] > 0


def test_export_happens_outside_the_measured_window(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgevit import pipeline
    from edgevit.bench import suite

    active: list[bool] = []
    sampling = [0]

    class Spy(suite.PeakRssSampler):
        def __enter__(self):  # type: ignore[no-untyped-def]
            sampling[0] += 1
            return super().__enter__()

        def __exit__(self, *exc):  # type: ignore[no-untyped-def]
            sampling[0] -= 1
            return super().__exit__(*exc)

    real = pipeline.cached_artifact

    def spy_cached_artifact(*args, **kwargs):  # type: ignore[no-untyped-def]
        active.append(sampling[0] > 0)
        return real(*args, **kwargs)

    monkeypatch.setattr(suite, "PeakRssSampler", Spy)
    monkeypatch.setattr(pipeline, "cached_artifact", spy_cached_artifact)
    bench.run(["s2aformer-mini"], ["onnxruntime"], resolutions=["64"], batches=[1], threads=1, policy=FAST,
              roof_seconds=0)
    assert active == [False]


def test_a_batch_that_cannot_fit_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgevit import resources
    from edgevit.bench import suite

    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 8 * 2**30)
    monkeypatch.setattr(suite, "run_case", lambda *a, **k: pytest.fail("a case ran"))
    with pytest.raises(EdgevitError, match=r"batch 100000 needs about \d+\.\d GB \(estimate\), but 8\.6 GB .*"
                                           r"use --batch-size \d+ or less"):
        bench.run(["s2aformer-mini"], ["torch"], resolutions=["64"], batches=[100000], policy=FAST)
    # the estimate grows with the batch: the suggested batch itself is accepted by the check
    (item,) = suite._plan(["s2aformer-t"], [None], [3000], "throughput", "cpu")
    assert item.needs_bytes > 20e9  # the issue saw > 21 GB RSS before the OOM kill
    fits = int((0.9 * 8 * 2**30 - item.fixed_bytes) / item.per_image_bytes)
    suite._check_memory([dataclasses.replace(item, batch=fits)])
    with pytest.raises(EdgevitError, match="needs about"):
        suite._check_memory([dataclasses.replace(item, batch=fits + 1)])


def test_reference_tool_output_is_parsed(tmp_path: Path) -> None:
    from edgevit.bench import references

    log = "[ INFO ] Latency:\n[ INFO ]    Median:        2381.85 ms\n[ INFO ] Throughput:   6.41 FPS\n"
    assert references.parse_benchmark_app(log) == {"images_per_s": 6.41, "latency_ms_p50": 2381.85}
    cmd = references.benchmark_app_command(tmp_path, 4, 2, None, 3.0)  # an IR folder
    assert cmd[cmd.index("-m") + 1] == str(tmp_path / "model.xml") and "-infer_precision" not in cmd  # default precision
    assert cmd[cmd.index("-nstreams") + 1] == "2" and cmd[cmd.index("-hint") + 1] == "none"
