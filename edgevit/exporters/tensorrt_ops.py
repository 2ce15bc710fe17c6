"""What the TensorRT ONNX parser accepts, as data, so CI (which has no GPU and no TensorRT) still catches
graphs TensorRT would reject.

Source: onnx/onnx-tensorrt ``docs/operators.md`` for TensorRT 10.15 (opset 9 to 24). Operators marked "N"
there are absent here; restrictions that our exporters could violate are checked explicitly below.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx
from onnx import numpy_helper

TENSORRT_VERSION_OF_LIST = "10.15"
OPSET_RANGE = (9, 24)

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization BlackmanWindow
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv
DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler
InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh
Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu
Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

TOPK_MAX_K = 3840  # "K input must be less than 3840", and "sorted must be 1"


def _nodes(model: onnx.ModelProto) -> Iterable[tuple[str, onnx.NodeProto]]:
    """Every node, including those inside model-local function bodies (the parser expands functions)."""
    for node in model.graph.node:
        yield "graph", node
    for func in model.functions:
        for node in func.node:
            yield f"function {func.domain}.{func.name}", node


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Reasons the TensorRT ONNX parser would reject ``model``; empty when it should parse."""
    problems: list[str] = []
    default_opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if default_opset is not None and not OPSET_RANGE[0] <= default_opset <= OPSET_RANGE[1]:
        problems.append(f"opset {default_opset} is outside TensorRT {TENSORRT_VERSION_OF_LIST}'s {OPSET_RANGE}")
    functions = {(f.domain, f.name) for f in model.functions}
    initializers = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for where, node in _nodes(model):
        if node.domain not in ("", "ai.onnx"):
            if (node.domain, node.op_type) not in functions:
                problems.append(f"{where}: custom op {node.domain}.{node.op_type} has no function body "
                                "(TensorRT would need a plugin)")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{where}: {node.op_type} is not supported by the TensorRT ONNX parser")
        elif node.op_type == "TopK":
            problems += _topk_problems(where, node, initializers, constants)
    return sorted(set(problems))


def _topk_problems(where: str, node: onnx.NodeProto, initializers: dict, constants: dict) -> list[str]:
    out = []
    if any(a.name == "sorted" and a.i == 0 for a in node.attribute):
        out.append(f"{where}: TopK with sorted=0 is not supported by TensorRT")
    k_name = node.input[1] if len(node.input) > 1 else ""
    k_tensor = initializers.get(k_name)
    if k_tensor is None and k_name in constants:
        k_tensor = next((a.t for a in constants[k_name].attribute if a.name == "value"), None)
    if k_tensor is None:
        out.append(f"{where}: TopK K must be a build-time constant for TensorRT")
    elif int(numpy_helper.to_array(k_tensor).reshape(-1)[0]) >= TOPK_MAX_K:
        out.append(f"{where}: TopK K must be below {TOPK_MAX_K} for TensorRT")
    return out
