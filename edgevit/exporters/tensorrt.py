"""TensorRT engines from a verified ONNX file, through the ``tensorrt`` Python API (``edgevit[tensorrt]``).

UNVERIFIED here: the development and CI machines have no GPU and no TensorRT; this follows the documented
TensorRT 10 API (builder config, optimisation profiles, timing cache, precision constraints). What is
verified on CPU is that every exported graph only uses operators the TensorRT ONNX parser supports
(``tensorrt_ops``), and that engine manifests are checked before an engine is deserialised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..artifact import ArtifactMetadata, JsonManifest
from ..cache import cache_dir
from ..errors import BackendUnavailableError, EdgevitError
from .onnx import OnnxOptions

ENGINE_SUFFIX = ".engine"
MANIFEST_SUFFIX = ".json"
# Layer kinds kept in fp32 inside fp16 engines: normalisation statistics, softmax, reductions, cumulative
# sums (the decomposed selective scan) and exponentials overflow or lose precision in fp16.
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE", "CUMULATIVE")
FP32_UNARY_OPS = ("EXP", "LOG", "SQRT")
FP32_NAME_HINTS = ("scan", "selective", "norm", "softmax")


PRECISIONS = ("fp16", "fp32")


@dataclass(frozen=True)
class TensorRTOptions:
    """What a user can choose about a TensorRT engine (a row of :mod:`edgevit.formats`); ``onnx`` are the
    options of the ONNX intermediate the engine is parsed from.

    The batch comes from the common options: a static ``batch`` builds a fixed-shape engine; a dynamic
    batch builds the optimisation profile 1 .. ``max_batch``, tuned for ``opt_batch`` (default ``max_batch``).
    """

    precision: str = "fp16"
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace: float = 4.0  # builder workspace in GB
    onnx: OnnxOptions = field(default_factory=OnnxOptions)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgevitError(f"TensorRT precision must be fp32 or fp16, got {self.precision!r}")
        if self.workspace <= 0:
            raise EdgevitError(f"--workspace is in GB and must be positive, got {self.workspace:g}")

    def metadata(self) -> dict[str, str]:
        return {}

    def profile(self, batch: int | None) -> TensorRTBuildOptions:
        """The builder options for a static ``batch`` or a dynamic one (None)."""
        if batch is not None:
            if self.opt_batch is not None or self.max_batch is not None:
                raise EdgevitError("--opt-batch and --max-batch shape a dynamic-batch engine; add --dynamic-batch")
            return TensorRTBuildOptions(self.precision, batch, batch, batch, self.workspace,
                                        cache_dir() / "tensorrt-timing.cache")
        if self.max_batch is None or self.max_batch < 2:
            raise EdgevitError("a dynamic-batch TensorRT engine needs --max-batch of at least 2 (its largest batch)")
        return TensorRTBuildOptions(self.precision, 1, self.opt_batch or self.max_batch, self.max_batch,
                                    self.workspace, cache_dir() / "tensorrt-timing.cache")

    def check(self, batch: int | None) -> None:
        self.profile(batch)


@dataclass(frozen=True)
class TensorRTBuildOptions:
    precision: str = "fp16"  # fp32 | fp16
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    workspace_gb: float = 4.0
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgevitError(f"TensorRT precision must be fp32 or fp16, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise EdgevitError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch, got "
                               f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")

    @property
    def dynamic_batch(self) -> bool:
        return self.min_batch != self.max_batch


@dataclass(frozen=True)
class EngineManifest(JsonManifest):
    """Written beside every engine: an engine only runs on the TensorRT version and GPU it was built for."""
    REBUILD = "edgevit export MODEL --to tensorrt"

    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    input_name: str
    min_shape: list[int]
    opt_shape: list[int]
    max_shape: list[int]
    outputs: list[str]
    fp32_layers: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


def manifest_path(engine: Path) -> Path:
    return engine.with_suffix(MANIFEST_SUFFIX)


def compatibility_problem(manifest: EngineManifest, tensorrt_version: str, gpu: str, compute_capability: str) -> str | None:
    """Why an engine cannot run here (serialised engines are tied to the exact TensorRT build and GPU arch)."""
    if manifest.tensorrt != tensorrt_version:
        return (f"engine was built with TensorRT {manifest.tensorrt}, this machine has {tensorrt_version}; "
                "rebuild it here with `edgevit export ... --to tensorrt`")
    if manifest.compute_capability != compute_capability:
        return (f"engine was built for {manifest.gpu} (sm_{manifest.compute_capability.replace('.', '')}), this GPU "
                f"is {gpu} (sm_{compute_capability.replace('.', '')}); rebuild it on this GPU")
    return None


def export_artifact(source: Path, engine_path: Path, options: TensorRTOptions,
                    meta: ArtifactMetadata) -> ArtifactMetadata:
    """The TensorRT row's exporter: the ONNX intermediate ``source`` -> operator-support check -> engine at
    ``engine_path`` with its manifest beside it (:func:`companions`)."""
    import onnx

    from .tensorrt_ops import tensorrt_problems

    problems = tensorrt_problems(onnx.load(str(source), load_external_data=False))
    if problems:
        raise EdgevitError(f"{meta.model} ONNX graph is not TensorRT-compatible: {'; '.join(problems[:5])}")
    build_engine(source, engine_path, options.profile(meta.batch), meta)
    return meta


def companions(engine: Path) -> list[Path]:
    """Files that belong to an engine and move with it: its manifest."""
    return [manifest_path(engine)]


def read_artifact_metadata(engine: Path) -> ArtifactMetadata | None:
    path = manifest_path(engine)
    return ArtifactMetadata.from_props(EngineManifest.read(path).metadata) if path.exists() else None


def check_available() -> None:
    """TensorRT and a GPU, checked before the ONNX intermediate is exported."""
    _tensorrt()
    gpu_identity()


def _tensorrt():  # noqa: ANN202
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError("TensorRT export needs the tensorrt package and an NVIDIA GPU: "
                                      "pip install 'edgevit[tensorrt]'") from exc
    return trt


def gpu_identity() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs an NVIDIA GPU; none is visible to torch here")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def _pin_fp32(network, trt) -> int:  # noqa: ANN001
    """Constrain numerically sensitive layers to fp32; returns how many were pinned."""
    pinned = 0
    types = {getattr(trt.LayerType, t) for t in FP32_LAYER_TYPES if hasattr(trt.LayerType, t)}
    unary = {getattr(trt.UnaryOperation, u) for u in FP32_UNARY_OPS}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        sensitive = layer.type in types or any(h in layer.name.lower() for h in FP32_NAME_HINTS)
        if layer.type == trt.LayerType.UNARY:
            layer.__class__ = trt.IUnaryLayer
            sensitive = sensitive or layer.op in unary
        if not sensitive:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in (trt.float32, trt.float16):
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def build_engine(onnx_path: Path, engine_path: Path, options: TensorRTBuildOptions,
                 metadata: ArtifactMetadata) -> EngineManifest:
    """Parse ``onnx_path``, build and serialise an engine to ``engine_path`` (+ its manifest)."""
    trt = _tensorrt()
    gpu, cc = gpu_identity()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgevitError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    pinned = 0
    if options.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 must mean fp32 (as for torch-cuda)
    if options.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_fp32(network, trt)
    inp = network.get_input(0)
    chw = tuple(inp.shape)[1:]
    shapes = [(b, *chw) for b in (options.min_batch, options.opt_batch, options.max_batch)]
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, *shapes)
    config.add_optimization_profile(profile)
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgevitError("TensorRT failed to build the engine (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    if options.timing_cache:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    manifest = EngineManifest(
        tensorrt=trt.__version__, gpu=gpu, compute_capability=cc, precision=options.precision,
        input_name=inp.name, min_shape=list(shapes[0]), opt_shape=list(shapes[1]), max_shape=list(shapes[2]),
        outputs=[network.get_output(i).name for i in range(network.num_outputs)], fp32_layers=pinned,
        metadata=metadata.to_props(),
    )
    manifest.write(manifest_path(engine_path))
    return manifest
