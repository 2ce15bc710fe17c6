"""Per-op profiles from the runtimes' own counters: where one inference's time goes, per op kind.

Why: a throughput figure says a model is slow, not why. ONNX Runtime's profiler and OpenVINO's per-layer
counters (PERF_COUNT) attribute each call's time to the ops that ran and name the kernel that ran them
(OpenVINO's ``exec_type`` such as ``brgemm_avx512_amx_f32`` shows the instruction set and precision really
used). Profiling adds overhead to every call, so these figures explain a benchmark and never replace it:
``wall_ms`` is the profiled calls' own mean, beside the sum of op times it should roughly cover.

Where the runtime reports tensor sizes (ONNX Runtime), each op kind also gets a **memory floor**: the bytes
its nodes read and write over the bandwidth a plain ``c = a + b`` reaches at that size on this machine
(:func:`edgevit.bench.roof.measure_bandwidth`), and the model a **compute floor**: its MACs over the measured
fp32 GEMM roof. An op kind far above its floor is slow by its kernel (a better form or kernel can win); one
near it is bound by memory traffic, which only moving fewer bytes (fusing ops) can reduce.

Each row's **floor** is the larger of its memory floor and its **compute floor** (the MACs its product nodes
executed, from their shapes, at the GEMM roof): a convolution is bound by arithmetic, an add by traffic. Their sum
is the graph's **roofline floor**, and ``op time / roofline floor`` says how close the runtime's kernels come to
this machine's limits as a whole. Why both: two models compared per MAC can differ because one's kernels are
worse (a high ratio: kernel work can win) or because its graph moves more bytes per MAC on a machine whose
bandwidth, not arithmetic, bounds them (a ratio as good as the other's: only fewer bytes can win).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import pipeline, runtimes
from ..errors import EdgevitError
from ..runtimes.base import OpTime
from ..verify import seeded_inputs
from . import environment
from .roof import BandwidthPoint, bandwidth_at, measure_bandwidth, measure_roof
from .suite import parse_runtimes

PROFILED_BACKENDS = ("onnxruntime", "openvino")
# Ops whose output aliases their input where it dies there (ONNX Runtime runs them in place): no traffic floor.
# Counting their nominal bytes overstated a2mamba-n's memory floor by 91 ms (batch 16, 1 thread) while its 647
# Reshape nodes took 7.7 ms in all (issue 20).
VIEW_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


@dataclass
class ProfileReport:
    model: str
    runtime: str
    precision: str
    input_size: tuple[int, int]
    batch: int
    threads: int | None
    calls: int
    wall_ms: float  # mean wall time of the profiled calls (profiler overhead included)
    ops: list[OpTime] = field(default_factory=list)  # per op kind, or per kind and shapes
    artifact: str = ""
    bandwidth: list[BandwidthPoint] = field(default_factory=list)  # memory roof per working-set size
    macs: int | None = None  # per call (all images), when the model is a registry model
    gemm_roof_gmacs_per_s: float | None = None  # measured fp32 GEMM roof with the same threads

    @property
    def op_ms(self) -> float:
        return sum(t.ms for t in self.ops)

    def memory_ms(self, t: OpTime) -> float | None:
        """Milliseconds ``t``'s bytes take at the memory roof of its mean node's size (None: no sizes; 0 for a
        view op, :data:`VIEW_OPS`)."""
        if not t.bytes or not self.bandwidth:
            return None
        if t.op in VIEW_OPS:
            return 0.0
        per_operand = t.bytes / max(t.nodes, 1) / 3  # a + b -> c moves three operands of the probed size
        return t.bytes / (bandwidth_at(self.bandwidth, per_operand) * 1e9) * 1000.0

    def compute_ms(self, t: OpTime) -> float | None:
        """Milliseconds ``t``'s executed MACs take at the measured GEMM roof (None: no product op or no roof)."""
        return self._at_gemm_roof(t.macs)

    def _at_gemm_roof(self, macs: float | None) -> float | None:
        """Milliseconds ``macs`` take at the measured GEMM roof (None: no MACs or no roof)."""
        if not macs or not self.gemm_roof_gmacs_per_s:
            return None
        return macs / (self.gemm_roof_gmacs_per_s * 1e9) * 1000.0

    def floor_ms(self, t: OpTime) -> float | None:
        """``t``'s roofline floor: the larger of its memory and compute floors (None where neither is known)."""
        floors = [f for f in (self.memory_ms(t), self.compute_ms(t)) if f is not None]
        return max(floors) if floors else None

    @property
    def memory_floor_ms(self) -> float | None:
        floors = [self.memory_ms(t) for t in self.ops]
        return sum(f for f in floors if f is not None) if any(f is not None for f in floors) else None

    @property
    def compute_floor_ms(self) -> float | None:
        """The model's MACs (as counted for it, without any padding the graph executes) at the GEMM roof."""
        return self._at_gemm_roof(self.macs)

    @property
    def executed_macs(self) -> float:
        """MACs per call the profiled product nodes executed (padding included)."""
        return sum(t.macs for t in self.ops)

    @property
    def roofline_floor_ms(self) -> float | None:
        """Sum of every row's :meth:`floor_ms`, where every row's traffic is known (ONNX Runtime), else None:
        a sum over product rows alone would read as a whole-graph floor."""
        if not self.ops or not all(t.bytes for t in self.ops) or not self.bandwidth:
            return None
        return sum(self.floor_ms(t) or 0.0 for t in self.ops)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["op_ms"] = self.op_ms
        d["memory_floor_ms"] = self.memory_floor_ms
        d["compute_floor_ms"] = self.compute_floor_ms
        d["executed_macs"] = self.executed_macs
        d["roofline_floor_ms"] = self.roofline_floor_ms
        d["ops"] = [{**asdict(t), "share": t.ms / self.op_ms if self.op_ms else 0.0, "memory_ms": self.memory_ms(t),
                     "compute_ms": self.compute_ms(t), "floor_ms": self.floor_ms(t)} for t in self.ops]
        return d


