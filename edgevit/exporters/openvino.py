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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifact import PREFIX, ArtifactMetadata
from ..errors import BackendUnavailableError, EdgevitError
from ..images import fit_to, image_files, read_image, synthetic_images, to_tensor
from .onnx import OnnxOptions

PRECISIONS = ("fp32", "fp16", "int8")
IR_FILE = "model.xml"
MANIFEST_FILE = "manifest.json"
RT_SECTION = "edgevit"
PREPROCESS_U8 = "uint8-nhwc-rgb"  # value of the ``preprocess`` metadata key when it is embedded
DEFAULT_CALIB_COUNT = 64  # synthetic calibration images
MAX_CALIB_IMAGES = 300  # from a folder: NNCF's default subset size

# NNCF must not quantize the producers of values that are compared or ranked (a token near a hashing
# hyperplane or a top-k boundary changes branch under int8 noise: DualFormer's LSH, PartialFormer's
# token selection) nor matrix products of exponentiated values: the selective scan's decay matrix
# exp(segment sum) spans many orders of magnitude (A2Mamba), as do unnormalised exp weights (DualFormer). Softmax, LayerNorm (MVN) and GELU stay in float anyway
# with ``ModelType.TRANSFORMER``.
_DECISIONS = {"Greater", "GreaterEqual", "Less", "LessEqual", "Equal", "NotEqual", "TopK"}
_QUANTIZABLE = {"MatMul", "Convolution", "GroupConvolution"}
_SCAN_MARKERS = {"Exp", "CumSum"}
_SEARCH_HOPS = 8


@dataclass(frozen=True)
class OpenVinoExportOptions:
    """What a user can choose about an OpenVINO IR (a row of :mod:`edgevit.formats`); ``onnx`` are the
    options of the ONNX intermediate the IR is converted from."""

    precision: str = "fp32"
    embed_preprocess: bool = False
    calib_images: Path | None = None  # a folder of images; None: deterministic synthetic calibration set
    calib_count: int = DEFAULT_CALIB_COUNT  # size of the synthetic set
    calib_seed: int = 0
    onnx: OnnxOptions = field(default_factory=OnnxOptions)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgevitError(f"unknown OpenVINO precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.calib_images is not None and self.precision != "int8":
            raise EdgevitError("--calib-images only applies to --precision int8")
        if self.calib_images is not None:
            image_files(self.calib_images)  # a missing or empty folder fails now, not after the export
        if self.calib_count < 1:
            raise EdgevitError(f"the calibration set needs at least one image, got {self.calib_count}")

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
    """Normalised NCHW float32 batches for NNCF, and a line saying where they came from.

    Batches have the artifact's static batch size (or 1 for a dynamic batch). Images go through the
    deployment preprocessing contract of :mod:`edgevit.images` (centre crop, bilinear resize, mean/std).
    """
    batch = meta.batch or 1
    if options.calib_images is not None:
        files = image_files(options.calib_images)[:MAX_CALIB_IMAGES]
        images = np.stack([fit_to(read_image(f), meta.input_size) for f in files])
        source = f"{len(files)} images from {Path(options.calib_images).resolve()}"
    else:
        images = synthetic_images(options.calib_count, meta.input_size, options.calib_seed)
        source = (f"synthetic: {options.calib_count} deterministic smooth-noise images "
                  f"(edgevit.images.synthetic_images, seed {options.calib_seed}); "
                  "pass --calib-images DIR for a representative set")
    x = to_tensor(images, meta.mean, meta.std)
    if len(x) < batch:  # fewer images than one static batch: repeat them
        x = np.concatenate([x] * -(-batch // len(x)))
    usable = (len(x) // batch) * batch
    return [x[i:i + batch] for i in range(0, usable, batch)], source


def precision_sensitive_nodes(model: Any) -> dict[str, str]:
    """Names of quantizable ops that must stay in float, with the reason (see ``_DECISIONS``)."""
    keep: dict[str, str] = {}
    for node in model.get_ops():
        kind = node.get_type_name()
        if kind in _DECISIONS:
            for producer in _producers(node, _QUANTIZABLE):
                keep.setdefault(producer.get_friendly_name(), f"feeds {kind} {node.get_friendly_name()}")
        elif kind in _QUANTIZABLE and _reaches(node, _SCAN_MARKERS):
            keep.setdefault(node.get_friendly_name(), f"product of exponentiated values ({kind} after Exp/CumSum)")
    return keep


def _inputs(node: Any) -> Iterable[Any]:
    return (i.get_source_output().get_node() for i in node.inputs())


def _producers(node: Any, kinds: set[str]) -> list[Any]:
    """The nearest ops of ``kinds`` upstream of ``node`` on every path (at most ``_SEARCH_HOPS`` deep)."""
    found, frontier, seen = [], list(_inputs(node)), set()
    for _ in range(_SEARCH_HOPS):
        nxt = []
        for n in frontier:
            if id(n) in seen or n.get_type_name() in ("Constant", "Parameter"):
                continue
            seen.add(id(n))
            if n.get_type_name() in kinds:
                found.append(n)
            else:
                nxt.extend(_inputs(n))
        frontier = nxt
    return found


def _reaches(node: Any, kinds: set[str], hops: int = 3) -> bool:
    """True when an op of ``kinds`` is at most ``hops`` steps upstream (through reshapes/selects)."""
    frontier = list(_inputs(node))
    for _ in range(hops):
        if any(n.get_type_name() in kinds for n in frontier):
            return True
        frontier = [p for n in frontier if n.get_type_name() not in _QUANTIZABLE for p in _inputs(n)]
    return False


def quantize_int8(model: Any, samples: Sequence[np.ndarray]) -> tuple[Any, dict[str, str]]:
    """NNCF post-training INT8 (mixed preset: symmetric weights, asymmetric activations) with the
    transformer scheme and the precision-sensitive ops kept in float; returns the model and what was kept."""
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailableError("--precision int8 needs NNCF: pip install 'edgevit[openvino-int8]' "
                                      "(or pip install nncf)") from exc
    keep = precision_sensitive_nodes(model)
    with _stdout_to_stderr():
        quantized = nncf.quantize(
            model, nncf.Dataset(list(samples)), preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples),
            ignored_scope=nncf.IgnoredScope(names=sorted(keep), validate=False),
        )
    return quantized, keep


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """NNCF logs and draws progress bars on stdout; ``--json`` output must stay parseable."""
    from nncf.common.logging import nncf_logger

    handlers = [h for h in nncf_logger.handlers if isinstance(h, logging.StreamHandler)]
    streams = [h.setStream(sys.stderr) for h in handlers]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for h, stream in zip(handlers, streams):
            h.setStream(stream)


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


def read_metadata(model: Any) -> ArtifactMetadata | None:
    """Edgevit metadata from an ``ov.Model``'s rt_info: the ``edgevit`` section of an exported IR, or the
    ONNX metadata_props that the ONNX frontend puts under ``framework``; ``None`` for a foreign model."""
    if model.has_rt_info([RT_SECTION]):
        section = model.get_rt_info()[RT_SECTION]
        return ArtifactMetadata.from_props({PREFIX + k: v.astype(str) for k, v in section.items()})
    if model.has_rt_info(["framework"]):
        section = model.get_rt_info()["framework"]
        return ArtifactMetadata.from_props({k: v.astype(str) for k, v in section.items() if k.startswith(PREFIX)})
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
        model, notes["kept_in_float"] = quantize_int8(model, samples)
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
    path = directory / MANIFEST_FILE
    if not path.exists():
        return None
    return ArtifactMetadata.from_props(json.loads(path.read_text()).get("metadata", {}))


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
