"""Benchmark a matrix of models x runtimes x resolutions; a case that fails is a row with its error.

Scenarios follow the papers and MLPerf: ``throughput`` runs large batches and reports images/s (total images
over total time, median over repeats); ``latency`` runs batch 1 and reports p50/p90/p99.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import pipeline, runtimes
from ..errors import EdgevitError
from ..models import count_macs, count_params, get_model_card, resolve_name
from ..verify import seeded_inputs
from . import environment
from .memory import PeakRssSampler
from .timing import Measurement, TimingPolicy, measure_repeated

SCENARIOS = ("throughput", "latency")
# Default images per call in the throughput scenario at 224x224; other resolutions keep the pixel count.
DEFAULT_THROUGHPUT_BATCH = {"cpu": 16, "cuda": 256}


@dataclass(frozen=True)
class RuntimeSpec:
    """A benchmark column: a backend on a device at a requested precision (``None``: the backend default)."""

    label: str
    backend: str
    device: str
    precision: str | None
    artifact: str | None  # artifact format the backend runs ("onnx"), None for eager torch

    def options(self, threads: int, streams: int | None) -> dict[str, object]:
        opts: dict[str, object] = {"threads": threads} if self.device == "cpu" else {}
        if self.backend == "torch":
            opts["device"] = self.device
            if self.precision:
                opts["precision"] = self.precision
        elif self.backend == "openvino":
            opts["precision"] = self.precision or "default"
            if streams:
                opts["streams"] = streams
        elif self.backend == "tensorrt":
            opts = {}
        return opts


# name -> specs it expands to; OpenVINO is benchmarked both in f32 and in the precision the device picks by
# default (bf16 on AVX512-BF16/AMX CPUs), each labelled, because the default silently changes the numerics.
_RUNTIME_ALIASES: dict[str, dict[str, list[RuntimeSpec]]] = {
    "cpu": {
        "torch": [RuntimeSpec("torch", "torch", "cpu", None, None)],
        "onnxruntime": [RuntimeSpec("onnxruntime", "onnxruntime", "cpu", None, "onnx")],
        "openvino": [RuntimeSpec("openvino:f32", "openvino", "cpu", "f32", "onnx"),
                     RuntimeSpec("openvino:default", "openvino", "cpu", None, "onnx")],
        "openvino:f32": [RuntimeSpec("openvino:f32", "openvino", "cpu", "f32", "onnx")],
        "openvino:bf16": [RuntimeSpec("openvino:bf16", "openvino", "cpu", "bf16", "onnx")],
        "openvino:default": [RuntimeSpec("openvino:default", "openvino", "cpu", None, "onnx")],
        "executorch": [RuntimeSpec("executorch:xnnpack", "executorch", "cpu", None, "executorch")],
        "ort": [RuntimeSpec("onnxruntime:ort", "ort", "cpu", None, "ort")],
    },
    "cuda": {
        "torch": [RuntimeSpec("torch-cuda:fp32", "torch", "cuda", "fp32", None),
                  RuntimeSpec("torch-cuda:fp16", "torch", "cuda", "fp16", None)],
        "torch:fp32": [RuntimeSpec("torch-cuda:fp32", "torch", "cuda", "fp32", None)],
        "torch:fp16": [RuntimeSpec("torch-cuda:fp16", "torch", "cuda", "fp16", None)],
        "tensorrt": [RuntimeSpec("tensorrt:fp16", "tensorrt", "cuda", "fp16", "tensorrt")],
        "tensorrt:fp32": [RuntimeSpec("tensorrt:fp32", "tensorrt", "cuda", "fp32", "tensorrt")],
        "tensorrt:fp16": [RuntimeSpec("tensorrt:fp16", "tensorrt", "cuda", "fp16", "tensorrt")],
    },
}


def parse_runtimes(names: Sequence[str], device: str) -> list[RuntimeSpec]:
    if device not in _RUNTIME_ALIASES:
        raise EdgevitError(f"unknown device {device!r}; choose cpu or cuda")
    table = _RUNTIME_ALIASES[device]
    specs: list[RuntimeSpec] = []
    for name in names:
        key = name.strip().lower().replace("torch-cuda", "torch")
        if key not in table:
            raise EdgevitError(f"unknown runtime {name!r} for --device {device}; choose from {', '.join(table)}")
        specs += [s for s in table[key] if s not in specs]
    return specs


@dataclass(frozen=True)
class BenchCase:
    model: str
    runtime: RuntimeSpec
    scenario: str
    input_size: tuple[int, int]
    batch: int
    threads: int
    streams: int | None = None
    artifact: str | None = None  # a user's exported file/folder, run instead of the cached export


@dataclass
class BenchRow:
    case: BenchCase
    params_m: float | None = None
    gmacs: float | None = None  # per image, every op the shared counter sees (custom ops included)
    precision: str | None = None  # what really ran, read back from the runtime
    details: dict[str, str] = field(default_factory=dict)
    measurement: Measurement | None = None
    peak_gmacs_per_s: float | None = None
    peak_assumption: str | None = None
    peak_rss_mb: float | None = None
    rss_delta_mb: float | None = None
    cuda_peak_mb: float | None = None
    error: str | None = None

    @property
    def achieved_gmacs_per_s(self) -> float | None:
        if self.measurement is None or self.gmacs is None:
            return None
        return self.gmacs * self.measurement.images_per_s

    @property
    def peak_fraction(self) -> float | None:
        achieved = self.achieved_gmacs_per_s
        return achieved / self.peak_gmacs_per_s if achieved and self.peak_gmacs_per_s else None

    def to_dict(self) -> dict[str, object]:
        c = self.case
        out: dict[str, object] = {
            "model": c.model, "runtime": c.runtime.label, "backend": c.runtime.backend, "device": c.runtime.device,
            "requested_precision": c.runtime.precision, "precision": self.precision, "scenario": c.scenario,
            "input_size": list(c.input_size), "batch": c.batch, "threads": c.threads, "streams": c.streams,
            "params_m": self.params_m, "gmacs_per_image": self.gmacs,
            "achieved_gmacs_per_s": self.achieved_gmacs_per_s, "peak_gmacs_per_s": self.peak_gmacs_per_s,
            "peak_fraction": self.peak_fraction, "peak_assumption": self.peak_assumption,
            "peak_rss_mb": self.peak_rss_mb, "rss_delta_mb": self.rss_delta_mb, "cuda_peak_mb": self.cuda_peak_mb,
            "details": self.details, "error": self.error,
        }
        if self.measurement is not None:
            out.update(self.measurement.to_dict())
        return out


@dataclass
class BenchReport:
    environment: dict[str, object]
    policy: TimingPolicy
    rows: list[BenchRow]

    def to_dict(self) -> dict[str, object]:
        return {"environment": self.environment, "policy": asdict(self.policy),
                "results": [r.to_dict() for r in self.rows]}


ProgressFn = Callable[[BenchCase, int, int], None]  # (case, calls done, calls planned)


def make_runner(case: BenchCase) -> runtimes.Runner:
    """A runner for one case; artifacts are exported (and verified) once into the cache."""
    spec = case.runtime
    opts = spec.options(case.threads, case.streams)
    if case.artifact and spec.backend != "torch":
        return runtimes.load(case.artifact, spec.backend, **opts)
    if spec.backend == "torch":
        return runtimes.load(pipeline.build_model(case.model), "torch", input_size=case.input_size, **opts)
    if spec.artifact == "onnx":
        path = pipeline.cached_onnx(case.model, case.input_size, case.batch)
    else:
        path = pipeline.cached_artifact(case.model, spec.artifact or "", case.input_size, case.batch,
                                        precision=spec.precision)
    return runtimes.load(path, spec.backend, **opts)


def run_case(case: BenchCase, policy: TimingPolicy, progress: ProgressFn | None = None) -> BenchRow:
    row = BenchRow(case)
    cuda = case.runtime.device == "cuda"
    try:
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        with PeakRssSampler() as rss:
            runner = make_runner(case)
            row.precision = runner.info.precision
            row.details = dict(runner.info.details)
            call = runner.benchmark_callable(seeded_inputs(case.batch, case.input_size))
            row.measurement = measure_repeated(call, case.batch, policy,
                                               (lambda i, n: progress(case, i, n)) if progress else None)
        row.peak_rss_mb = rss.peak / 2**20
        row.rss_delta_mb = (rss.peak - rss.baseline) / 2**20
        if cuda:
            row.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = environment.cpu_peak(row.precision or "fp32", case.threads)
            row.peak_gmacs_per_s, row.peak_assumption = peak.gmacs_per_s, peak.assumption
    except (EdgevitError, RuntimeError, ValueError, MemoryError, ImportError, OSError) as exc:
        row.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return row


def default_batch(scenario: str, device: str, input_size: tuple[int, int]) -> int:
    if scenario == "latency":
        return 1
    pixels = input_size[0] * input_size[1]
    return max(1, round(DEFAULT_THROUGHPUT_BATCH[device] * 224 * 224 / pixels))


def run(models: Sequence[str], runtime_names: Sequence[str], *, device: str = "cpu",
        scenario: str = "throughput", resolutions: Sequence[str | int] | None = None,
        batches: Sequence[int] | None = None, threads: int | None = None, streams: int | None = None,
        policy: TimingPolicy = TimingPolicy(), progress: ProgressFn | None = None,
        artifact: str | Path | None = None) -> BenchReport:
    """Benchmark every (model, resolution, runtime); ``batches`` pairs with ``resolutions`` (one value: all).

    With ``artifact``, the model, resolution and (static) batch come from the artifact's metadata and the
    non-torch runtimes run that file; torch runs the PyTorch model it was exported from, for comparison.
    """
    if artifact is not None:
        models, resolutions, batches = _artifact_case(Path(artifact), batches)
    if scenario not in SCENARIOS:
        raise EdgevitError(f"unknown scenario {scenario!r}; choose {' or '.join(SCENARIOS)}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise EdgevitError("--device cuda needs a CUDA GPU and a CUDA build of torch; none is available here")
    names = [resolve_name(m) for m in models]  # fail fast on a typo, before any timing
    specs = parse_runtimes(runtime_names, device)
    res_list: list[str | int | None] = list(resolutions) if resolutions else [None]
    if batches and len(batches) not in (1, len(res_list)):
        raise EdgevitError(f"give one batch size or one per resolution ({len(res_list)}), got {len(batches)}")
    if batches and any(b < 1 for b in batches):
        raise EdgevitError("batch sizes must be at least 1")
    if scenario == "latency" and batches and any(b != 1 for b in batches):
        raise EdgevitError("the latency scenario runs batch 1; use --scenario throughput for larger batches")
    n_threads = threads or environment.logical_cores()
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)  # process-wide in PyTorch: restored below
    try:
        rows = _run_cases(names, specs, res_list, batches, scenario, device, n_threads, streams, policy, progress,
                          str(artifact) if artifact is not None else None)
    finally:
        torch.set_num_threads(previous_threads)
    env = environment.collect()
    env.update(threads=n_threads, streams=streams, scenario=scenario, device=device,
               timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return BenchReport(env, policy, rows)


def _run_cases(names: Sequence[str], specs: Sequence[RuntimeSpec], res_list: Sequence[str | int | None],
               batches: Sequence[int] | None, scenario: str, device: str, n_threads: int, streams: int | None,
               policy: TimingPolicy, progress: ProgressFn | None, artifact: str | None) -> list[BenchRow]:
    rows = []
    for name in names:
        card = get_model_card(name)
        sizes = [pipeline.parse_input_size(r, card) for r in res_list]  # validate all before timing any
        model = pipeline.build_model(name)
        params = count_params(model) / 1e6
        for i, size in enumerate(sizes):
            gmacs = count_macs(model, size).total / 1e9
            batch = (batches[0] if len(batches) == 1 else batches[i]) if batches else default_batch(scenario, device, size)
            for spec in specs:
                case = BenchCase(name, spec, scenario, size, batch, n_threads, streams, artifact)
                row = run_case(case, policy, progress)
                row.params_m, row.gmacs = params, gmacs
                rows.append(row)
    return rows


def _artifact_case(path: Path, batches: Sequence[int] | None) -> tuple[list[str], list[str], list[int] | None]:
    if not path.exists():
        raise EdgevitError(f"artifact {str(path)!r} does not exist; export one with `edgevit export`")
    meta = runtimes.load(path).metadata
    if meta is None:
        raise EdgevitError(f"{str(path)!r} carries no edgevit metadata; benchmark it by model name instead")
    if meta.batch is not None and batches and list(batches) != [meta.batch]:
        raise EdgevitError(f"{str(path)!r} has a fixed batch of {meta.batch}; drop --batch-size or pass {meta.batch}")
    size = f"{meta.input_size[0]}x{meta.input_size[1]}"
    return [meta.model], [size], [meta.batch] if meta.batch is not None else (list(batches) if batches else None)


def case_count(models: Sequence[str], runtime_names: Sequence[str], device: str,
               resolutions: Sequence[str | int] | None) -> int:
    return len(models) * len(parse_runtimes(runtime_names, device)) * max(1, len(resolutions or []))
