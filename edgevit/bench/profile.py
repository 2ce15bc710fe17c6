"""Per-op profiles from the runtimes' own counters: where one inference's time goes, per op kind.

Why: a throughput figure says a model is slow, not why. ONNX Runtime's profiler and OpenVINO's per-layer
counters (PERF_COUNT) attribute each call's time to the ops that ran and name the kernel that ran them
(OpenVINO's ``exec_type`` such as ``brgemm_avx512_amx_f32`` shows the instruction set and precision really
used). Profiling adds overhead to every call, so these figures explain a benchmark and never replace it:
``wall_ms`` is the profiled calls' own mean, beside the sum of op times it should roughly cover.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import pipeline, runtimes
from ..errors import EdgevitError
from ..runtimes.base import OpTime
from ..verify import seeded_inputs
from .suite import parse_runtimes

PROFILED_BACKENDS = ("onnxruntime", "openvino")


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
    ops: list[OpTime] = field(default_factory=list)
    artifact: str = ""

    @property
    def op_ms(self) -> float:
        return sum(t.ms for t in self.ops)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["op_ms"] = self.op_ms
        d["ops"] = [{**asdict(t), "share": t.ms / self.op_ms if self.op_ms else 0.0} for t in self.ops]
        return d


def profile(model: str | None, runtime: str = "onnxruntime", *, input_size: int | str | tuple[int, int] | None = None,
            batch: int = 1, threads: int | None = None, calls: int = 10, warmup: int = 2,
            artifact: str | Path | None = None) -> ProfileReport:
    """Profile ``model`` (exported and verified into the benchmark cache, as ``edgevit bench`` does) or a
    user's ``artifact`` in ``runtime`` (``onnxruntime``, ``openvino:f32``, ``openvino:bf16``, ...)."""
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
        path = pipeline.cached_onnx(name, size, batch)
        runner = runtimes.load(path, spec.backend, profile=True, **opts)
    x = seeded_inputs(batch, size)
    for _ in range(warmup):
        runner.run(x)
    t0 = time.perf_counter()
    ops = runner.op_profile(x, calls)
    wall_ms = (time.perf_counter() - t0) * 1000.0 / calls
    return ProfileReport(name, spec.label, runner.info.precision, size, batch, runner.info.threads, calls,
                         wall_ms, ops, str(path))
