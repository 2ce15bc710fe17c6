"""The table of export formats: everything edgevit knows about a format is one :class:`Format` row.

``pipeline.export`` and the ``edgevit export`` command are driven by :data:`FORMATS`; nothing else
branches on a format's name. Adding a format is one exporter module plus one row:

* an options dataclass (frozen; invalid values raise :class:`~edgevit.errors.EdgevitError` in
  ``__post_init__``) with ``metadata() -> dict[str, str]`` (what to record in the artifact) and
  ``check(batch)`` (checks against the common batch, ``None`` = dynamic); a ``precision`` field when the
  format has several precisions; an ``onnx: OnnxOptions`` field when it is built from an ONNX intermediate;
* ``export_artifact(source, path, options, meta) -> ArtifactMetadata`` writing exactly ``path`` (a file,
  or a folder that already exists), where ``source`` is the ``nn.Module`` or, for a derivative format,
  the verified intermediate artifact's path;
* a runtime backend registered in :mod:`edgevit.runtimes` that the row names as its verifier.

The pipeline does the rest for every row alike: option checks, model build, metadata, the intermediate,
atomic placement, verification against PyTorch with the row's default tolerance for the precision (or
the user's ``rtol``/``atol``), and the benchmark cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifact import ArtifactMetadata
from .errors import EdgevitError
from .exporters import executorch as executorch_exporter
from .exporters import onnx as onnx_exporter
from .exporters import openvino as openvino_exporter
from .exporters import ort_format as ort_exporter
from .exporters import tensorrt as tensorrt_exporter

FOLDER = "folder"  # ``Format.artifact`` of a format whose artifact is a directory

# Parity bounds (max abs error / max |reference|) by precision, used when the user gives no --rtol.
# fp32 artifacts match like ONNX Runtime (1e-4). fp16 stores weights (OpenVINO) or rounds activations
# (TensorRT, which keeps normalisation/softmax/scan in fp32) to a 10-bit mantissa: 1e-2 of the output range.
# int8 has no elementwise bound (AGREEMENT): it is verified by top-1 agreement with the fp32 model on a
# fixed evaluation set (edgevit.quantization.accuracy; README, INT8).
FP32_RTOL = 1e-4
FP16_RTOL = 1e-2
AGREEMENT = None


@dataclass(frozen=True)
class Format:
    """One export format. ``cli_options`` are the option fields the user may set (``opset`` ->
    ``--opset``); fields of the intermediate's options (``opset``, ``simplify``, ``scan``) go to ``onnx``."""

    name: str
    title: str  # for messages: "ONNX", "OpenVINO IR"
    artifact: str  # the file suffix (".onnx"), or FOLDER
    options_type: type
    exporter: Callable[[Any, Path, Any, ArtifactMetadata], ArtifactMetadata]
    runtime: str  # the edgevit.runtimes backend that verifies (and benchmarks) the artifact
    tolerance: Mapping[str, float | None]  # default rtol per precision (None: AGREEMENT); keys: the precisions taken
    cli_options: tuple[str, ...]
    default_name: Callable[[str, Any], str]  # (stem, options) -> file or folder name
    read_metadata: Callable[[Path], ArtifactMetadata | None]  # cheap, without the runtime (the benchmark cache)
    intermediate: str | None = None  # the format this one is converted from (its options: ``options.onnx``)
    runtime_options: Mapping[str, Any] = field(default_factory=dict)  # e.g. OpenVINO verifies in fp32
    companions: Callable[[Path], list[Path]] = lambda path: []  # files beside the artifact that move with it
    record_parity: Callable[[Path, dict[str, Any]], None] | None = None  # store the verification in the artifact
    check_available: Callable[[], None] | None = None  # packages/hardware, checked before any work
    verified_here: bool = True  # False: cannot run on edgevit's CPU-only development machines (unverified)

    def precision(self, options: Any) -> str:
        return str(getattr(options, "precision", "fp32"))

    def default_rtol(self, options: Any) -> float | None:
        return self.tolerance[self.precision(options)]

    def own_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.options_type)}


def _suffixed(suffix: str) -> Callable[[str, Any], str]:
    return lambda stem, options: f"{stem}{suffix}"


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    """Add a row (formats in optional packages can register themselves the same way)."""
    FORMATS[fmt.name] = fmt
    return fmt