def profile(model: str | None, runtime: str = "onnxruntime", *, input_size: int | str | tuple[int, int] | None = None,
            batch: int = 1, threads: int | None = None, calls: int = 10, warmup: int = 2,
            artifact: str | Path | None = None, by_shape: bool = False) -> ProfileReport:
    """Profile ``model`` (exported and verified into the benchmark cache, as ``edgevit bench`` does) or a
    user's ``artifact`` in ``runtime`` (``onnxruntime``, ``openvino:f32``, ``openvino:bf16``, ...), with
    the machine's memory and GEMM roofs measured for the floors (about 3 s). ``by_shape`` splits each op kind by
    its nodes' input and output shapes: which of a kind's nodes cost the time (e.g. a model's first-stage
    attention products among all its MatMuls)."""
    specs = parse_runtimes([runtime], "cpu")
    if len(specs) != 1 or specs[0].backend not in PROFILED_BACKENDS:
        raise EdgevitError(f"per-op profiles come from {' and '.join(PROFILED_BACKENDS)}; pass --runtime "
                           f"onnxruntime or openvino:f32 (or :bf16), not {runtime!r}")
    if calls < 1 or warmup < 0 or batch < 1:
        raise EdgevitError("--calls and --batch must be at least 1 and --warmup at least 0")
    spec = specs[0]
    opts = {k: v for k, v in spec.options(threads or 0, None).items() if v}
    if artifact is not None:
        path = Path(artifact)
        runner = runtimes.load(path, spec.backend, profile=True, **opts)
        meta = runner.metadata
        size = tuple(meta.input_size) if meta is not None else tuple(runner.inputs[0].shape[-2:])
        batch = int(runner.inputs[0].shape[0]) if isinstance(runner.inputs[0].shape[0], int) else batch
        name = meta.model if meta is not None else path.stem
    else:
        if model is None:
            raise EdgevitError("name a model to profile, or pass --artifact")
        name = pipeline.resolve_name(model)
        size = tuple(pipeline.parse_input_size(input_size, pipeline.get_model_card(name)))
        path = pipeline.cached_artifact(name, "onnx", size, batch)
        runner = runtimes.load(path, spec.backend, profile=True, **opts)
    x = seeded_inputs(batch, size)
    for _ in range(warmup):
        runner.run(x)
    t0 = time.perf_counter()
    ops = runner.op_profile(x, calls, by_shape)
    wall_ms = (time.perf_counter() - t0) * 1000.0 / calls
    report = ProfileReport(name, spec.label, runner.info.precision, size, batch, runner.info.threads, calls,
                           wall_ms, ops, str(path))
    _add_roofs(report, runner.info.threads or environment.physical_cores())
    return report


def _add_roofs(report: ProfileReport, threads: int) -> None:
    """The machine's measured memory and fp32 GEMM roofs (same threads), and the model's MACs per call."""
    from ..models import create_model, list_models
    from ..models.counting import count_macs

    if any(t.bytes for t in report.ops):
        report.bandwidth = measure_bandwidth(threads)
    report.gemm_roof_gmacs_per_s = measure_roof(threads, ["fp32"])["fp32"].gmacs_per_s
    if report.model in list_models():
        report.macs = count_macs(create_model(report.model), report.input_size).total * report.batch
