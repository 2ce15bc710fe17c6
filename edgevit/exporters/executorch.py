"""ExecuTorch programs (``.pte``): PyTorch's on-device runtime for Android, iOS and embedded Linux.

Path: ``torch.export`` -> (optional) XNNPACK-friendly forms of LayerNorm/mean (``xnnpack_forms``) ->
``to_edge_transform_and_lower`` with the XNNPACK partitioner (or none: portable kernels only) ->
``to_executorch`` -> the program's bytes. Beside the ``.pte`` goes ``<name>.pte.json``, a manifest with
the edgevit metadata (a ``.pte`` has nowhere to keep it), the ExecuTorch version, what was delegated and
what was not, an estimate of the share of compute left outside the delegate, and the operator list a
selective (size-reduced) ExecuTorch build needs for the non-delegated part.

Like every exporter this one never runs what it writes; ``edgevit.pipeline`` places the file atomically
and verifies it in ExecuTorch's Python runtime (``edgevit.runtimes.executorch_backend``).
"""

from __future__ import annotations

import contextlib
import logging
import operator
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..artifact import ArtifactMetadata, JsonManifest
from ..errors import BackendUnavailableError, EdgevitError
from ..quantization.calibration import CalibrationSource, calibration_option, int8_metadata
from .onnx_scan import check_scan_mode, scan_export_mode
from .transforms import fold_batchnorm

PTE_SUFFIX = ".pte"
MANIFEST_SUFFIX = ".json"  # appended: model.pte -> model.pte.json
PRECISIONS = ("fp32", "int8")
DELEGATES = ("xnnpack", "portable")  # portable: no delegate, ExecuTorch's portable/optimized kernels only
INPUT_NAME = "input"
XNNPACK_MAX_DIMS = 6  # XNN_MAX_TENSOR_DIMS: the most dimensions an XNNPACK tensor can have
# Ops that only relabel memory (no arithmetic) cost nothing in the compute estimate.
_VIEW_OPS = {"view", "view_copy", "_unsafe_view", "squeeze_copy", "unsqueeze_copy", "alias_copy", "alias",
             "expand_copy", "getitem"}


@dataclass(frozen=True)
class ExecuTorchOptions:
    """What a user can choose about an ExecuTorch program (the input size and the static batch come from
    the artifact's metadata, like every format's)."""

    delegate: str = "xnnpack"
    # rewrite LayerNorm and means into forms XNNPACK takes (see xnnpack_forms); only with the delegate
    xnnpack_forms: bool = True
    scan: str = "decomposed"
    precision: str = "fp32"  # or "int8": PT2E static quantization for XNNPACK (edgevit.quantization.executorch_pt2e)
    calib_images: Path | None = None  # int8: a folder of calibration images; None: the synthetic set
    calib_count: int | None = None  # int8: calibration images (None: calibration.DEFAULT_CALIB_COUNT)

    def __post_init__(self) -> None:
        if self.delegate not in DELEGATES:
            raise EdgevitError(f"unknown ExecuTorch delegate {self.delegate!r}; choose one of {', '.join(DELEGATES)}")
        if self.precision not in PRECISIONS:
            raise EdgevitError(f"ExecuTorch programs take precision {' or '.join(PRECISIONS)}, not {self.precision!r}")
        if self.precision == "int8" and self.delegate != "xnnpack":
            # the quantized ops are XNNPACK's; outside it they would need ExecuTorch's quantized kernel library
            raise EdgevitError("ExecuTorch int8 programs run in the XNNPACK delegate; drop --delegate portable")
        self.calibration()
        check_scan_mode(self.scan)
        if self.scan != "decomposed":
            # the custom scan op has no out-variant kernel in ExecuTorch: to_executorch fails late with
            # "Missing out variants: edgevit::selective_scan"
            raise EdgevitError("ExecuTorch programs need the decomposed selective scan; drop --scan custom")

    def metadata(self) -> dict[str, str]:
        return {"scan": self.scan, "delegate": self.delegate, "xnnpack_forms": str(self.uses_forms).lower()}

    def calibration(self) -> CalibrationSource:
        return calibration_option(self.calib_images, self.precision, self.calib_count)

    @property
    def uses_forms(self) -> bool:
        return self.xnnpack_forms and self.delegate == "xnnpack"

    def check(self, batch: int | None) -> None:
        if batch is None:
            raise EdgevitError("an ExecuTorch program has a static batch; drop --dynamic-batch (use --batch N)")


