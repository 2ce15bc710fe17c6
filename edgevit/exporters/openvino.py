"""OpenVINO IR (``model.xml`` + ``model.bin``) from the verified ONNX export.

Why from ONNX and not ``ov.convert_model(torch_module)``: the ONNX export is the one path edgevit
verifies op by op (BatchNorm folding, static shapes, the selective-scan modes), so the IR inherits
that verified graph instead of a second tracing of the model. The steps here are pure graph work;
:func:`edgevit.pipeline.export` runs them and verifies the result in the OpenVINO runtime.

* ONNX model-local functions (``--scan custom`` writes ``edgevit.SelectiveScan`` with a function body)
  are inlined first: OpenVINO 2026 does not resolve them.
* ``fp16`` halves the file (weights stored as fp16, decompressed at load); ``int8`` is NNCF
  post-training quantization (:func:`quantize_int8`) calibrated on user images or, without them, on a
  deterministic synthetic set, and says which in the manifest.
* ``embed_preprocess`` prepends OpenVINO's PrePostProcessor: the IR then takes uint8 NHWC RGB frames and
  does the mean/std normalisation and the layout change inside, so an app feeds camera frames directly.
* The edgevit metadata goes into the IR's ``rt_info`` (section ``edgevit``), readable from C++ with
  ``model->get_rt_info<std::string>("edgevit", key)``, and into ``manifest.json`` beside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifact import PREFIX, ArtifactMetadata, read_manifest
from ..errors import BackendUnavailableError, EdgevitError
from ..models.int8_rules import KeepFloat, keep_float_rules
from ..models.registry import get_model_card
from ..quantization.calibration import CalibrationSource, calibration_option
from ..quantization.float_rules import GROUP_CONV, QUANTIZABLE, GraphView, kept_in_float
from .onnx import OnnxOptions

PRECISIONS = ("fp32", "fp16", "int8")
IR_FILE = "model.xml"
MANIFEST_FILE = "manifest.json"
RT_SECTION = "edgevit"
PREPROCESS_U8 = "uint8-nhwc-rgb"  # value of the ``preprocess`` metadata key when it is embedded
# ONNX op type -> OpenVINO op types, so the families' keep-in-float rules (written in ONNX names,
# edgevit.models.int8_rules) apply to an IR converted from that ONNX graph.
OV_ALIASES: dict[str, frozenset[str]] = {
    "Conv": frozenset({"Convolution", "GroupConvolution"}),
    GROUP_CONV: frozenset({"GroupConvolution"}),
    "ConvTranspose": frozenset({"ConvolutionBackpropData", "GroupConvolutionBackpropData"}),
    "Gemm": frozenset({"MatMul"}),
    "Softmax": frozenset({"SoftMax", "Softmax"}),
    "LayerNormalization": frozenset({"MVN"}),
    "InstanceNormalization": frozenset({"MVN"}),
    "GroupNormalization": frozenset({"GroupNormalization", "MVN"}),
    "BatchNormalization": frozenset({"BatchNormInference"}),
    "GreaterOrEqual": frozenset({"GreaterEqual"}),
    "LessOrEqual": frozenset({"LessEqual"}),
    "Softplus": frozenset({"SoftPlus"}),
}


@dataclass(frozen=True)
class OpenVinoExportOptions:
    """What a user can choose about an OpenVINO IR (a row of :mod:`edgevit.formats`); ``onnx`` are the
    options of the ONNX intermediate the IR is converted from."""

    precision: str = "fp32"
    embed_preprocess: bool = False
    calib_images: Path | None = None  # int8: a folder of calibration images; None: the synthetic set
    calib_count: int | None = None  # int8: calibration images (None: calibration.DEFAULT_CALIB_COUNT)
    onnx: OnnxOptions = field(default_factory=OnnxOptions)

    def calibration(self) -> CalibrationSource:
        return calibration_option(self.calib_images, self.precision, self.calib_count)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgevitError(f"unknown OpenVINO precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.calibration()

    def metadata(self) -> dict[str, str]:
        return {"preprocess": PREPROCESS_U8 if self.embed_preprocess else "none"}

    def check(self, batch: int | None) -> None:
        """Any batch converts; nothing to check against the common options."""


def ir_dir_name(stem: str, options: OpenVinoExportOptions) -> str:
    """``<stem>-openvino-<precision>[-u8]``: one folder per artifact, named predictably for scripts."""
    return f"{stem}-openvino-{options.precision}" + ("-u8" if options.embed_preprocess else "")


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError("OpenVINO export needs the 'openvino' package: pip install openvino") from exc
    return openvino


def check_available() -> None:
    """The openvino package, checked before the ONNX intermediate is exported."""
    _ov()


def read_onnx(path: str | Path) -> Any:
    """An ONNX file -> ``ov.Model``, with model-local functions inlined first (OpenVINO cannot resolve them)."""
    ov = _ov()
    proto = onnx.load(str(path))
    if not proto.functions:
        return ov.convert_model(str(path))
    from onnx import inliner

    with tempfile.TemporaryDirectory(prefix="edgevit-inline-") as tmp:
        inlined = Path(tmp) / "inlined.onnx"
        onnx.save(inliner.inline_local_functions(proto), str(inlined))
        return ov.convert_model(str(inlined))


def calibration_set(meta: ArtifactMetadata, options: OpenVinoExportOptions) -> tuple[list[np.ndarray], str]:
    """Normalised NCHW float32 batches for NNCF (the artifact's static batch, 1 for a dynamic batch) from
    the one calibration source of every INT8 export, and a line saying where they came from."""
    source = options.calibration()
    return source.batches(meta.input_size, meta.mean, meta.std, meta.batch), source.describe()


def ov_graph_view(model: Any) -> GraphView[Any]:
    """The keep-in-float rules' view of an ``ov.Model`` (constants and parameters end a search)."""
    def inputs(node: Any) -> list[Any]:
        producers = (i.get_source_output().get_node() for i in node.inputs())
        return [p if p.get_type_name() not in ("Constant", "Parameter") else None for p in producers]

    return GraphView(nodes=list(model.get_ordered_ops()), kind=lambda n: n.get_type_name(),
                     name=lambda n: n.get_friendly_name(), inputs=inputs, aliases=OV_ALIASES)


def precision_sensitive_nodes(model: Any, rules: Sequence[KeepFloat]) -> dict[str, str]:
    """Names of the ops the family's rules keep in float, with the reason."""
    return kept_in_float(ov_graph_view(model), rules)


def quantize_int8(model: Any, samples: Sequence[np.ndarray], rules: Sequence[KeepFloat]) -> tuple[Any, dict[str, str]]:
    """NNCF post-training INT8 (mixed preset: symmetric per-channel weights, asymmetric activations) with the
    ops of the family's keep-in-float ``rules`` left in float; returns the model and what was kept.

    Activation ranges are the min/max over the whole calibration set, as in the ONNX path. NNCF's default
    averages each batch's min and max, which clips every activation to its typical, not its largest, value
    (the calibration batches are single images): measured at 224x224 on 100 evaluation images, mean logit
    error emsnet-xxtiny 0.306 -> 0.112, mat-1 0.129 -> 0.053, s2aformer-mini 0.114 -> 0.112, with the generic
    model type; NNCF's transformer scheme (SmoothQuant, more quantized eltwise ops) was worse on emsnet-xxtiny
    (0.149) and mat-1 (0.129).
    """
    try:
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet
    except ImportError as exc:
        raise BackendUnavailableError("--precision int8 needs NNCF: pip install 'edgevit[openvino-int8]' "
                                      "(or pip install nncf)") from exc
    keep = precision_sensitive_nodes(model, rules)

    def run(bias_correction: bool) -> Any:
        advanced = AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            disable_bias_correction=not bias_correction)
        with _stdout_to_stderr():
            return nncf.quantize(
                model, nncf.Dataset(list(samples)), preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(samples), advanced_parameters=advanced,
                ignored_scope=nncf.IgnoredScope(names=sorted(keep), types=not_quantized_types(model), validate=False))

    try:
        return run(bias_correction=True), keep
    except ValueError as exc:
        # NNCF's fast bias correction takes the constant of an Add after a MatMul for that MatMul's bias; on
        # a2mamba-n that constant is a per-position bias (32 x 56 x 56) and NNCF fails reshaping it to (1, 32, 1).
        # Bias correction only nudges biases; the ranges and the int8 weights are the same without it.
        warnings.warn(f"OpenVINO int8: NNCF bias correction failed ({exc}); quantized without it", stacklevel=2)
        return run(bias_correction=False), keep


