"""`edgevit bench` / `report` as a user meets them: quick default, paths checked first, exit codes, the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from edgevit import bench, cli
from edgevit.bench import report, suite
from edgevit.bench.timing import LatencyStats, Measurement

runner = CliRunner()
TINY = ("--models", "s2aformer-mini", "--resolutions", "64", "--threads", "1", "--iters", "1", "--repeats", "1",
        "--warmup", "0", "--warmup-seconds", "0", "--min-seconds", "0")


def invoke(*args: str) -> Any:
    return runner.invoke(cli.app, list(args))


@pytest.fixture
def no_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Capture what `bench` would run, without running it."""
    seen: dict[str, Any] = {}

    def fake_run(models: list[str], runtimes: list[str], **kw: Any) -> suite.BenchReport:
        seen.update(models=models, runtimes=runtimes, **kw)
        raise SystemExit(0)

    monkeypatch.setattr(bench, "run", fake_run)
    return seen


def test_no_flags_is_the_quick_profile(no_run: dict[str, Any]) -> None:
    invoke("bench")
    assert no_run["models"] == ["s2aformer-t"] and no_run["runtimes"] == ["torch", "onnxruntime"]
    assert no_run["batches"] == [8] and no_run["reference"] is False
    p = no_run["policy"]
    assert (p.iters, p.min_seconds, p.repeats, p.warmup_iters) == (3, 0.5, 3, 1)


def test_paper_runs_the_papers_table(no_run: dict[str, Any]) -> None:
    invoke("bench", "--paper", "s2aformer")
    assert no_run["models"] == ["s2aformer-mini", "s2aformer-t", "s2aformer-xs", "s2aformer-s", "s2aformer-m"]
    assert no_run["runtimes"] == ["torch", "onnxruntime", "openvino:f32", "torch-compile"]
    assert no_run["resolutions"] == ["224"] and no_run["reference"] is True and no_run["policy"].iters == 20
    res = invoke("bench", "--paper", "nosuch")
    assert res.exit_code == 2 and "no paper speed table for 'nosuch'" in res.stderr


@pytest.mark.parametrize("target, message", [("DIR", "is a directory"), ("FOREIGN", "is not an edgevit results file"),
                                              ("FOREIGN/x.json", "is a file, not a folder")])
def test_json_path_is_checked_before_the_run(no_run: dict[str, Any], tmp_path: Path, target: str,
                                             message: str) -> None:
    (tmp_path / "DIR").mkdir()
    (tmp_path / "FOREIGN").write_text("my notes")
    res = invoke("bench", "--json", str(tmp_path / target))
    assert res.exit_code == 2 and message in res.stderr and "Traceback" not in res.output
    assert no_run == {}  # nothing ran
    assert (tmp_path / "FOREIGN").read_text() == "my notes"


