"""Static INT8 ONNX in the QDQ format (QuantizeLinear/DequantizeLinear pairs around integer-ready ops).

QDQ is the portable form of a quantized ONNX graph: ONNX Runtime fuses each ``DQ -> Conv/MatMul -> Q`` into
an integer kernel (VNNI/AMX on x86, dot-product instructions on ARM) and TensorRT reads it as explicit
quantization. The recipe:

* ONNX Runtime's ``quantize_static``, MinMax ranges measured on the one calibration source
  (:mod:`edgevit.quantization.calibration`), per-channel symmetric int8 weights;
* activations **uint8** (asymmetric): ONNX Runtime's x86 CPU kernels fuse u8-activation/s8-weight
  convolutions into ``QLinearConv``; with int8 activations it leaves most convolutions as float ``Conv``
  on dequantized inputs (measured: 61 of 109 in s2aformer-mini), slower than fp32. TensorRT needs int8
  symmetric activations instead: not a target of this recipe (see README, INT8);
* only Conv/ConvTranspose/MatMul/Gemm are quantized (the ops with integer kernels), minus the family's
  keep-in-float rules (:mod:`edgevit.models.int8_rules`) and the ops that produce the graph's outputs
  (logits rounded to 256 levels would tie).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from ..artifact import ArtifactMetadata
from ..errors import BackendUnavailableError
from ..models.int8_rules import KeepFloat, keep_float_rules
from .calibration import CalibrationSource, int8_metadata
from .float_rules import GROUP_CONV, OUTPUT_REASON, QUANTIZABLE, GraphView, kept_in_float


def onnx_graph_view(model: onnx.ModelProto) -> GraphView[onnx.NodeProto]:
    """The rules' view of an ONNX graph (nodes must be named; :func:`name_nodes` sees to it)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    return GraphView(nodes=list(model.graph.node), kind=_onnx_kind, name=lambda n: n.name,
                     inputs=lambda n: [producer.get(i) for i in n.input],
                     aliases={"Conv": frozenset({"Conv", GROUP_CONV})})


def _onnx_kind(node: onnx.NodeProto) -> str:
    """The op type, with a Conv of ``group > 1`` told apart as the rules' ``GroupConv``."""
    if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
        return GROUP_CONV
    return node.op_type


def name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes a unique name: exclusion lists and reports address nodes by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def float_nodes(model: onnx.ModelProto, rules: Sequence[KeepFloat]) -> dict[str, str]:
    """Node name -> reason for every quantizable node that stays float (the rules + the output producers)."""
    keep = kept_in_float(onnx_graph_view(model), rules)
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type in QUANTIZABLE and outputs.intersection(node.output):
            keep.setdefault(node.name, OUTPUT_REASON)
    return keep


def export_int8(export_fp32: Callable[[Path], object], path: Path, calibration: CalibrationSource,
                meta: ArtifactMetadata) -> ArtifactMetadata:
    """The ONNX row's int8 artifact: ``export_fp32(tmp)`` writes the fp32 graph, which is quantized into
    ``path`` with the family's keep-in-float rules; the metadata records the calibration and what stayed
    float (node count per reason)."""
    from ..models.registry import get_model_card

    samples = calibration.batches(meta.input_size, meta.mean, meta.std, meta.batch)
    with tempfile.TemporaryDirectory(prefix="edgevit-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_fp32(fp32)
        keep = quantize_qdq(onnx.load(str(fp32)), path, samples, keep_float_rules(get_model_card(meta.model).family))
    meta = int8_metadata(meta, calibration, keep)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return meta


def quantize_qdq(model: onnx.ModelProto, output: Path, samples: Sequence[np.ndarray],
                 rules: Sequence[KeepFloat], input_name: str = "input") -> dict[str, str]:
    """Write the QDQ INT8 form of ``model`` to ``output``; returns the nodes kept in float, with reasons.

    ``samples`` are whole input batches (the model's static batch). Model-local functions (``--scan custom``)
    are inlined first: the quantizer does not look inside them. Metadata props are carried over unchanged.
    """
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendUnavailableError("INT8 ONNX needs onnxruntime: pip install onnxruntime") from exc
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
    name_nodes(model)
    keep = float_nodes(model, rules)

    class Reader(CalibrationDataReader):
        """Feeds the calibration batches once, in order."""

        def __init__(self) -> None:
            self._batches = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with _quiet_quantizer():
        quantize_static(model, output, Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=sorted(QUANTIZABLE), per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=sorted(keep), calibrate_method=CalibrationMethod.MinMax)
    return keep


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs a line per tensor at INFO and advises pre-processing on every call."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