def not_quantized_types(model: Any) -> list[str]:
    """The op types of ``model`` NNCF must leave alone: all but the convolutions and MatMuls, as in the ONNX
    recipe. Left to itself NNCF also quantizes the inputs of elementwise Add/Multiply/Concat/ReduceMean...
    Measured on dualformer-t at 224x224 (200 evaluation images): 428 FakeQuantize, logit error 0.265 and 77.8 %
    decisive agreement; with only Conv/MatMul quantized 157 FakeQuantize, 0.075 and 100 %."""
    view = ov_graph_view(model)
    return sorted({view.kind(op) for op in view.nodes} - view.types(QUANTIZABLE) - {"Parameter", "Result", "Constant"})


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """NNCF logs and draws progress bars on stdout; ``--json`` output must stay parseable."""
    from nncf.common.logging import nncf_logger

    handlers = [h for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler)]
    streams = [_swap_stream(h, sys.stderr) for h in handlers]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for h, stream in zip(handlers, streams):
            _swap_stream(h, stream)


def _swap_stream(handler: logging.StreamHandler, stream: Any) -> Any:
    """``handler.setStream`` without its flush of the old stream, which raises when that stream was closed
    (NNCF's handler keeps the stdout it saw at import: a closed capture buffer in a test runner or notebook)."""
    with handler.lock:
        old, handler.stream = handler.stream, stream
    return old