@dataclass
class DelegationSummary:
    """What runs inside the delegate and what is left to ExecuTorch's own kernels.

    ``outside_compute_share`` is an estimate from shapes: 2 FLOPs per MAC for convolutions and matrix
    products, one per produced element for every other op (views count zero). It says where arithmetic
    sits, not where time goes; the runner's ``delegation_profile`` measures the time.
    """

    delegate: str
    delegated_subgraphs: int = 0
    delegated_ops: int = 0
    non_delegated_ops: int = 0
    non_delegated_by_op: dict[str, int] = field(default_factory=dict)
    estimated_flops: int = 0
    estimated_flops_outside: int = 0

    @property
    def outside_compute_share(self) -> float:
        return self.estimated_flops_outside / self.estimated_flops if self.estimated_flops else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "outside_compute_share": self.outside_compute_share}


@dataclass
class ExecuTorchManifest(JsonManifest):
    """Written beside every ``.pte`` (``model.pte.json``)."""
    REBUILD = "edgevit export MODEL --to executorch"

    executorch: str
    delegate: str
    backends: list[str]
    input_name: str
    input_shape: list[int]
    outputs: list[str]
    delegation: dict[str, Any]
    operators: list[str]  # "aten::name.overload" kernels the program calls outside the delegate
    xnnpack_forms: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)  # the verification at export, when it ran


def manifest_path(pte: str | Path) -> Path:
    pte = Path(pte)
    return pte.with_name(pte.name + MANIFEST_SUFFIX)


@contextlib.contextmanager
def quiet_executorch() -> Iterator[None]:
    """Importing ExecuTorch pulls torchao, which logs a warning per CUDA kernel library it cannot load on a
    CPU-only machine; none of them concerns a CPU export."""
    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree", "executorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def executorch_version() -> str:
    try:
        from executorch.version import __version__
    except ImportError as exc:
        raise BackendUnavailableError("ExecuTorch export needs the 'executorch' package: "
                                      "pip install 'edgevit[executorch]'") from exc
    return __version__


def export_artifact(model: nn.Module, path: Path, options: ExecuTorchOptions,
                    meta: ArtifactMetadata) -> ArtifactMetadata:
    """The ExecuTorch row's exporter: ``model`` (eval mode, BatchNorm folded) lowered for ``meta``'s input
    size and static batch to the program ``path``, and its manifest at :func:`manifest_path` (``path``).
    int8 adds what the quantization did (calibration, ops kept in float) to the returned metadata."""
    return ArtifactMetadata.from_props(export_executorch(model, path, options, meta).metadata)


def export_executorch(model: nn.Module, path: str | Path, options: ExecuTorchOptions,
                      meta: ArtifactMetadata) -> ExecuTorchManifest:
    """:func:`export_artifact` returning the manifest it wrote."""
    options.check(meta.batch)
    version = executorch_version()
    with quiet_executorch():
        from executorch.exir import to_edge_transform_and_lower

        model = fold_batchnorm(model)
        prepare = getattr(model, "prepare_static_input", None)
        if callable(prepare):  # size-dependent tables become constants, not ops
            prepare(tuple(meta.input_size))
        example = torch.zeros(meta.batch or 1, 3, *meta.input_size)
        try:
            if options.precision == "int8":
                model, meta = _quantized(model, options.calibration(), meta)
            with scan_export_mode(options.scan), torch.no_grad():
                program = torch.export.export(model, (example,))
            if options.uses_forms:
                from .xnnpack_forms import xnnpack_decompositions

                program = program.run_decompositions(xnnpack_decompositions())
            if options.delegate == "xnnpack":
                check_xnnpack_ranks(program, meta.model)
            edge = to_edge_transform_and_lower(program, partitioner=_partitioners(options.delegate))
            summary = delegation_summary(edge.exported_program().graph_module, options.delegate)
            et_program = edge.to_executorch()
        except EdgevitError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgevitError(f"ExecuTorch export of {meta.model} failed: {first}") from exc
    plan = et_program.executorch_program.execution_plan[0]
    path = Path(path)
    path.write_bytes(et_program.buffer)
    manifest = ExecuTorchManifest(
        executorch=version, delegate=options.delegate, backends=sorted({d.id for d in plan.delegates}),
        input_name=INPUT_NAME, input_shape=list(example.shape), outputs=list(meta.output_names),
        delegation=summary.to_dict(), operators=sorted({_kernel_name(op) for op in plan.operators}),
        xnnpack_forms=options.uses_forms, metadata=meta.to_props())
    manifest.write(manifest_path(path))
    return manifest


def _quantized(model: nn.Module, calibration: CalibrationSource,
               meta: ArtifactMetadata) -> tuple[nn.Module, ArtifactMetadata]:
    """``model`` quantized for XNNPACK from the calibration source with the family's keep-in-float rules, and
    ``meta`` recording both (the same metadata keys as the ONNX and OpenVINO int8 artifacts)."""
    from ..models import get_model_card
    from ..models.int8_rules import keep_float_rules
    from ..quantization.executorch_pt2e import quantize_xnnpack

    samples = calibration.batches(meta.input_size, meta.mean, meta.std, meta.batch)
    with scan_export_mode("decomposed"):
        quantized, kept = quantize_xnnpack(model, samples, keep_float_rules(get_model_card(meta.model).family))
    return quantized, int8_metadata(meta, calibration, kept)


