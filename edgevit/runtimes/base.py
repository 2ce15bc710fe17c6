"""The runtime interface: every backend is a :class:`Runner` taking and returning numpy arrays."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..artifact import ArtifactMetadata
from ..errors import EdgevitError, InputShapeError, InputTypeError

Dim = int | str  # a string names a dynamic axis (e.g. "batch")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str = "float32"

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(self.shape, shape)
        )


@dataclass
class RunnerInfo:
    """What actually runs, for reports: the precision really used and the device/provider."""

    backend: str
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OpTime:
    """One kind of op in a per-op profile: ``op`` (ONNX op type / OpenVINO layer type), ``kernel`` (what ran
    it: ONNX Runtime's execution provider, OpenVINO's implementation such as ``brgemm_avx512_amx_f32``, which
    also says which instruction set and precision really ran), ``ms`` per call, ``nodes`` executed per call,
    and ``bytes`` its nodes read and wrote per call where the runtime reports tensor sizes (ONNX Runtime:
    activations + parameters + outputs; 0 where it does not, e.g. OpenVINO): the traffic a memory roof bounds.
    ``shapes`` (``"16x3136x16, 18496 -> 16x18496x16"``) when the profile is grouped by shape, else empty.
    ``macs`` per call: the multiply-accumulates its product nodes executed (:func:`product_macs`; 0 for other ops),
    padding included (a tiled attention's masked keys, a blocked layout's padded channels): what the kernel ran."""

    op: str
    kernel: str
    ms: float
    nodes: int
    bytes: float = 0.0
    shapes: str = ""
    macs: float = 0.0


# Product ops by runtime name (ONNX Runtime's fused forms, OpenVINO's layer types): MACs follow from their shapes
_MATRIX_PRODUCTS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "FullyConnected"})
_CONVOLUTIONS = frozenset({"Conv", "FusedConv", "Convolution"})  # weight (out, in / groups, *kernel)
_GROUP_CONVOLUTIONS = frozenset({"GroupConvolution"})  # OpenVINO's weight (groups, out / g, in / g, *kernel)


def product_macs(op: str, inputs: Sequence[Sequence[Dim]], outputs: Sequence[Sequence[Dim]]) -> int:
    """Multiply-accumulates one node of a product op executes, from its input and output shapes (0 for any
    other op, or where a dimension is unknown).

    A matrix product's output has ``M x N`` per batch entry and its inner size ``K`` is the first input's other
    dimension (so a transposed first input, e.g. ``FusedMatMul`` with ``transA``, counts right); a convolution
    costs each output value its weight's receptive field (``in / groups x kernel``)."""
    if not inputs or not outputs or len(inputs[0]) == 0 or len(outputs[0]) == 0:
        return 0
    out, first = outputs[0], inputs[0]
    shapes = [out, first, *(inputs[1:2] if op not in _MATRIX_PRODUCTS else ())]
    if not all(isinstance(d, int) for shape in shapes for d in shape):
        return 0
    if op in _MATRIX_PRODUCTS:
        if len(first) == 1 or len(out) == 1:
            inner = first[-1]
        else:
            inner = first[-1] if first[-2] == out[-2] else first[-2]
        return int(np.prod(out, dtype=np.int64)) * int(inner)
    if op in _CONVOLUTIONS | _GROUP_CONVOLUTIONS and len(inputs) > 1:
        field_start = 2 if op in _GROUP_CONVOLUTIONS else 1
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(inputs[1][field_start:], dtype=np.int64))
    return 0


def op_times(samples: Iterable[tuple[str, str, float, float, str, int]], calls: int) -> list[OpTime]:
    """``(op, kernel, ms, bytes, shapes, macs)`` samples of ``calls`` runs -> one :class:`OpTime` per (op, kernel,
    shapes), per-call means, slowest first (shared by every runtime's :meth:`Runner.op_profile`; ``shapes`` is
    empty for a profile per op kind)."""
    totals: dict[tuple[str, str, str], list[float]] = {}
    for op, kernel, ms, nbytes, shapes, macs in samples:
        entry = totals.setdefault((op, kernel, shapes), [0.0, 0, 0.0, 0.0])
        entry[0] += ms
        entry[1] += 1
        entry[2] += nbytes
        entry[3] += macs
    n = max(calls, 1)
    return sorted((OpTime(op, kernel, ms / n, round(count / n), nbytes / n, shapes, macs / n)
                   for (op, kernel, shapes), (ms, count, nbytes, macs) in totals.items()), key=lambda t: -t.ms)