register_format(Format(
    name="onnx", title="ONNX", artifact=".onnx", options_type=onnx_exporter.OnnxOptions,
    exporter=onnx_exporter.export_artifact, runtime="onnxruntime", tolerance={"fp32": FP32_RTOL, "int8": AGREEMENT},
    cli_options=("precision", "calib_images", "calib_count", "opset", "simplify", "scan"),
    default_name=lambda stem, options: f"{stem}{'-int8' if options.precision == 'int8' else ''}.onnx",
    read_metadata=onnx_exporter.read_metadata,
))
register_format(Format(
    name="openvino", title="OpenVINO IR", artifact=FOLDER, options_type=openvino_exporter.OpenVinoExportOptions,
    exporter=openvino_exporter.export_artifact, runtime="openvino",
    tolerance={"fp32": FP32_RTOL, "fp16": FP16_RTOL, "int8": AGREEMENT},
    cli_options=("precision", "embed_preprocess", "calib_images", "calib_count", "opset", "simplify", "scan"),
    default_name=lambda stem, options: openvino_exporter.ir_dir_name(stem, options),
    read_metadata=openvino_exporter.read_artifact_metadata, intermediate="onnx",
    runtime_options={"precision": "fp32"},  # the CPU plugin would otherwise run bf16 on AMX/AVX512-BF16 CPUs
    record_parity=openvino_exporter.record_parity, check_available=openvino_exporter.check_available,
))
register_format(Format(
    name="tensorrt", title="TensorRT engine", artifact=tensorrt_exporter.ENGINE_SUFFIX,
    options_type=tensorrt_exporter.TensorRTOptions, exporter=tensorrt_exporter.export_artifact, runtime="tensorrt",
    tolerance={"fp16": FP16_RTOL, "fp32": FP32_RTOL},
    cli_options=("precision", "opt_batch", "max_batch", "workspace", "opset", "simplify", "scan"),
    default_name=lambda stem, options: f"{stem}-{options.precision}{tensorrt_exporter.ENGINE_SUFFIX}",
    read_metadata=tensorrt_exporter.read_artifact_metadata, intermediate="onnx",
    companions=tensorrt_exporter.companions, check_available=tensorrt_exporter.check_available,
    verified_here=False,
))

register_format(Format(
    name="executorch", title="ExecuTorch program", artifact=executorch_exporter.PTE_SUFFIX,
    options_type=executorch_exporter.ExecuTorchOptions, exporter=executorch_exporter.export_artifact,
    runtime="executorch", tolerance={"fp32": FP32_RTOL, "int8": AGREEMENT},
    cli_options=("delegate", "xnnpack_forms", "scan", "precision", "calib_images", "calib_count"),
    default_name=lambda stem, options: (f"{stem}-{options.delegate}{'-int8' if options.precision == 'int8' else ''}"
                                        f"{executorch_exporter.PTE_SUFFIX}"),
    read_metadata=executorch_exporter.read_artifact_metadata, companions=executorch_exporter.companions,
    record_parity=executorch_exporter.record_parity, check_available=executorch_exporter.check_available,
))
register_format(Format(
    name="ort", title="ORT-format model", artifact=FOLDER, options_type=ort_exporter.OrtFormatOptions,
    exporter=ort_exporter.export_artifact, runtime="ort", tolerance={"fp32": FP32_RTOL},
    cli_options=("target_platform", "opset", "simplify", "scan"),
    default_name=lambda stem, options: f"{stem}-ort-{options.target_platform}",
    read_metadata=ort_exporter.read_artifact_metadata, intermediate="onnx", record_parity=ort_exporter.record_parity,
))


def all_cli_options() -> list[str]:
    """Every format option of the table, each once (the ``edgevit export`` command has a flag for each)."""
    return list(dict.fromkeys(o for fmt in FORMATS.values() for o in fmt.cli_options))


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise EdgevitError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def flag(option: str, value: Any = None) -> str:
    """The command-line spelling of an option field: ``calib_images`` -> ``--calib-images``."""
    name = option.replace("_", "-")
    return f"--no-{name}" if value is False else f"--{name}"


def allowed_flags(fmt: Format) -> str:
    return ", ".join(flag(o) + (f"/{flag(o, False)}" if _is_bool(fmt, o) else "") for o in fmt.cli_options)


def _is_bool(fmt: Format, option: str) -> bool:
    types = {f.name: f.type for f in dataclasses.fields(fmt.options_type)}
    if fmt.intermediate:
        types.update({f.name: f.type for f in dataclasses.fields(get_format(fmt.intermediate).options_type)})
    return types.get(option) in (bool, "bool")


def format_options(name: str, **values: Any) -> Any:
    """The options object of format ``name`` from option fields (CLI flags or Python keywords); a field the
    format does not take is a one-line error naming the format and what it does take, never ignored."""
    fmt = get_format(name)
    refused = [k for k in values if k not in fmt.cli_options]
    if refused:
        given = ", ".join(flag(k, values[k]) for k in refused)
        raise EdgevitError(f"--to {name} does not take {given}; it takes {allowed_flags(fmt) or 'no options'}")
    own = {k: v for k, v in values.items() if k in fmt.own_fields()}
    passed_on = {k: v for k, v in values.items() if k not in own}
    if passed_on:  # options of the intermediate format, e.g. --opset for OpenVINO
        own["onnx"] = format_options(fmt.intermediate or "", **passed_on)
    options = fmt.options_type(**own)
    check_precision(fmt, options)
    return options


def check_precision(fmt: Format, options: Any) -> None:
    if fmt.precision(options) not in fmt.tolerance:
        raise EdgevitError(f"{fmt.title} takes precision {' or '.join(fmt.tolerance)}, "
                           f"not {fmt.precision(options)!r}")


__all__ = ["FOLDER", "FORMATS", "Format", "format_options", "get_format", "register_format"]