def test_batch_that_cannot_fit_is_refused_with_rc2(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgevit import resources

    monkeypatch.setattr(resources, "available_memory_bytes", lambda: 4 * 2**30)
    res = invoke("bench", "--models", "s2aformer-mini", "--resolutions", "64", "--batch-size", "100000")
    assert res.exit_code == 2 and "needs about" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_default_json_is_saved_streamed_and_a_failed_row_exits_1(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no compiler")))
    res = invoke("bench", *TINY, "--runtimes", "torch-compile,onnxruntime")
    assert res.exit_code == 1, res.output
    lines = res.stdout.splitlines()
    # not a terminal: one line per finished case as it finishes
    assert lines[0].startswith("[1/2] s2aformer-mini · torch-compile · 64x64 b8: error: no compiler")
    assert lines[1].startswith("[2/2] s2aformer-mini · onnxruntime · 64x64 b8 · fp32:")
    saved = [ln for ln in lines if ln.startswith("results written to ")]
    path = Path(saved[0].removeprefix("results written to "))
    assert path.parent.name == "edgevit-bench" and path.exists()
    data = json.loads(path.read_text())
    assert [r["runtime"] for r in data["results"]] == ["torch-compile", "onnxruntime"] and data["complete"]
    assert data["results"][0]["error"] == "no compiler" and data["results"][1]["images_per_s"] > 0


def test_artifact_without_runtimes_has_no_torch_row(tmp_path: Path) -> None:
    from edgevit import pipeline

    out = pipeline.export("s2aformer-mini", output=tmp_path / "m.onnx", input_size="64", batch=1, verify=False).path
    res = invoke("bench", "--artifact", str(out), "--threads", "1", "--iters", "1", "--repeats", "1", "--warmup",
                 "0", "--warmup-seconds", "0", "--min-seconds", "0", "--json", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert [r["runtime"] for r in json.loads((tmp_path / "r.json").read_text())["results"]] == ["onnxruntime"]


def _fake_report() -> suite.BenchReport:
    """Worst-case widths: long labels, mixed shapes, 5-digit throughput, an error row."""
    specs = suite.parse_runtimes(["torch:channels-last", "openvino", "torch-compile"], "cpu")
    rows = []
    for i, spec in enumerate(specs):
        case = suite.BenchCase("s2aformer-mini", spec, "throughput", (224, 224) if i else (1024, 1024), 256, 2)
        row = suite.BenchRow(case, params_m=4.9, gmacs=0.44, precision="int8+bf16", load_mb=12345.0,
                             infer_mb=23456.0, roof_gmacs_per_s=10_000.0, reference={"images_per_s": 12345.67},
                             first_call_seconds=1.0)
        row.measurement = Measurement((LatencyStats(256, (25.0, 25.6)),))
        rows.append(row)
    rows[-1].measurement, rows[-1].error = None, "inductor failed"
    env = {"cpu_model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "threads": 112, "scenario": "throughput",
           "device": "cpu", "roof": {}}
    return suite.BenchReport(env, bench.TimingPolicy(), rows, planned=4)


def test_table_fits_100_columns_and_never_truncates(monkeypatch: pytest.MonkeyPatch) -> None:
    con = Console(width=100, record=True, force_terminal=False)
    monkeypatch.setattr(cli, "console", con)
    cli._print_bench_table(_fake_report())
    text = con.export_text()
    assert "…" not in text and max(len(ln) for ln in text.splitlines()) <= 100
    assert "10119" in text and "12346" in text and "23456" in text and "1024x1024" in text  # in full
    assert sum(ln.startswith("s2aformer-mini ") for ln in text.splitlines()) == 4  # no cell folded
    assert "pt:cl" in text and "ov:def" in text and "pt = PyTorch eager" in text  # abbreviations + legend


PAPER_RUN = {"environment": {"cpu_model": "Test CPU", "logical_cores": 2, "threads": 2, "libraries": {"torch": "2"},
                             "paper": {"family": "S2AFormer", "table": "Table VII", "metric": "throughput",
                                       "resolution": 224, "batch": 16, "note": "n/s",
                                       "models": ["s2aformer-mini", "s2aformer-t"]}},
             "results": [
                 {"model": m, "runtime": rt, "precision": "fp32", "scenario": "throughput", "input_size": [224, 224],
                  "batch": 16, "images_per_s": v, "spread": 0.02, "params_m": p, "gmacs_per_image": g, "error": None}
                 for m, p, g in (("s2aformer-mini", 4.92, 0.44), ("s2aformer-t", 5.69, 0.67))
                 for rt, v in (("torch", 20.0 * p), ("onnxruntime", 30.0 * p), ("openvino:f32", 40.0 * p))]}


def test_compare_paper_renders_the_papers_layout_with_both_hardwares() -> None:
    md = report.markdown(PAPER_RUN, compare_paper=True)
    assert "| model | params M | paper CPU (PyTorch) | ours torch | paper ONNX (ORT) | ours onnxruntime | " \
           "ours openvino:f32 |" in md
    assert "| s2aformer-t | 5.69 | 41.75 | 113.80 ±2% | 112.89 | 170.70 ±2% | 227.60 ±2% |" in md
    assert "Paper hardware: CPU (PyTorch): Intel Xeon Gold 6426Y; ONNX (ORT): Intel Xeon Gold 6426Y" in md
    assert "Our hardware: Test CPU (2 logical cores), 2 threads, batch 16" in md


def test_plot_marks_paper_figures_and_labels_points(tmp_path: Path) -> None:
    fig = report.figure(PAPER_RUN)
    bars, params, macs = fig.axes
    paper_marks = sorted(round(y, 2) for line in bars.lines for y in line.get_ydata())
    assert paper_marks == [41.75, 58.21, 112.89, 118.26]  # torch and ORT columns of Table VII, not OpenVINO
    for ax in (params, macs):
        assert len(ax.lines) == 0  # points, never lines across models
        assert sorted(t.get_text() for t in ax.texts) == ["s2aformer-mini"] * 3 + ["s2aformer-t"] * 3
    assert report.plot(PAPER_RUN, tmp_path / "p.png").stat().st_size > 20_000


def test_report_takes_several_runs_as_a_glob_gives_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgevit report edgevit-bench/bench-*.json` (the README's line) after several runs: a table per file,
    one plot in which a model and runtime measured twice is drawn once, from the last file."""
    older = {**PAPER_RUN, "results": [{**r, "images_per_s": 1.0} for r in PAPER_RUN["results"]]}
    quick = {"environment": {**PAPER_RUN["environment"], "paper": None},
             "results": [{**PAPER_RUN["results"][0], "batch": 8, "images_per_s": 7.0},
                         {**PAPER_RUN["results"][0], "runtime": "openvino:default", "images_per_s": 9.0}]}
    paths = [tmp_path / "bench-1.json", tmp_path / "bench-2.json", tmp_path / "bench-3.json"]
    for path, data in zip(paths, (older, quick, PAPER_RUN)):
        path.write_text(json.dumps(data))
    plotted: list[dict] = []
    real_plot = report.plot
    monkeypatch.setattr(report, "plot", lambda data, out: (plotted.append(data), real_plot(data, out))[1])
    out = invoke("report", *map(str, paths), "--compare-paper", "--plot", str(tmp_path / "p.png"))
    assert out.exit_code == 0, out.output
    assert [ln for ln in out.output.splitlines() if ln.startswith("## ")] == [f"## {p}" for p in paths]
    assert out.output.count("| s2aformer-t | 5.69 | 41.75 | 113.80 ±2% |") == 1  # the paper layout of the last file
    merged = report.merged_rows([older, quick, PAPER_RUN])["results"]
    assert merged == PAPER_RUN["results"] + [quick["results"][1]]  # repeated rows from the last file, others kept
    assert [d["results"] for d in plotted] == [merged]
    assert (tmp_path / "p.png").stat().st_size > 20_000
    bad = invoke("report", str(paths[0]), str(tmp_path / "missing.json"), "-o", str(tmp_path / "r.md"))
    assert bad.exit_code != 0 and "missing.json" in bad.output and not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("flag, name", [("--output", "r.md"), ("--plot", "p.png"), ("--csv", "r.csv")])
def test_outputs_replace_only_what_edgevit_wrote(tmp_path: Path, flag: str, name: str) -> None:
    """A user's file under an output name is refused before anything runs; edgevit's own output of the last run
    is replaced."""
    results = tmp_path / "bench.json"
    results.write_text(json.dumps(PAPER_RUN))
    target = tmp_path / name
    target.write_text("my notes")
    command = ("bench", "--models", "nosuch") if flag == "--csv" else ("report", str(results))
    res = invoke(*command, flag, str(target))
    assert res.exit_code == 2 and "refusing to overwrite" in res.stderr, res.output
    assert target.read_text() == "my notes"
    if flag == "--csv":
        target.write_text(report.to_csv(PAPER_RUN))
        assert cli._check_output_file(target, "--csv", "csv") is None  # edgevit's CSV: replaceable
        return
    target.unlink()
    for _ in range(2):  # the second run replaces the first run's file
        res = invoke("report", str(results), flag, str(target))
        assert res.exit_code == 0, res.output
    assert target.stat().st_size > 0


def test_runtimes_help_names_every_runtime_bench_accepts() -> None:
    """The --runtimes help is the only list a user sees; a runtime added to the table must appear in it."""
    import typing

    help_text = typing.get_type_hints(cli.bench, include_extras=True)["runtimes"].__metadata__[0].help
    for device, table in suite._RUNTIME_ALIASES.items():
        for name in table:
            assert name.split(":")[0] in help_text, (device, name)