def check_xnnpack_ranks(program: torch.export.ExportedProgram, model: str) -> None:
    """Refuse a graph with a tensor of more than :data:`XNNPACK_MAX_DIMS` dimensions, before lowering.

    Why: ExecuTorch 1.5's XNNPACK partitioner accepts such an op (e.g. a 7-D permute) but the delegate
    cannot define the tensor, so the program would be written after minutes of lowering and then fail to
    load ("XNNCompiler ... xnn_status_unsupported_parameter") with no hint of which op was at fault.
    """
    for node in program.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() > XNNPACK_MAX_DIMS:
            source = node.meta.get("stack_trace", "").strip().splitlines()
            where = f" ({source[-2].strip()})" if len(source) >= 2 else ""
            raise EdgevitError(
                f"ExecuTorch export of {model}: {node.name}{where} makes a {val.dim()}-D tensor "
                f"{tuple(val.shape)} and XNNPACK takes at most {XNNPACK_MAX_DIMS} dimensions; merge axes "
                f"in the model, or export with --delegate portable")


def companions(pte: Path) -> list[Path]:
    """Files that belong to a program and move with it: its manifest."""
    return [manifest_path(pte)]


def record_parity(pte: Path, parity: dict[str, Any]) -> None:
    """Add the verification result to the manifest (written before verification)."""
    path = manifest_path(pte)
    manifest = ExecuTorchManifest.read(path)
    manifest.parity = parity
    manifest.write(path)


def read_artifact_metadata(pte: Path) -> ArtifactMetadata | None:
    path = manifest_path(pte)
    return ArtifactMetadata.from_props(ExecuTorchManifest.read(path).metadata) if path.exists() else None


def check_available() -> None:
    """The executorch package, checked before the model is built."""
    executorch_version()


def _partitioners(delegate: str) -> list[Any]:
    if delegate == "portable":
        return []
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner()]


def _kernel_name(op: Any) -> str:
    return f"{op.name}.{op.overload}" if op.overload else op.name


def _op_name(node: torch.fx.Node) -> str:
    target = getattr(node.target, "_op", node.target)  # edge-dialect ops wrap the ATen overload
    if target is operator.getitem:
        return "getitem"
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _estimated_flops(node: torch.fx.Node) -> int:
    """2 x MACs for ops with a registered formula (conv, mm, bmm...), else one FLOP per output element."""
    from torch.utils.flop_counter import flop_registry

    name = _op_name(node)
    if name in _VIEW_OPS:
        return 0
    out = node.meta.get("val")
    target = getattr(node.target, "_op", node.target)
    packet = getattr(target, "overloadpacket", None)
    vals = lambda a: a.meta.get("val") if isinstance(a, torch.fx.Node) else a
    if packet in flop_registry:
        args = torch.fx.node.map_aggregate(node.args, vals)
        kwargs = torch.fx.node.map_aggregate(node.kwargs, vals)
        with contextlib.suppress(TypeError, ValueError, IndexError, AssertionError, RuntimeError):
            # a formula that does not fit these arguments falls through to the element count
            return int(flop_registry[packet](*args, **kwargs, out_val=out))
    if name == "linear" and isinstance(out, torch.Tensor):
        return 2 * out.numel() * int(node.args[1].meta["val"].shape[-1])  # type: ignore[union-attr]
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(t.numel() for t in outs if isinstance(t, torch.Tensor))


def delegation_summary(graph_module: torch.fx.GraphModule, delegate: str) -> DelegationSummary:
    """Count ops and estimated FLOPs inside and outside the delegate of a lowered edge program."""
    s = DelegationSummary(delegate=delegate)
    outside: Counter[str] = Counter()
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            s.delegated_subgraphs += 1
            for inner in getattr(graph_module, node.target).original_module.graph.nodes:
                if inner.op == "call_function" and _op_name(inner) != "getitem":
                    s.delegated_ops += 1
                    s.estimated_flops += _estimated_flops(inner)
        elif node.op == "call_function":
            name = _op_name(node)
            if name in ("getitem", "executorch_call_delegate"):
                continue
            outside[name] += 1
            flops = _estimated_flops(node)
            s.estimated_flops += flops
            s.estimated_flops_outside += flops
    s.non_delegated_ops = sum(outside.values())
    s.non_delegated_by_op = dict(outside.most_common())
    return s
