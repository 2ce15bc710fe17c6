"""``--to executorch`` and ``--to ort`` through the format table on a registry model (s2aformer-mini at
64x64): verified before they appear, with their manifests, loadable by ``runtimes.load`` and ``verify``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgevit import pipeline, runtimes
from edgevit.errors import EdgevitError, VerificationError
from edgevit.formats import format_options
from edgevit.models import create_model
from edgevit.models.int8_rules import keep_float_rules
from edgevit.quantization.accuracy import AgreementReport
from edgevit.quantization.calibration import CalibrationSource
from edgevit.quantization.float_rules import OUTPUT_REASON
from edgevit.verify import seeded_inputs
from tests.mobile_support import MODEL, SIZE, exported


@pytest.fixture(scope="module")
def pte(tmp_path_factory: pytest.TempPathFactory) -> pipeline.ExportReport:
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    return exported(tmp_path_factory, "executorch")


@pytest.fixture(scope="module")
def ort_dir(tmp_path_factory: pytest.TempPathFactory) -> pipeline.ExportReport:
    return exported(tmp_path_factory, "ort")


def test_executorch_export_is_verified_and_fully_delegated(pte: pipeline.ExportReport) -> None:
    assert pte.path.suffix == ".pte" and pte.parity is not None and pte.parity.worst_rel <= 1e-4
    manifest = json.loads(Path(str(pte.path) + ".json").read_text())
    assert manifest["backends"] == ["XnnpackBackend"] and manifest["xnnpack_forms"]
    # the XNNPACK forms take every LayerNorm, mean, attention matmul of S2AFormer into one delegate call
    assert manifest["delegation"]["non_delegated_ops"] == 0 and manifest["delegation"]["delegated_subgraphs"] == 1
    assert manifest["parity"]["max_rel"] <= 1e-4 and manifest["metadata"]["edgevit.format"] == "executorch"
    assert pte.metadata.extra["delegate"] == "xnnpack"


def test_bench_runs_a_program_in_executorch(pte: pipeline.ExportReport) -> None:
    """`edgevit bench --artifact model.pte` picks ExecuTorch (it once fell back to ONNX Runtime and failed)."""
    from edgevit.bench.suite import artifact_runtime

    assert artifact_runtime(pte.path) == "executorch"
    assert runtimes.load(pte.path).info.precision == "fp32"


def test_executorch_program_verifies_and_runs_like_pytorch(pte: pipeline.ExportReport) -> None:
    report = pipeline.verify(None, pte.path, threads=1)
    assert report.passed and report.worst_rel <= 1e-4
    runner = runtimes.load(pte.path, threads=1)
    assert runner.backend == "executorch" and runner.metadata.model == MODEL
    assert runner.info.details["backends"] == "XnnpackBackend" and runner.info.threads == 1
    x = seeded_inputs(1, SIZE, seed=4)
    ref = runtimes.load(MODEL, input_size=SIZE).run(x)["logits"]
    out = runner.run(x)["logits"]
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4


def test_ort_export_writes_model_config_and_manifest(ort_dir: pipeline.ExportReport) -> None:
    path = ort_dir.path
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "model.ort", "required_operators.config"]
    config = (path / "required_operators.config").read_text().splitlines()
    assert config[1] == "# - model.ort"  # no temporary path of the export machine
    ops = {op for line in config if not line.startswith("#") for op in line.split(";")[2].split(",")}
    assert {"Conv", "Softmax", "LayerNormalization"} <= ops
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["target_platform"] == "arm" and manifest["parity"]["max_rel"] <= 1e-4
    assert ort_dir.parity is not None and ort_dir.parity.candidate.startswith("ort")


def test_ort_folder_and_file_load_as_ort(ort_dir: pipeline.ExportReport) -> None:
    for source in (ort_dir.path, ort_dir.path / "model.ort"):
        runner = runtimes.load(source, threads=1)
        assert runner.backend == "ort" and runner.info.details["format"] == "ort"
        assert runner.metadata is not None and runner.metadata.model == MODEL  # metadata survives conversion
    assert pipeline.verify(None, ort_dir.path).passed


def test_mobile_formats_refuse_what_they_do_not_take(tmp_path: Path) -> None:
    with pytest.raises(EdgevitError, match="static batch"):
        pipeline.export(MODEL, "executorch", tmp_path / "m.pte", dynamic_batch=True)
    with pytest.raises(EdgevitError, match="does not take --opset"):
        pipeline.export(MODEL, "executorch", tmp_path / "m.pte",
                        format_options=format_options("executorch", opset=17))
    with pytest.raises(EdgevitError, match="unknown ORT target platform"):
        format_options("ort", target_platform="riscv")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--to", "onnx", "--delegate", "portable"], "--to onnx does not take --delegate"),
    (["--to", "executorch", "--target-platform", "arm"], "--to executorch does not take --target-platform"),
    (["--to", "ort", "--no-xnnpack-forms"], "--to ort does not take --no-xnnpack-forms"),
    (["--to", "executorch", "--delegate", "coreml"], "unknown ExecuTorch delegate 'coreml'"),
])
def test_cli_routes_mobile_flags_to_their_format_only(args: list[str], message: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgevit.cli import app

    result = CliRunner().invoke(app, ["export", MODEL, *args, "--output", str(tmp_path / "x")])
    assert result.exit_code != 0 and message in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())


SMALLEST = ["s2aformer-mini", "a2mamba-n", "dualformer-t", "emsnet-xxtiny", "mat-1", "partialformer-b0"]


def test_a2mamba_graph_stays_within_xnnpack_rank_limit() -> None:
    """XNNPACK tensors have at most 6 dimensions; ExecuTorch 1.5's partitioner still takes a 7-D permute,
    and the program then fails to load. A2Mamba's tiled neighbourhood attention is the family that
    permutes tiles (batch, heads, tile rows, tile cols, rows, cols, channels); the others peak at 5-D."""
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    import torch

    from edgevit.exporters.executorch import XNNPACK_MAX_DIMS, check_xnnpack_ranks
    from edgevit.exporters.onnx_scan import scan_export_mode
    from edgevit.exporters.transforms import fold_batchnorm
    from edgevit.exporters.xnnpack_forms import xnnpack_decompositions
    from edgevit.models import create_model

    model = fold_batchnorm(create_model("a2mamba-n").eval())
    with scan_export_mode("decomposed"), torch.no_grad():
        program = torch.export.export(model, (torch.zeros(1, 3, *SIZE),))
    program = program.run_decompositions(xnnpack_decompositions())
    ranks = [n.meta["val"].dim() for n in program.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    assert max(ranks) == XNNPACK_MAX_DIMS  # the tiled logits are 6-D: the check has something to see
    check_xnnpack_ranks(program, "a2mamba-n")


def test_executorch_refuses_a_graph_xnnpack_cannot_hold_before_lowering(tmp_path: Path) -> None:
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    import torch

    from edgevit.artifact import ArtifactMetadata
    from edgevit.exporters.executorch import ExecuTorchOptions, export_executorch

    class SevenD(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, 1, 3, 2, 2, 2, 2).permute(0, 1, 2, 4, 3, 5, 6).reshape(x.shape) * 2

    meta = ArtifactMetadata(model="toy", input_size=(4, 4), mean=(0.5,) * 3, std=(0.25,) * 3, batch=1)
    with pytest.raises(EdgevitError, match=r"7-D tensor .* at most 6 dimensions.*--delegate portable"):
        export_executorch(SevenD(), tmp_path / "toy.pte", ExecuTorchOptions(), meta)
    assert not (tmp_path / "toy.pte").exists()
    export_executorch(SevenD(), tmp_path / "toy.pte", ExecuTorchOptions(delegate="portable"), meta)


@pytest.mark.slow  # minutes per family (a2mamba-n: ~10 min of lowering even at 64x64)
@pytest.mark.parametrize("name", SMALLEST)
def test_smallest_variant_of_every_family_exports_to_executorch(name: str,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    report = exported(tmp_path_factory, "executorch", name)
    assert report.parity is not None and report.parity.passed and report.parity.worst_rel <= 1e-4
    manifest = json.loads(Path(str(report.path) + ".json").read_text())
    assert manifest["backends"] == ["XnnpackBackend"]
    print(name, manifest["delegation"])


@pytest.fixture(scope="module")  # int8 lowering: ~3.5 min at 64x64 on 2 cores (quantize 45 s, lower 110 s)
def pte_int8(tmp_path_factory: pytest.TempPathFactory) -> pipeline.ExportReport:
    """int8 exported without the gate (whether an export clears it is a measurement on 500 images at 224,
    not a unit test at 64x64); the tests below check the program and `verify`'s agreement path."""
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    out = tmp_path_factory.mktemp("et-int8") / "q.pte"
    return pipeline.export(MODEL, "executorch", out, input_size=SIZE, verify=False,
                           format_options=format_options("executorch", precision="int8"))


