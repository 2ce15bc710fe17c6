"""ONNX Runtime backend (CPU provider by default; any installed provider can be requested)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..artifact import ArtifactMetadata
from ..errors import ArtifactError, EdgevitError
from .base import OpTime, Runner, RunnerInfo, TensorSpec, op_times, product_macs, shapes_text, stored_precision
from .denormals import caller_denormals

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}


class OnnxRuntimeRunner(Runner):
    def __init__(self, path: str | Path, *, threads: int | None = None,
                 providers: list[str] | None = None, profile: bool = False, memory_pattern: bool = False,
                 keep_denormals: bool = False) -> None:
        """``profile=True`` turns on ONNX Runtime's own profiler for :meth:`op_profile` (it costs a little
        on every call: never for timing).

        ``memory_pattern`` (ONNX Runtime's own default: on) plans one block per input shape sized for the
        graph's intermediates. Off (edgevit's default), intermediates come from the arena one by one and are
        reused as they die: at batch 16 / 224, 2 threads, peak RSS fell 30-45 % in every family (a2mamba-n
        2005 -> 1104 MB, a2mamba-t 2868 -> 1584 MB) at the same speed (geometric mean over the six
        families' smallest variants and a2mamba-t 1.01x, each within -7 / +16 %); table in
        docs/models/a2mamba.md. ``edgevit bench --runtimes onnxruntime:memory-pattern`` runs it on.

        Subnormal floats are flushed to zero (pool threads through ONNX Runtime's own option, the calling
        thread around each call: :mod:`.denormals` says why); ``keep_denormals=True`` (``edgevit bench
        --runtimes onnxruntime:denormals``) runs ONNX Runtime as it comes, for comparison."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        self._profile_dir: Path | None = None
        if profile:
            self._profile_dir = Path(tempfile.mkdtemp(prefix="edgevit-ort-profile-"))
            opts.enable_profiling = True
            opts.profile_file_prefix = str(self._profile_dir / "ort")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_mem_pattern = memory_pattern
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._flush_denormals = not keep_denormals
        opts.add_session_config_entry("session.set_denormal_as_zero", "1" if self._flush_denormals else "0")
        try:
            with caller_denormals(flush=None):  # the constructor sets the bits on this thread with the option
                self.session = ort.InferenceSession(str(path), opts,
                                                    providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ArtifactError(f"ONNX Runtime cannot load {str(path)!r}: {first}") from exc
        self.inputs = [TensorSpec(i.name, _dims(i.shape), _ORT_TYPES.get(i.type, "float32"))
                       for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, _dims(o.shape), _ORT_TYPES.get(o.type, "float32"))
                        for o in self.session.get_outputs()]
        self.metadata = ArtifactMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, str(path))
        provider = self.session.get_providers()[0]
        precision = "fp16" if self.inputs and self.inputs[0].dtype == "float16" else "fp32"
        details = {"provider": provider, "onnxruntime": ort.__version__}
        if memory_pattern:
            details["memory_pattern"] = "on"
        details["denormals"] = "flushed to zero" if self._flush_denormals else "kept"
        precision = stored_precision(precision, self.metadata)  # QDQ: integer kernels + float rest
        if precision.startswith("int8"):
            details["model_precision"] = "int8"
        self.info = RunnerInfo("onnxruntime", precision, "cuda" if "CUDA" in provider else "cpu", threads, details)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # kept: the calling thread runs as its owner set it (its bits are not cleared either)
        with caller_denormals(flush=True if self._flush_denormals else None):
            values = self.session.run(None, feeds)
        return {spec.name: v for spec, v in zip(self.outputs, values)}

    def op_profile(self, feeds: np.ndarray | Mapping[str, np.ndarray], calls: int,
                   by_shape: bool = False) -> list[OpTime]:
        """Kernel times of the next ``calls`` runs from ONNX Runtime's profiler (earlier runs, e.g. warm-up,
        are left out by their timestamps), per op kind or also per node shapes. The profiler stops here: one
        profile per session."""
        if self._profile_dir is None:
            raise EdgevitError("load the ONNX Runtime runner with profile=True to profile it")
        checked = self._check_feeds(feeds)
        for _ in range(calls):
            self._run(checked)
        trace = Path(self.session.end_profiling())
        try:
            events = json.loads(trace.read_text())
        finally:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
        return ort_op_times(events, calls, by_shape)


def _dims(shape: list) -> tuple[int | str, ...]:
    return tuple(d if isinstance(d, int) else str(d or "dynamic") for d in shape)


def ort_op_times(events: list[dict], calls: int, by_shape: bool = False) -> list[OpTime]:
    """Per op type and provider (and node shapes, ``by_shape``): mean kernel milliseconds, bytes moved and product
    MACs over the last ``calls`` ``model_run`` events of an ONNX Runtime profile (its ``Node`` ``*_kernel_time``
    events inside those runs; bytes = the event's activation + parameter + output sizes; MACs from its shapes)."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-calls:]
    kernels = (e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
               and any(start <= e["ts"] <= end for start, end in runs))

    def sample(e: dict) -> tuple[str, str, float, float, str, int]:
        args = e.get("args", {})
        op = args.get("op_name", "?")
        inputs, outputs = _node_dims(args, "input_type_shape"), _node_dims(args, "output_type_shape")
        return (op, args.get("provider", "?"), e["dur"] / 1000.0, _node_bytes(args),
                shapes_text(inputs, outputs) if by_shape else "", product_macs(op, inputs, outputs))

    return op_times((sample(e) for e in kernels), len(runs))


def _node_dims(args: Mapping[str, object], key: str) -> list[list[int]]:
    """A kernel event's input or output shapes: ONNX Runtime lists each as ``{element type: dims}``."""
    entries = args.get(key) or []
    return [next(iter(entry.values()), []) for entry in entries if isinstance(entry, dict)]


def _node_bytes(args: Mapping[str, object]) -> float:
    return float(sum(int(str(args.get(k, 0)) or 0) for k in ("activation_size", "parameter_size", "output_size")))
