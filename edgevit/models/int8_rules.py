"""Which operations an INT8 export keeps in float, per family: plain data, read by every quantizer.

The rule lives with the models, not in an exporter, because *why* an op must stay in float is a fact
about the architecture (a score that ranks tokens, coordinates that pick pixels, a decay that spans
orders of magnitude), the same whichever format is quantized. Exporters interpret it on their own
graph (ONNX node names for ONNX Runtime's quantizer, OpenVINO op names for NNCF); ``edgevit info``
shows it. Op types are ONNX's names, plus ``GroupConv`` (a Conv with ``group > 1``; ``Conv`` still means every
convolution); an exporter maps them to its own graph's names.

Three kinds of rule:

* ``op``        - the listed ops themselves are not quantized;
* ``producers`` - the nearest quantizable ops (Conv/MatMul/Gemm) that compute an input of the listed
  ops are not quantized (``input``: only that input), so the value they decide on is computed in float;
* ``consumers`` - quantizable ops reading the listed ops' output (within ``hops``) are not quantized;
* ``arithmetic`` - no op but Conv/MatMul/Gemm gets int8 ranges (no ``op_types``). Only quantizers that also
  quantize elementwise arithmetic (XNNPACK's adds, muls, concats, means) have anything to drop; ONNX Runtime
  and NNCF quantize only those ops in edgevit's recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

RULE_KINDS = ("op", "producers", "consumers", "arithmetic")


@dataclass(frozen=True)
class KeepFloat:
    """One rule: keep ``kind`` of ``op_types`` in float, for ``reason``."""

    kind: str
    op_types: tuple[str, ...]
    reason: str
    input: int | None = None  # producers: only the op computing this input (e.g. GridSample's grid)
    hops: int = 8  # how far producers/consumers are searched through non-quantizable ops

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}; one of {RULE_KINDS}")

    def describe(self) -> str:
        if self.kind == "arithmetic":
            return f"elementwise arithmetic: {self.reason}"
        what = {"op": "", "producers": "ops computing ", "consumers": "ops reading "}[self.kind]
        port = f" (input {self.input})" if self.input is not None else ""
        return f"{what}{'/'.join(self.op_types)}{port}: {self.reason}"


COMMON: tuple[KeepFloat, ...] = (
    KeepFloat("op", ("Softmax",), "attention probabilities are computed in float"),
    KeepFloat("consumers", ("Softmax",), "the MatMul weighting values by attention probabilities: 8-bit steps "
              "of 1/255 would erase the small weights", hops=2),
    KeepFloat("op", ("LayerNormalization", "BatchNormalization", "InstanceNormalization", "GroupNormalization"),
              "norms: statistics over a channel divide by a variance that int8 ranges cannot represent"),
)

FAMILY_RULES: dict[str, tuple[KeepFloat, ...]] = {
    "S2AFormer": COMMON,
    "EMSNet": COMMON,
    "MAT": COMMON + (
        KeepFloat("op", ("GridSample",), "the deformable sampler interpolates between pixels"),
        KeepFloat("producers", ("GridSample",), "the sampler's coordinates: one int8 step of the offset "
                  "moves every sampling point", input=1),
    ),
    "A2Mamba": COMMON + (
        KeepFloat("op", ("Exp", "Softplus"), "the selective scan's discretisation: the step sizes' softplus and "
                  "the exponentials of the log-decay and its sums"),
        KeepFloat("producers", ("Exp",), "the scan's prefix sums of the log-decay (a GEMM with a constant 0/1 "
                  "matrix): one int8 step of a sum is a factor on every decay computed from it"),
        KeepFloat("arithmetic", (), "the scan's recurrence h = exp(a) h + x, unrolled over a chunk's steps and "
                  "carried across chunks: its decays span many orders of magnitude and an int8 range on every "
                  "running state would compound step after step (where a quantizer takes elementwise arithmetic: "
                  "XNNPACK; ONNX Runtime and OpenVINO keep it float anyway)"),
    ),
    "DualFormer": COMMON + (
        KeepFloat("op", ("GroupConv",), "depth-wise convolutions (patch embedding, CPE, MBConv, MHPA downsample): "
                  "each output channel reads one input channel, so a channel small next to the tensor's one 8-bit "
                  "range keeps few levels and no sum over channels averages that error; few MACs, little to gain"),
        KeepFloat("consumers", ("GroupConv",), "convolutions reading a depth-wise conv directly, with no norm or "
                  "activation between (patch embedding DW -> PW, MHPA downsample -> value): the heavy-tailed "
                  "depth-wise output spans +-60 on the residual stream", hops=1),
        KeepFloat("producers", ("GreaterOrEqual",), "the LSH hash: the sign of x.beta picks a token's group, "
                  "and int8 noise flips tokens near a hyperplane into another group"),
        KeepFloat("consumers", ("Exp",), "unnormalised exp weights of the partition pooling span orders of "
                  "magnitude", hops=3),
        KeepFloat("arithmetic", (), "the partition pooling's masked maxima, exp weights, sums and divisions and "
                  "the squeeze-excite products; with int8 elementwise inputs OpenVINO's logit error was 0.265 "
                  "instead of 0.075 (224x224, 200 images)"),
    ),
    "PartialFormer": COMMON + (
        KeepFloat("op", ("TopK",), "token selection"),
        KeepFloat("producers", ("TopK",), "the context score ranks tokens; int8 noise swaps near-tied tokens "
                  "between foreground and background", input=0),
        KeepFloat("arithmetic", (), "the context score, the foreground count and the residual stream they are "
                  "computed from; with int8 adds and means the selection mask differs from fp32's (ExecuTorch "
                  "224x224, 100 images: 90.9 % decisive agreement, 98.7 % with the arithmetic in float)"),
    ),
}


def keep_float_rules(family: str) -> tuple[KeepFloat, ...]:
    """The rules of ``family`` (a card's ``family``). A family without an entry is an error, not the common
    rules: a new family must say which of its ops are precision-critical before it can be quantized."""
    try:
        return FAMILY_RULES[family]
    except KeyError:
        raise KeyError(f"no INT8 keep-in-float rules declared for family {family!r} in "
                       "edgevit/models/int8_rules.py") from None