@pytest.mark.slow
def test_executorch_int8_program_holds_int8_weights_inside_xnnpack(pte: pipeline.ExportReport,
                                                                   pte_int8: pipeline.ExportReport) -> None:
    manifest = json.loads(Path(str(pte_int8.path) + ".json").read_text())
    delegation = manifest["delegation"]
    # every quantize/dequantize pair runs in the delegate: none is left to ExecuTorch's portable kernels
    assert not [op for op in delegation["non_delegated_by_op"] if "quantize" in op], delegation
    assert manifest["backends"] == ["XnnpackBackend"]
    # convolution weights stored as int8 (1 byte instead of 4); the logits' Linear (2 M of s2aformer-mini's
    # 4.9 M parameters) stays float by rule, so the program shrinks by the convolutions' 3 bytes per weight
    conv_params = sum(m.weight.numel() for m in create_model(MODEL).modules() if isinstance(m, torch.nn.Conv2d))
    assert pte.path.stat().st_size - pte_int8.path.stat().st_size > 0.9 * 3 * conv_params
    meta = pte_int8.metadata
    assert meta.extra["precision"] == "int8" and meta.extra["calibration"].startswith("synthetic")
    reasons = json.loads(meta.extra["kept_in_float"])
    assert set(reasons) <= {r.describe() for r in keep_float_rules("S2AFormer")} | {OUTPUT_REASON}
    assert OUTPUT_REASON in reasons and len(reasons) >= 2, reasons  # the head and the attention-weighting rule


