"""The format table: every option a format allows changes the artifact or is refused, and an option a
format does not take is a one-line error (never ignored). Smallest model, 64x64, no verification: this
is about where options go, parity is tested per format elsewhere."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgevit import formats, pipeline
from edgevit.artifact import ArtifactMetadata
from edgevit.cli import app
from edgevit.errors import EdgevitError

MODEL = "s2aformer-mini"

# For every (format, option): a value other than the default, and whether it must change the artifact
# ("changes") or be refused before anything is written ("refused", with the message). A new row or option
# without an entry here fails test_every_allowed_option_is_covered.
CASES: dict[str, dict[str, tuple[Any, str]]] = {
    "onnx": {
        "precision": ("int8", "changes"),  # agreement and the QDQ graph: tests/quantization/test_onnx_qdq.py
        "calib_images": (Path("."), "refused: only applies to --precision int8"),
        "calib_count": (8, "refused: --calib-count only applies to --precision int8"),
        "opset": (20, "changes"),
        "simplify": (False, "changes"),
        "scan": ("custom", "refused: has no selective scans"),  # s2aformer has none; A2Mamba's tested in its file
    },
    "openvino": {
        "precision": ("fp16", "changes"),
        "embed_preprocess": (True, "changes"),
        "calib_images": (Path("."), "refused: only applies to --precision int8"),  # int8: test_openvino.py
        "calib_count": (8, "refused: --calib-count only applies to --precision int8"),  # int8: test_openvino.py
        "opset": (20, "changes"),
        "simplify": (False, "changes"),
        "scan": ("custom", "refused: has no selective scans"),
    },
    # No GPU here: TensorRT's own options are checked for validation; the ONNX options for reaching its
    # intermediate (the engine builder is replaced by a copy of the intermediate ONNX, see fake_tensorrt).
    "tensorrt": {
        "precision": ("int8", "refused: fp32 or fp16"),
        "opt_batch": (4, "refused: add --dynamic-batch"),
        "max_batch": (8, "refused: add --dynamic-batch"),
        "workspace": (0.0, "refused: must be positive"),
        "opset": (20, "changes"),
        "simplify": (False, "changes"),
        "scan": ("custom", "refused: has no selective scans"),
    },
    "executorch": {
        "delegate": ("portable", "changes"),
        "xnnpack_forms": (False, "changes"),
        "scan": ("custom", "refused: need the decomposed selective scan"),
        # int8 "changes" costs ~3.5 min of lowering: tests/exporters/test_mobile_formats.py (slow) checks it
        "precision": ("fp16", "refused: fp32 or int8"),
        "calib_images": (Path("."), "refused: only applies to --precision int8"),
        "calib_count": (8, "refused: --calib-count only applies to --precision int8"),
    },
    "ort": {
        "target_platform": ("amd64", "changes"),
        "opset": (20, "changes"),
        "simplify": (False, "changes"),
        "scan": ("custom", "refused: has no selective scans"),
    },
}


def test_every_allowed_option_is_covered() -> None:
    assert {name: set(fmt.cli_options) for name, fmt in formats.FORMATS.items()} == \
        {name: set(options) for name, options in CASES.items()}


def test_every_format_option_is_a_field_and_a_flag_of_the_export_command() -> None:
    import inspect

    from edgevit.cli import export as export_command

    params = inspect.signature(export_command).parameters
    for fmt in formats.FORMATS.values():
        fields = fmt.own_fields() | (formats.get_format(fmt.intermediate).own_fields() if fmt.intermediate else set())
        assert set(fmt.cli_options) <= fields, fmt.name
        for option in fmt.cli_options:  # None default: "given" means typed by the user, not "differs from default"
            assert option in params and params[option].default is None, option


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TensorRT row with its engine builder replaced by a copy of the intermediate ONNX file."""

    def copy_intermediate(source: Path, path: Path, options: Any, meta: ArtifactMetadata) -> ArtifactMetadata:
        options.profile(meta.batch)  # the real exporter's option checks still run
        shutil.copyfile(source, path)
        return meta

    row = dataclasses.replace(formats.FORMATS["tensorrt"], exporter=copy_intermediate, check_available=None,
                              companions=lambda path: [])
    monkeypatch.setitem(formats.FORMATS, "tensorrt", row)


def artifact_bytes(path: Path) -> bytes:
    """The artifact's content (an IR folder: the IR itself, not its manifest)."""
    if path.is_dir() and (path / "model.ort").exists():
        return (path / "model.ort").read_bytes()
    if path.is_dir():
        return (path / "model.xml").read_bytes() + (path / "model.bin").read_bytes()
    return path.read_bytes()


def export(to: str, out: Path, **values: Any) -> Path:
    return pipeline.export(MODEL, to, out, format_options=formats.format_options(to, **values), input_size=64,
                           verify=False).path


# ExecuTorch lowers three programs here (minutes on 2 cores): slow; its options are also covered, fast, on a
# small network in tests/exporters/test_executorch.py.
# OpenVINO (80 s) is slow too: its options are covered fast in tests/exporters/test_openvino.py
@pytest.mark.parametrize("to", [pytest.param(t, marks=pytest.mark.slow) if t in ("executorch", "openvino") else t
                                for t in CASES])
def test_every_allowed_option_changes_the_artifact_or_is_refused(to: str, tmp_path: Path,
                                                                 fake_tensorrt: None) -> None:
    baseline = artifact_bytes(export(to, tmp_path / "default"))
    for option, (value, expect) in CASES[to].items():
        out = tmp_path / option
        if expect == "changes":
            assert artifact_bytes(export(to, out, **{option: value})) != baseline, f"{to} --{option} changed nothing"
        else:
            with pytest.raises(EdgevitError, match=expect.removeprefix("refused: ")):
                export(to, out, **{option: value})
            assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args,needle", [
    (("--workspace", "2"), ("--to onnx does not take --workspace; it takes --precision, --calib-images, --calib-count, "
                            "--opset, "
                            "--simplify/--no-simplify, --scan")),
    (("--embed-preprocess",), "--to onnx does not take --embed-preprocess"),  # given explicitly, even if false
    (("--to", "openvino", "--max-batch", "4", "--no-simplify"), "--to openvino does not take --max-batch; it takes"),
    (("--to", "tensorrt", "--embed-preprocess"), "--to tensorrt does not take --embed-preprocess"),
])
def test_cli_refuses_an_option_the_format_does_not_take(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", MODEL, "--input-size", "64", "-o", str(tmp_path / "x"), *args])
    assert res.exit_code == 2, res.output
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_python_api_refuses_format_options_as_keywords() -> None:
    with pytest.raises(EdgevitError, match="precision is not common.*format_options"):
        pipeline.export(MODEL, "openvino", precision="fp16")
    with pytest.raises(EdgevitError, match="takes OpenVinoExportOptions"):
        pipeline.export(MODEL, "openvino", format_options=formats.format_options("onnx"))