def shapes_text(inputs: Iterable[Iterable[int | str]], outputs: Iterable[Iterable[int | str]]) -> str:
    """``"16x3136x16, 18496 -> 16x18496x16"``: a node's input and output shapes, one key of a shape profile."""
    def side(shapes: Iterable[Iterable[int | str]]) -> str:
        return ", ".join("x".join(str(d) for d in shape) or "scalar" for shape in shapes)

    return f"{side(inputs)} -> {side(outputs)}"


def stored_precision(compute: str, metadata: ArtifactMetadata | None) -> str:
    """The precision label of a runner: ``compute`` (what its float kernels run), prefixed ``int8+`` when the
    artifact is an int8 one (quantized ops run integer kernels, the rest ``compute``), so a row or a
    verification line never calls an int8 program fp32."""
    stored = metadata.extra.get("precision") if metadata else None
    return f"int8+{compute}" if stored == "int8" else compute


def check_dtype(spec: TensorSpec, got: np.dtype, backend: str) -> None:
    """Refuse an input the runtime would only take through a lossy cast, which runs and returns wrong
    results (uint8 pixels read as normalised floats, float pixels wrapped into uint8, bool/complex).

    Float inputs of any width go to float models (float64 -> float32 rounds within fp32 tolerance and is
    what numpy produces by default); integer models take integers that cast safely (uint8 -> int64).
    """
    want = np.dtype(spec.dtype)
    ok = got.kind == "f" if want.kind == "f" else got.kind in "iu" and np.can_cast(got, want, "safe")
    if ok:
        return
    if want == np.uint8:
        fix = ("this artifact embeds the preprocessing and takes raw uint8 NHWC RGB images (0-255): pass the "
               "frames as uint8, not normalised floats")
    elif want.kind == "f" and got.kind in "iub":
        fix = (f"normalise images to {want} first (edgevit.images.to_tensor does mean/std), or cast with "
               f".astype(np.{want})")
    else:
        fix = f"pass a {want} array"
    raise InputTypeError(f"input {spec.name!r} is {got}, but the {backend} model takes {want}; {fix}")


def run_in_calls(runner: Runner, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """``runner`` on the images ``x`` in calls of ``batch`` (what an artifact with a fixed batch takes), the
    last call padded with images from the start (cycled) and the padding dropped from the outputs."""
    parts = []
    for start in range(0, len(x), batch):
        rows = x[start:start + batch]
        pad = batch - len(rows)
        out = runner.run(np.concatenate([rows, np.resize(x, (pad, *x.shape[1:]))]) if pad else rows)
        parts.append({name: np.asarray(value)[:len(rows)] for name, value in out.items()})
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class Runner(ABC):
    """A loaded model ready for inference.

    ``run`` accepts one array (for single-input models) or a name->array mapping and returns outputs
    by name, in the order of ``outputs``. Inputs are checked first: shape, and a dtype the model takes
    without a lossy cast (:func:`check_dtype`).
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: ArtifactMetadata | None
    info: RunnerInfo

    @property
    def backend(self) -> str:
        return self.info.backend

    def run(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(self._check_feeds(feeds))

    __call__ = run

    def benchmark_callable(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> Callable[[], object]:
        """A zero-argument call that runs one inference on ``feeds`` and returns when it is complete.

        Input checks and host-to-device copies happen once here, not in the timed call; backends with
        device memory override this to keep inputs resident and synchronise.
        """
        checked = self._check_feeds(feeds)
        return lambda: self._run(checked)

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def op_profile(self, feeds: np.ndarray | Mapping[str, np.ndarray], calls: int,
                   by_shape: bool = False) -> list[OpTime]:
        """Run ``calls`` inferences and return where their time went, per op kind (mean per call); with
        ``by_shape``, per op kind and node input/output shapes (which of a kind's nodes cost the time).

        Only runtimes with their own per-node counters have one (ONNX Runtime, OpenVINO; loaded with
        ``profile=True``): a profile this class made up would not be the runtime's.
        """
        raise EdgevitError(f"the {self.backend} runner has no per-op profile; profile with onnxruntime or openvino")

    def _check_feeds(self, feeds: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(feeds, np.ndarray):
            if len(self.inputs) != 1:
                raise InputShapeError(f"model takes {len(self.inputs)} inputs; pass a dict keyed by name")
            feeds = {self.inputs[0].name: feeds}
        out = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise InputShapeError(f"missing input {spec.name!r}; the model takes {[s.name for s in self.inputs]}")
            given = np.asarray(feeds[spec.name])
            check_dtype(spec, given.dtype, self.backend)
            arr = np.ascontiguousarray(given, dtype=spec.dtype)
            if not spec.accepts(arr.shape):
                raise InputShapeError(
                    f"input {spec.name!r} has shape {tuple(arr.shape)}, the {self.backend} model expects {spec.shape}"
                )
            out[spec.name] = arr
        return out