@pytest.mark.slow
def test_executorch_int8_program_is_verified_by_agreement(pte_int8: pipeline.ExportReport) -> None:
    report = pipeline.verify(None, pte_int8.path, eval_images=16)
    assert isinstance(report, AgreementReport) and report.images == 16
    assert report.candidate == "executorch (int8+fp32)" and report.top5 >= 0.9  # int8 noise, not a broken graph


@pytest.mark.slow  # a second int8 lowering
def test_miscalibrated_executorch_int8_fails_verification_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges from inputs 1000x too small (a preprocessing mismatch) saturate every activation: the agreement
    check must catch it before the program appears."""
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    real = CalibrationSource.batches
    monkeypatch.setattr(CalibrationSource, "batches", lambda self, *a: [b * 1e-3 for b in real(self, *a)])
    with pytest.raises(VerificationError, match="disagrees with fp32"):
        pipeline.export(MODEL, "executorch", tmp_path / "q.pte", input_size=SIZE, eval_images=32,
                        format_options=format_options("executorch", precision="int8"))
    assert list(tmp_path.iterdir()) == []


def test_executorch_int8_options_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(EdgevitError, match="XNNPACK delegate"):
        format_options("executorch", precision="int8", delegate="portable")
    with pytest.raises(EdgevitError, match="only applies to --precision int8"):
        format_options("executorch", calib_images=tmp_path)
    with pytest.raises(EdgevitError, match="fp32 or int8"):
        format_options("executorch", precision="fp16")
    with pytest.raises(EdgevitError, match="verified by top-1 agreement"):
        pipeline.export(MODEL, "executorch", tmp_path / "q.pte", input_size=SIZE, rtol=1e-2,
                        format_options=format_options("executorch", precision="int8"))
    assert not list(tmp_path.iterdir())
