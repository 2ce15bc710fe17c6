"""ONNX export through the ``torch.export``-based exporter (``dynamo=True``), then optional onnxslim.

The exporter writes exactly what it is given to the path it is given; atomic placement and parity
verification are the caller's (``edgevit.pipeline``), so a Python user can export without verifying.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from ..artifact import ArtifactMetadata
from ..errors import EdgevitError
from ..models.ops.selective_scan import use_elementwise_softplus
from ..quantization.calibration import CalibrationSource, calibration_option
from .onnx_gelu import gelu_translation
from .onnx_scan import DOMAIN as SCAN_DOMAIN
from .onnx_scan import NODE_NAME as SCAN_NODE
from .onnx_scan import attach_scan_functions, check_scan_mode, scan_export_mode, translation_table
from .transforms import fold_batchnorm

DEFAULT_OPSET = 18
# The torch.export-based exporter writes opset 18 natively and converts up to the newest opset it knows;
# below 18 it needs the legacy version converter, which fails on edgevit's graphs.
OPSETS = range(18, 24)
INPUT_NAME = "input"


@dataclass(frozen=True)
class OnnxExportOptions:
    input_size: tuple[int, int] = (224, 224)
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    scan: str = "decomposed"  # selective scan as standard ops, or one custom node (see onnx_scan)


@dataclass(frozen=True)
class OnnxOptions:
    """What a user can choose about an ONNX artifact (a row of :mod:`edgevit.formats`); formats built from
    an ONNX intermediate (OpenVINO, TensorRT) carry one of these for it. Invalid values fail here, before
    any model is built."""

    opset: int = DEFAULT_OPSET
    simplify: bool = True  # onnxslim constant folding and fusion
    scan: str = "decomposed"  # selective scan as standard ops, or one custom node (see onnx_scan)
    precision: str = "fp32"  # or "int8": static QDQ (edgevit.quantization.onnx_qdq)
    calib_images: Path | None = None  # int8: a folder of calibration images; None: the synthetic set
    calib_count: int | None = None  # int8: calibration images (None: calibration.DEFAULT_CALIB_COUNT)

    def __post_init__(self) -> None:
        if self.opset not in OPSETS:
            raise EdgevitError(f"ONNX opset {self.opset} is not supported; choose {OPSETS[0]}..{OPSETS[-1]}")
        check_scan_mode(self.scan)
        self.calibration()

    def calibration(self) -> CalibrationSource:
        return calibration_option(self.calib_images, self.precision, self.calib_count)

    def metadata(self) -> dict[str, str]:
        return {"scan": self.scan}

    def check(self, batch: int | None) -> None:
        """Every batch (static or dynamic) is exportable; nothing to check against the common options."""


def export_artifact(model: nn.Module, path: Path, options: OnnxOptions, metadata: ArtifactMetadata) -> ArtifactMetadata:
    """The ONNX row's exporter: ``model`` -> ``path`` for ``metadata``'s input size and batch (None: dynamic).

    ``--scan custom`` on a model without selective scans would change nothing, so it is refused. int8: the
    fp32 graph is quantized to QDQ from the calibration source (:mod:`edgevit.quantization.onnx_qdq`).
    """
    export_options = OnnxExportOptions(metadata.input_size, metadata.batch or 1, metadata.batch is None,
                                       options.opset, options.simplify, options.scan)
    if options.precision == "int8":
        from ..quantization.onnx_qdq import export_int8

        fp32_meta = metadata
        metadata = export_int8(lambda fp32: export_onnx(model, fp32, export_options, fp32_meta), path,
                               options.calibration(), metadata)
    else:
        export_onnx(model, path, export_options, metadata)
    if options.scan != "decomposed":
        proto = onnx.load(str(path), load_external_data=False)
        if not any((node.domain, node.op_type) == (SCAN_DOMAIN, SCAN_NODE) for node in proto.graph.node):
            raise EdgevitError(f"{metadata.model} has no selective scans, so --scan {options.scan} changes nothing; "
                               "drop --scan (it applies to A2Mamba)")
    return metadata


def quiet_exporter() -> None:
    # The exporter warns about every torchvision op it cannot register; edgevit never uses torchvision.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


@contextlib.contextmanager
def _single_output_rewrites() -> Iterator[None]:
    """Run the exporter's graph optimizer without onnxscript's multi-output rewrite rules.

    Why: onnxscript (0.5-0.7) matches a pattern with several output nodes (its only such default rule is
    ``SlicesSplit``: sibling Slices -> one Split) by indexing the whole graph again for every node, so the
    pass costs O(nodes^2). A2Mamba's graph has ~3,300 nodes: the rule took most of its export (a2mamba-n at
    224: 154 s -> 60 s for export + verification). Constant folding and the single-output rules still run;
    what is lost is one Split where two Slices would do. Where onnxscript keeps its rules elsewhere, nothing
    changes.
    """
    from onnxscript import rewriter

    rules = getattr(rewriter, "_DEFAULT_REWRITE_RULES", None)
    if rules is None:
        yield
        return
    rewriter._DEFAULT_REWRITE_RULES = tuple(
        r for r in rules if getattr(getattr(r, "_target_pattern", None), "has_single_output_node", True))
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = rules


def export_onnx(model: nn.Module, path: str | Path, options: OnnxExportOptions, metadata: ArtifactMetadata) -> Path:
    """Export ``model`` (eval mode, BatchNorm folded) to ``path`` with named I/O and edgevit metadata."""
    quiet_exporter()
    if options.batch < 1:
        raise EdgevitError(f"batch must be >= 1, got {options.batch}")
    check_scan_mode(options.scan)
    model = fold_batchnorm(model)
    prepare = getattr(model, "prepare_static_input", None)
    if callable(prepare):  # size-dependent constants (e.g. resized tables) become initializers, not ops
        prepare(options.input_size)
    output_names = list(getattr(model, "output_names", ["output"]))
    example = torch.zeros(options.batch if not options.dynamic_batch else 2, 3, *options.input_size)
    dynamic_shapes = None
    if options.dynamic_batch:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    # An exporter crash here is a bug in edgevit or torch, not a user error: it keeps its traceback.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        with scan_export_mode(options.scan), use_elementwise_softplus(), _single_output_rewrites():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=output_names,
                opset_version=options.opset,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
                custom_translation_table={**translation_table(options.scan), **gelu_translation()},
            )
    proto = attach_scan_functions(program.model_proto)
    if options.simplify:
        proto = _simplify(proto)
    proto.producer_name = "edgevit"
    props = metadata.to_props()
    props["edgevit.opset"] = str(written_opset(proto))
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    path = Path(path)
    onnx.save(proto, str(path))
    return path


def written_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the file really declares (what a runtime needs), not the one requested."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Constant-fold and fuse with onnxslim; a graph it cannot handle is kept as exported."""
    import onnxslim

    try:
        return onnxslim.slim(proto)
    except Exception as exc:  # onnxslim is an optimisation, never a reason to fail an export
        warnings.warn(f"onnxslim could not simplify the graph ({exc}); keeping the exported graph", stacklevel=2)
        return proto


def read_metadata(path: str | Path) -> ArtifactMetadata | None:
    """Edgevit metadata of an ONNX file (without loading its weights)."""
    proto = onnx.load(str(path), load_external_data=False)
    return ArtifactMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(path))
