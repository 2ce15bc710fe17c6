"""OpenVINO backend: an IR folder (``model.xml`` + ``.bin`` + ``manifest.json``), an ``.xml`` file or an
``.onnx`` file (converted on load), compiled for the CPU with an explicit inference precision.

Why the precision is always set: on CPUs with AMX or AVX512-BF16 the CPU plugin runs bf16 unless told
otherwise, which silently costs ~1e-2 relative error; edgevit compiles with ``f32`` unless ``bf16``/``f16``
is asked for, and reports what the compiled model actually uses (an unsupported ``f16`` falls back, and
the report says so).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact import ArtifactMetadata, read_manifest
from ..errors import ArtifactError, EdgevitError
from .base import OpTime, Runner, RunnerInfo, TensorSpec, op_times, product_macs, shapes_text, stored_precision

# edgevit's precision names (fp32/fp16/bf16, as everywhere in edgevit) and OpenVINO's own spellings (aliases)
# -> OpenVINO's INFERENCE_PRECISION_HINT values
# "default" leaves the hint unset: the device then picks (bf16 on AMX/AVX512-BF16 CPUs) and the runner
# reports what it picked, so benchmarks can show what users get out of the box.
_HINTS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16", "default": None}
# OpenVINO element type names -> edgevit's precision labels (the other backends report fp32/fp16/bf16)
_LABELS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class OpenVinoRunner(Runner):
    """``runtimes.load(path, "openvino", threads=N, precision="fp32"|"bf16"|"fp16"|"default", streams=N)``.

    ``threads`` is INFERENCE_NUM_THREADS, ``streams`` NUM_STREAMS (parallel infer requests; :meth:`run`
    uses one synchronous request, so more than one stream only helps callers that run concurrently).
    ``profile=True`` turns on the plugin's per-layer counters (PERF_COUNT) for :meth:`op_profile`.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None, precision: str = "fp32",
                 streams: int | None = None, device: str = "CPU", profile: bool = False) -> None:
        import openvino as ov

        if precision not in _HINTS:
            raise EdgevitError(f"unknown OpenVINO precision {precision!r}; choose fp32, fp16, bf16 or default")
        core = ov.Core()
        model, self.manifest = _read_model(core, Path(path))
        self.path = Path(path)
        config: dict[str, Any] = {}
        if _HINTS[precision] is not None:
            config["INFERENCE_PRECISION_HINT"] = _HINTS[precision]
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams:
            config["NUM_STREAMS"] = str(int(streams))
        if profile:
            config["PERF_COUNT"] = True
        self._profiling = profile
        try:
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"OpenVINO cannot compile {str(path)!r} for {device}: {first}") from exc
        self.request = self.compiled.create_infer_request()
        self.inputs = [_spec(p) for p in self.compiled.inputs]
        self.outputs = [_spec(p) for p in self.compiled.outputs]
        self.metadata = self._metadata(model)
        used = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        label = stored_precision(_LABELS.get(used, used), self.metadata)
        stored = self.metadata.extra.get("precision") if self.metadata else None
        details = {"openvino": ov.get_version(), "inference_precision": used, "requested_precision": precision,
                   "streams": str(self.compiled.get_property("NUM_STREAMS")),
                   "device_name": core.get_property(device, "FULL_DEVICE_NAME"),
                   "kernels": kernel_summary(_compute_layers(self.compiled))}
        if stored:
            details["ir_precision"] = stored
        self.info = RunnerInfo("openvino", label, device.lower(),
                               int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or threads, details)

    def _metadata(self, model: Any) -> ArtifactMetadata | None:
        from ..exporters.openvino import read_metadata

        meta = read_metadata(model, str(self.path))
        if meta is None and self.manifest is not None:
            meta = ArtifactMetadata.from_props(self.manifest["metadata"], str(manifest_file(self.path)))
        return meta

    def op_profile(self, feeds: np.ndarray | Mapping[str, np.ndarray], calls: int,
                   by_shape: bool = False) -> list[OpTime]:
        """Per layer type and implementation (and layer shapes, ``by_shape``: from the compiled runtime model):
        mean milliseconds over ``calls`` runs, from the plugin's own counters (layers it fused away or skipped
        are not counted)."""
        if not self._profiling:
            raise EdgevitError("load the OpenVINO runner with profile=True to profile it")
        import openvino as ov

        checked = self._check_feeds(feeds)
        layers = _layer_shapes(self.compiled)
        samples: list[tuple[str, str, float, float, str, int]] = []  # OpenVINO's counters carry no tensor sizes
        for _ in range(calls):
            self._run(checked)
            for i in self.request.get_profiling_info():
                if i.status != ov.ProfilingInfo.Status.EXECUTED:
                    continue
                inputs, outputs = layers.get(i.node_name, ([], []))
                text = (shapes_text(inputs, outputs) if i.node_name in layers else "?") if by_shape else ""
                samples.append((i.node_type, i.exec_type, i.real_time.total_seconds() * 1000.0, 0.0, text,
                                product_macs(i.node_type, inputs, outputs)))
        return op_times(samples, calls)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feeds)
        # results alias the request's buffers: copy before the next call overwrites them
        return {spec.name: np.array(results[port]) for spec, port in zip(self.outputs, self.compiled.outputs)}


