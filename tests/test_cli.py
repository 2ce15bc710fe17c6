"""The CLI as a user meets it: tables, JSON, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgevit.cli import app

runner = CliRunner()


def invoke(*args: str):  # noqa: ANN201
    return runner.invoke(app, list(args))


def test_list_json() -> None:
    res = invoke("list", "--json", "--family", "S2AFormer")
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows][:2] == ["s2aformer-mini", "s2aformer-t"]
    assert rows[1]["paper_params_m"] == 5.80


def test_info_json_reports_measured_counts() -> None:
    res = invoke("info", "s2aformer_mini", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["measured"]["params"] == pytest.approx(4.92e6, rel=0.002)
    assert data["measured"]["macs_paper_convention"] == pytest.approx(0.424e9, rel=0.002)


@pytest.mark.parametrize("args,needle", [
    (("info", "s2aformer-tt"), "did you mean s2aformer-t"),
    (("export", "s2aformer-t", "--input-size", "225"), "multiple of 32"),
    (("export", "s2aformer-t", "--to", "tflite"), "unknown export format 'tflite'"),
    (("verify", "s2aformer-t", "missing.onnx"), "does not exist"),
    (("bench", "--models", "nope-net"), "unknown model 'nope-net'"),
    (("bench", "--runtimes", "tvm"), "unknown runtime 'tvm'"),
    (("export", "s2aformer-t", "--weights", "nothing.pth"), "does not exist"),
])
def test_user_errors_are_one_line_without_traceback(args: tuple[str, ...], needle: str) -> None:
    res = invoke(*args)
    assert res.exit_code == 2
    assert needle in res.stderr
    assert "Traceback" not in res.output + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_export_verify_roundtrip(tmp_path: Path) -> None:
    out = tmp_path / "mini.onnx"
    res = invoke("export", "s2aformer-mini", "--to", "onnx", "--output", str(out), "--input-size", "64",
                 "--batch", "2", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["passed"] and data["max_rel"] <= 1e-4 and data["path"] == str(out)
    res = invoke("verify", "s2aformer-mini", str(out))
    assert res.exit_code == 0 and "PASS" in res.stdout and "top-1 agreement" in res.stdout
    # an impossible tolerance fails verification with exit code 1
    res = invoke("verify", "s2aformer-mini", str(out), "--rtol", "0", "--json")
    assert res.exit_code == 1 and json.loads(res.stdout)["passed"] is False
    # the artifact belongs to another model
    res = invoke("verify", "s2aformer-t", str(out))
    assert res.exit_code == 2 and "was exported from s2aformer-mini" in res.stderr


def test_bench_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = invoke("bench", "--device", "cpu", "--models", "s2aformer-mini", "--runtimes", "torch,onnxruntime",
                 "--resolutions", "64", "--batch-size", "2", "--iters", "2", "--repeats", "1", "--warmup", "1",
                 "--warmup-seconds", "0", "--min-seconds", "0", "--threads", "1", "--json", str(out))
    assert res.exit_code == 0, res.output
    assert "img/s" in res.stdout
    data = json.loads(out.read_text())
    assert data["environment"]["threads"] == 1 and "libraries" in data["environment"]
    rows = data["results"]
    assert [r["runtime"] for r in rows] == ["torch", "onnxruntime"]
    assert all(r["error"] is None and r["images_per_s"] > 0 and r["precision"] == "fp32" for r in rows)
    assert all(r["batch"] == 2 and r["input_size"] == [64, 64] for r in rows)
    res = invoke("report", str(out), "--compare-paper", "--plot", str(tmp_path / "p.png"))
    assert res.exit_code == 0 and "| s2aformer-mini | onnxruntime |" in res.stdout
    assert (tmp_path / "p.png").exists()
    assert rows[0]["latency_ms_p50"] <= rows[0]["latency_ms_p99"]


def test_model_options_are_recorded_and_replayed_by_verify(tmp_path: Path) -> None:
    out = tmp_path / "mini10.onnx"
    res = invoke("export", "s2aformer-mini", "--input-size", "64", "--option", "num_classes=10",
                 "--option", "mlp_dw=False", "--output", str(out), "--json")
    assert res.exit_code == 0, res.output
    from edgevit import runtimes

    runner = runtimes.load(out)
    assert runner.outputs[0].shape[-1] == 10
    assert invoke("verify", "s2aformer-mini", str(out)).exit_code == 0  # rebuilt with the same options
    res = invoke("export", "s2aformer-mini", "--option", "colour=blue")
    assert res.exit_code == 2 and "does not take model option 'colour'; it takes num_classes (int)" in res.stderr
    res = invoke("export", "mat-1", "--option", "sampler=nearest")  # was a traceback from the constructor
    assert res.exit_code == 2 and "sampler takes one of grid_sample, manual" in res.stderr
    res = invoke("export", "s2aformer-mini", "--option", "novalue")
    assert res.exit_code == 2 and "is not KEY=VALUE" in res.stderr


def test_bench_scan_small(tmp_path: Path) -> None:
    out = tmp_path / "scan.json"
    res = invoke("bench-scan", "--length", "96", "--channels", "4", "--threads", "1", "--json", str(out))
    assert res.exit_code == 0, res.output
    (case,) = json.loads(out.read_text())["cases"]
    assert case["channels"] == 4
    for form in ("eager_chunked", "ort_decomposed", "ort_custom"):
        assert case[form]["ms_p50"] > 0 and case[form]["max_rel_err"] <= 1e-5
    assert invoke("bench-scan", "--channels", "x").exit_code == 2