def embed_preprocessing(model: Any, mean: Sequence[float], std: Sequence[float]) -> Any:
    """uint8 NHWC RGB in; ``(x - 255 mean) / (255 std)`` and NHWC->NCHW inside the IR."""
    ov = _ov()
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32) \
        .mean([255.0 * m for m in mean]).scale([255.0 * s for s in std])
    return ppp.build()


def set_metadata(model: Any, meta: ArtifactMetadata) -> None:
    """Write ``meta`` into the IR's rt_info section ``edgevit`` (keys without the ``edgevit.`` prefix)."""
    for key, value in meta.to_props().items():
        model.set_rt_info(value, [RT_SECTION, key[len(PREFIX):]])


def read_metadata(model: Any, source: str = "the IR") -> ArtifactMetadata | None:
    """Edgevit metadata from an ``ov.Model``'s rt_info: the ``edgevit`` section of an exported IR, or the
    ONNX metadata_props that the ONNX frontend puts under ``framework``; ``None`` for a foreign model."""
    if model.has_rt_info([RT_SECTION]):
        section = model.get_rt_info()[RT_SECTION]
        return ArtifactMetadata.from_props({PREFIX + k: v.astype(str) for k, v in section.items()}, source)
    if model.has_rt_info(["framework"]):
        section = model.get_rt_info()["framework"]
        return ArtifactMetadata.from_props({k: v.astype(str) for k, v in section.items() if k.startswith(PREFIX)},
                                           source)
    return None


def save_ir(model: Any, directory: Path, meta: ArtifactMetadata, precision: str) -> Path:
    """``directory/model.xml`` + ``.bin`` with metadata in rt_info; fp16 compresses the stored weights."""
    ov = _ov()
    set_metadata(model, meta)
    xml = directory / IR_FILE
    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    return xml


def export_artifact(source: Path, directory: Path, options: OpenVinoExportOptions,
                    meta: ArtifactMetadata) -> ArtifactMetadata:
    """The OpenVINO row's exporter: the ONNX intermediate ``source`` -> an IR folder ``directory`` (IR,
    rt_info metadata and ``manifest.json``); int8 quantizes and records where its calibration came from."""
    model = read_onnx(source)
    notes: dict[str, Any] = {}
    if options.precision == "int8":
        samples, notes["calibration"] = calibration_set(meta, options)
        model, notes["kept_in_float"] = quantize_int8(model, samples, keep_float_rules(get_model_card(meta.model).family))
        meta = replace(meta, extra={**meta.extra, "calibration": notes["calibration"]})
    if options.embed_preprocess:
        model = embed_preprocessing(model, meta.mean, meta.std)
    save_ir(model, directory, meta, options.precision)
    write_manifest(directory, meta, model, notes)
    return meta


def record_parity(directory: Path, parity: dict[str, Any]) -> None:
    """Add the verification result to ``manifest.json`` (the manifest is written before verification)."""
    path = directory / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["parity"] = parity
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def read_artifact_metadata(directory: Path) -> ArtifactMetadata | None:
    """Edgevit metadata of an IR folder from its manifest (without OpenVINO)."""
    manifest = read_manifest(directory / MANIFEST_FILE)
    return None if manifest is None else ArtifactMetadata.from_props(manifest["metadata"], str(directory / MANIFEST_FILE))


def write_manifest(directory: Path, meta: ArtifactMetadata, model: Any, extra: dict[str, Any]) -> Path:
    """``manifest.json``: what the IR is, for people and for tools that do not parse XML."""
    ov = _ov()
    port = model.inputs[0]
    manifest = {
        "format": "openvino-ir",
        "files": {"xml": IR_FILE, "bin": Path(IR_FILE).with_suffix(".bin").name},
        "model": meta.model,
        "input": {"name": port.get_any_name(), "shape": _shape(port), "dtype": port.get_element_type().get_type_name(),
                  "layout": "NHWC" if meta.extra.get("preprocess") == PREPROCESS_U8 else "NCHW"},
        "outputs": [{"name": o.get_any_name(), "shape": _shape(o)} for o in model.outputs],
        "mean": list(meta.mean), "std": list(meta.std),
        "precision": meta.extra.get("precision"),
        "preprocess": meta.extra.get("preprocess", "none"),
        "scan": meta.extra.get("scan"),
        "versions": {"edgevit": meta.edgevit_version, "openvino": ov.get_version()},
        **extra,
        "metadata": meta.to_props(),
    }
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def _shape(port: Any) -> list[int | str]:
    return [d.get_length() if d.is_static else "batch" if i == 0 else "dynamic"
            for i, d in enumerate(port.get_partial_shape())]