def _layer_shapes(compiled: Any) -> dict[str, tuple[list[list[int | str]], list[list[int | str]]]]:
    """Input and output shapes of every layer of the compiled runtime model, by the name its counters use."""
    def dims(port: Any) -> list[int | str]:
        shape = port.get_partial_shape()
        return [d.get_length() if d.is_static else "?" for d in shape] if shape.rank.is_static else ["?"]

    return {op.get_friendly_name(): ([dims(i) for i in op.inputs()], [dims(o) for o in op.outputs()])
            for op in compiled.get_runtime_model().get_ordered_ops()}


# Layer types whose implementation sets the speed (the GEMM-like work), as OpenVINO's runtime model names them
_COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})
# ISA tokens of OpenVINO CPU primitive names ("brgemm_avx512_amx_I8", "jit_avx512_I8", "gemm_acl"), best first
_ISA_TOKENS = ("amx", "avx512", "avx2", "avx", "sse42", "sse41", "acl", "ref")
_DTYPES = {"u8": "int8", "i8": "int8", "f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def _compute_layers(compiled: Any) -> list[tuple[str, str, str]]:
    """(layer type, primitive, runtime precision) of every compiled layer, from the runtime model's rt_info."""
    rows = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" in rt and "primitiveType" in rt and "runtimePrecision" in rt:
            rows.append((rt["layerType"].astype(str), rt["primitiveType"].astype(str),
                         rt["runtimePrecision"].astype(str)))
    return rows


def kernel_summary(layers: Iterable[tuple[str, str, str]]) -> str:
    """What did the GEMM-like work, as OpenVINO itself reports it: its conv/matmul layers counted by the data
    type they ran in and the ISA in the name of the primitive it chose, e.g. "int8 amx 79, fp32 avx512 18".
    Why: an int8 or bf16 label says what was asked; this says whether AMX, AVX-512 (VNNI-class on such CPUs)
    or a reference kernel ran it. Empty when the runtime model reports no such layer."""
    counts: dict[str, int] = {}
    for layer, primitive, precision in layers:
        if layer not in _COMPUTE_LAYERS:
            continue
        name = primitive.lower()
        isa = next((t for t in _ISA_TOKENS if t in name.split("_")), name or "unknown")
        key = f"{_DTYPES.get(precision.lower(), precision.lower())} {isa}"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def _read_model(core: Any, path: Path) -> tuple[Any, dict[str, Any] | None]:
    """Find and read the model: a folder holds ``model.xml`` (and ``manifest.json``)."""
    from ..exporters.openvino import IR_FILE, read_onnx

    if path.is_dir():
        if not (path / IR_FILE).exists():
            raise ArtifactError(f"{str(path)!r} holds no {IR_FILE}; export one with `edgevit export MODEL --to openvino`")
        path = path / IR_FILE
    manifest = read_manifest(manifest_file(path)) if path.suffix.lower() == ".xml" else None
    if path.suffix.lower() == ".xml":
        weights = path.with_suffix(".bin")
        if manifest is not None:
            weights = path.parent / manifest["files"].get("bin", weights.name)
        if not weights.exists():
            raise ArtifactError(f"{str(path.parent)!r} is missing {weights.name}, the IR's weights next to "
                                f"{path.name}; copy the whole IR folder, or re-export it")
    try:
        if path.suffix.lower() == ".onnx":
            return read_onnx(path), None
        if path.suffix.lower() == ".xml":
            return core.read_model(str(path)), manifest
    except Exception as exc:  # the ONNX frontend raises its own error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(f"OpenVINO cannot read {str(path)!r}: {first}") from exc
    raise ArtifactError(f"OpenVINO reads an IR folder, a .xml or a .onnx file, not {str(path)!r}")


def manifest_file(path: Path) -> Path:
    """The manifest of an IR given as its folder or its ``.xml``."""
    from ..exporters.openvino import MANIFEST_FILE

    return (path if path.is_dir() else path.parent) / MANIFEST_FILE


def _spec(port: Any) -> TensorSpec:
    dims = tuple(d.get_length() if d.is_static else ("batch" if i == 0 else f"dim{i}")
                 for i, d in enumerate(port.get_partial_shape()))
    return TensorSpec(port.get_any_name(), dims, np.dtype(port.get_element_type().to_dtype()).name)
