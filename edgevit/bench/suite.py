"""Benchmark a matrix of models x runtimes x resolutions; a case that fails is a row with its error.

Scenarios follow the papers and MLPerf: ``throughput`` runs large batches and reports images/s (total images
over total time, median over repeats); ``latency`` runs batch 1 and reports p50/p90/p99.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import pipeline, resources, runtimes
from ..errors import EdgevitError
from ..models import count_macs, count_params, get_model_card, resolve_name
from ..verify import seeded_inputs
from . import environment, memory, references, roof
from .memory import PeakRssSampler, release_freed_memory
from .timing import Measurement, TimingPolicy, measure_repeated

SCENARIOS = ("throughput", "latency")
# Default images per call in the throughput scenario at 224x224; other resolutions keep the pixel count.
DEFAULT_THROUGHPUT_BATCH = {"cpu": 16, "cuda": 256}


@dataclass(frozen=True)
class RuntimeSpec:
    """A benchmark column: a backend on a device at a requested precision (``None``: the backend default).

    The torch variants are what a PyTorch user tries before exporting: ``channels_last`` memory format,
    bf16 autocast, and ``compile`` (inductor; its compile time is reported apart from the timed runs).
    ``precision`` is what the runner computes in (OpenVINO's inference precision, torch autocast);
    ``artifact_precision`` what the exported file stores (int8: a quantized artifact, exported and verified
    by the agreement gate into the cache like any other). They differ for OpenVINO int8: an int8 IR whose
    float parts run f32.
    """

    label: str
    backend: str
    device: str
    precision: str | None
    artifact: str | None  # artifact format the backend runs ("onnx"), None for eager torch
    channels_last: bool = False
    compile: bool = False
    artifact_precision: str | None = None  # the export's --precision (None: the format's default)
    memory_pattern: bool = False  # ONNX Runtime with its memory pattern (its default; edgevit's is off)
    keep_denormals: bool = False  # ONNX Runtime without flush-to-zero (its default; edgevit flushes)

    def options(self, threads: int, streams: int | None) -> dict[str, object]:
        opts: dict[str, object] = {"threads": threads} if self.device == "cpu" else {}
        if self.backend == "torch":
            opts["device"] = self.device
            if self.precision:
                opts["precision"] = self.precision
            if self.channels_last:
                opts["channels_last"] = True
            if self.compile:
                opts["compile"] = True
        elif self.backend == "openvino":
            opts["precision"] = self.precision or "default"
            if streams:
                opts["streams"] = streams
        elif self.backend == "onnxruntime":
            if self.memory_pattern:
                opts["memory_pattern"] = True
            if self.keep_denormals:
                opts["keep_denormals"] = True
        elif self.backend == "tensorrt":
            opts = {}
        return opts


_TORCH_CPU = {
    "torch": RuntimeSpec("torch", "torch", "cpu", None, None),
    "torch:channels-last": RuntimeSpec("torch:channels-last", "torch", "cpu", None, None, channels_last=True),
    "torch:bf16": RuntimeSpec("torch:bf16", "torch", "cpu", "bf16", None),
    "torch-compile": RuntimeSpec("torch-compile", "torch", "cpu", None, None, compile=True),
}

# int8 artifacts beside the float columns (`--runtimes onnxruntime,onnxruntime:int8`, or `int8` for all three)
_INT8_CPU = {
    "onnxruntime:int8": RuntimeSpec("onnxruntime:int8", "onnxruntime", "cpu", None, "onnx", artifact_precision="int8"),
    "openvino:int8": RuntimeSpec("openvino:int8", "openvino", "cpu", "f32", "openvino", artifact_precision="int8"),
    "executorch:int8": RuntimeSpec("executorch:xnnpack-int8", "executorch", "cpu", None, "executorch",
                                   artifact_precision="int8"),
}
_TENSORRT = {p: RuntimeSpec(f"tensorrt:{p}", "tensorrt", "cuda", p, "tensorrt", artifact_precision=p)
             for p in ("fp16", "fp32")}

# name -> specs it expands to; OpenVINO is benchmarked both in f32 and in the precision the device picks by
# default (bf16 on AVX512-BF16/AMX CPUs), each labelled, because the default silently changes the numerics.
_RUNTIME_ALIASES: dict[str, dict[str, list[RuntimeSpec]]] = {
    "cpu": {
        **{k: [v] for k, v in _TORCH_CPU.items()},
        "onnxruntime": [RuntimeSpec("onnxruntime", "onnxruntime", "cpu", None, "onnx")],
        "onnxruntime:memory-pattern": [RuntimeSpec("onnxruntime:memory-pattern", "onnxruntime", "cpu", None,
                                                   "onnx", memory_pattern=True)],
        "onnxruntime:denormals": [RuntimeSpec("onnxruntime:denormals", "onnxruntime", "cpu", None, "onnx",
                                              keep_denormals=True)],
        "openvino": [RuntimeSpec("openvino:f32", "openvino", "cpu", "f32", "onnx"),
                     RuntimeSpec("openvino:default", "openvino", "cpu", None, "onnx")],
        "openvino:f32": [RuntimeSpec("openvino:f32", "openvino", "cpu", "f32", "onnx")],
        "openvino:bf16": [RuntimeSpec("openvino:bf16", "openvino", "cpu", "bf16", "onnx")],
        "openvino:default": [RuntimeSpec("openvino:default", "openvino", "cpu", None, "onnx")],
        "executorch": [RuntimeSpec("executorch:xnnpack", "executorch", "cpu", None, "executorch")],
        "ort": [RuntimeSpec("onnxruntime:ort", "ort", "cpu", None, "ort")],
        **{k: [v] for k, v in _INT8_CPU.items()},
        "int8": list(_INT8_CPU.values()),
    },
    "cuda": {
        "torch": [RuntimeSpec("torch-cuda:fp32", "torch", "cuda", "fp32", None),
                  RuntimeSpec("torch-cuda:fp16", "torch", "cuda", "fp16", None)],
        "torch:fp32": [RuntimeSpec("torch-cuda:fp32", "torch", "cuda", "fp32", None)],
        "torch:fp16": [RuntimeSpec("torch-cuda:fp16", "torch", "cuda", "fp16", None)],
        "tensorrt": [_TENSORRT["fp16"]],
        "tensorrt:fp32": [_TENSORRT["fp32"]],
        "tensorrt:fp16": [_TENSORRT["fp16"]],
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


# The MAC convention of each column, named in the JSON and the table legend (issue: one convention per column).
EFFICIENCY_MACS = "all"  # every op the shared counter sees (attention matmuls and custom ops included)


@dataclass
class BenchRow:
    case: BenchCase
    params_m: float | None = None
    gmacs: float | None = None  # per image, all-op convention (EFFICIENCY_MACS)
    gmacs_paper: float | None = None  # per image, the paper's convention (beside paper figures)
    paper_macs_convention: str | None = None
    precision: str | None = None  # what really ran, read back from the runtime
    details: dict[str, str] = field(default_factory=dict)
    measurement: Measurement | None = None
    roof_gmacs_per_s: float | None = None  # measured GEMM roof at the row's precision
    roof_precision: str | None = None
    peak_gmacs_per_s: float | None = None  # theoretical, from the microarchitecture table
    peak_assumption: str | None = None
    load_seconds: float | None = None
    first_call_seconds: float | None = None  # cold first inference; for torch-compile this is the compile
    load_mb: float | None = None  # RSS growth while the runner was created (artifact already on disk)
    infer_mb: float | None = None  # RSS peak during warm-up and timing above the loaded state
    peak_rss_mb: float | None = None
    cuda_peak_mb: float | None = None
    reference: dict[str, object] | None = None  # the runtime's own tool on the same file (benchmark_app, ...)
    error: str | None = None

    @property
    def achieved_gmacs_per_s(self) -> float | None:
        if self.measurement is None or self.gmacs is None:
            return None
        return self.gmacs * self.measurement.images_per_s

    @property
    def roof_fraction(self) -> float | None:
        achieved = self.achieved_gmacs_per_s
        return achieved / self.roof_gmacs_per_s if achieved and self.roof_gmacs_per_s else None

    @property
    def peak_fraction(self) -> float | None:
        achieved = self.achieved_gmacs_per_s
        return achieved / self.peak_gmacs_per_s if achieved and self.peak_gmacs_per_s else None

    def to_dict(self) -> dict[str, object]:
        c = self.case
        out: dict[str, object] = {
            "model": c.model, "runtime": c.runtime.label, "backend": c.runtime.backend, "device": c.runtime.device,
            "requested_precision": c.runtime.precision, "artifact_precision": c.runtime.artifact_precision,
            "precision": self.precision, "scenario": c.scenario,
            "input_size": list(c.input_size), "batch": c.batch, "threads": c.threads, "streams": c.streams,
            "params_m": self.params_m, "gmacs_per_image": self.gmacs, "macs_convention": EFFICIENCY_MACS,
            "gmacs_per_image_paper": self.gmacs_paper, "paper_macs_convention": self.paper_macs_convention,
            "achieved_gmacs_per_s": self.achieved_gmacs_per_s, "roof_precision": self.roof_precision,
            "roof_gmacs_per_s": self.roof_gmacs_per_s, "roof_fraction": self.roof_fraction,
            "peak_gmacs_per_s": self.peak_gmacs_per_s, "peak_fraction": self.peak_fraction,
            "peak_assumption": self.peak_assumption, "load_seconds": self.load_seconds,
            "first_call_seconds": self.first_call_seconds, "load_mb": self.load_mb, "infer_mb": self.infer_mb,
            "peak_rss_mb": self.peak_rss_mb, "cuda_peak_mb": self.cuda_peak_mb, "reference": self.reference,
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
    planned: int = 0  # cases in the run; fewer rows means it was interrupted

    def to_dict(self) -> dict[str, object]:
        return {"environment": self.environment, "policy": asdict(self.policy), "planned_cases": self.planned,
                "complete": len(self.rows) == self.planned,
                "results": [r.to_dict() for r in self.rows]}


ProgressFn = Callable[[BenchCase, int, int], None]  # (case, calls done, calls planned)
RowFn = Callable[[BenchReport], None]  # called with the report so far after every finished case


def artifact_for(case: BenchCase) -> Path | None:
    """The file the case runs, exported (and verified) into the cache first: never inside a measured window."""
    spec = case.runtime
    if spec.backend == "torch":
        return None
    if case.artifact:
        return Path(case.artifact)
    return pipeline.cached_artifact(case.model, spec.artifact or "", case.input_size, case.batch,
                                    precision=spec.artifact_precision)


def make_runner(case: BenchCase, artifact: Path | None = None) -> runtimes.Runner:
    """A runner for one case (``artifact`` from :func:`artifact_for`; looked up when not given)."""
    spec = case.runtime
    opts = spec.options(case.threads, case.streams)
    if spec.backend == "torch":
        return runtimes.load(pipeline.build_model(case.model), "torch", input_size=case.input_size, **opts)
    return runtimes.load(artifact or artifact_for(case), spec.backend, **opts)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_case(case: BenchCase, policy: TimingPolicy, progress: ProgressFn | None = None,
             roofs: dict[str, roof.RoofProbe] | None = None, reference: bool = False) -> BenchRow:
    """Export (outside any measurement), load (memory: load), time (memory: inference), compare with the roof."""
    row = BenchRow(case)
    cuda = case.runtime.device == "cuda"
    # torch.compile fails in many ways (dynamo, inductor, the C compiler): each is a row with its error
    expected: tuple[type[BaseException], ...] = (Exception,) if case.runtime.compile else (
        EdgevitError, RuntimeError, ValueError, MemoryError, ImportError, OSError)
    try:
        artifact = artifact_for(case)
        if artifact is not None:
            row.details["artifact"] = str(artifact)
        release_freed_memory()  # this case's peak must not hold the heap the previous case freed
        with PeakRssSampler() as load_rss:
            t0 = time.perf_counter()
            runner = make_runner(case, artifact)
            row.load_seconds = time.perf_counter() - t0
        row.load_mb = (load_rss.peak - load_rss.baseline) / 2**20
        row.precision = runner.info.precision
        row.details.update(runner.info.details)
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        with PeakRssSampler() as rss:
            call = runner.benchmark_callable(seeded_inputs(case.batch, case.input_size))
            t0 = time.perf_counter()
            call()
            row.first_call_seconds = time.perf_counter() - t0
            row.measurement = measure_repeated(call, case.batch, policy,
                                               (lambda i, n: progress(case, i, n)) if progress else None)
        row.infer_mb = (rss.peak - rss.baseline) / 2**20
        row.peak_rss_mb = rss.peak / 2**20
        if cuda:
            row.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif roofs is not None:
            row.roof_precision = roof.roof_precision(row.precision)
            probe = roofs.get(row.roof_precision)
            if probe is not None:
                row.roof_gmacs_per_s = probe.gmacs_per_s
                row.peak_gmacs_per_s = probe.theoretical.gmacs_per_s
                row.peak_assumption = probe.theoretical.source
        del runner, call
    except expected as exc:
        row.error = _first_line(exc)
    if reference and row.error is None and row.measurement is not None:
        row.reference = references.reference_for(case, Path(row.details["artifact"]) if "artifact" in row.details
                                                 else None, policy)
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
        artifact: str | Path | None = None, on_row: RowFn | None = None, reference: bool = False,
        roof_seconds: float = 0.3) -> BenchReport:
    """Benchmark every (model, resolution, runtime); ``batches`` pairs with ``resolutions`` (one value: all).

    With ``artifact``, the model, resolution and (static) batch come from the artifact's metadata and the
    non-torch runtimes run that file. Every case is checked (names, sizes, the memory it needs) before the
    first one runs. ``on_row`` sees the report after each case (to save finished rows as they come);
    ``reference`` adds the runtime's own tool on the same file (OpenVINO ``benchmark_app``, a plain ORT
    session); ``roof_seconds`` is the GEMM probe's time per precision (0: no probe).
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
    if threads is not None and threads < 1:
        raise EdgevitError(f"--threads must be at least 1, got {threads}")
    n_threads = threads or environment.logical_cores()
    plan = _plan(names, res_list, batches, scenario, device)
    _check_memory(plan)
    import torch

    env = environment.collect()
    env.update(threads=n_threads, streams=streams, scenario=scenario, device=device, macs_convention=EFFICIENCY_MACS,
               timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    report = BenchReport(env, policy, [], planned=len(plan) * len(specs))
    with roof.torch_threads(n_threads):
        roofs = roof.measure_roof(n_threads, seconds=roof_seconds) if device == "cpu" and roof_seconds > 0 else None
        if roofs is not None:
            env["roof"] = {p: r.to_dict() for p, r in roofs.items()}
        for item in plan:
            for spec in specs:
                case = BenchCase(item.model, spec, scenario, item.size, item.batch, n_threads, streams,
                                 str(artifact) if artifact is not None else None)
                row = run_case(case, policy, progress, roofs, reference)
                row.params_m, row.gmacs = item.params_m, item.gmacs
                row.gmacs_paper, row.paper_macs_convention = item.gmacs_paper, item.paper_convention
                report.rows.append(row)
                if on_row:
                    on_row(report)
    return report


@dataclass(frozen=True)
class _PlannedCase:
    model: str
    size: tuple[int, int]
    batch: int
    params_m: float
    gmacs: float
    gmacs_paper: float
    paper_convention: str
    fixed_bytes: int
    per_image_bytes: int

    @property
    def needs_bytes(self) -> int:
        return self.fixed_bytes + self.batch * self.per_image_bytes


def _plan(names: Sequence[str], res_list: Sequence[str | int | None], batches: Sequence[int] | None,
          scenario: str, device: str) -> list[_PlannedCase]:
    """Validate every size and count every case's MACs and memory before any case runs."""
    plan = []
    for name in names:
        card = get_model_card(name)
        sizes = [pipeline.parse_input_size(r, card) for r in res_list]
        model = pipeline.build_model(name)
        params = count_params(model)
        for i, size in enumerate(sizes):
            macs = count_macs(model, size)
            batch = (batches[0] if len(batches) == 1 else batches[i]) if batches else default_batch(scenario, device, size)
            fixed, per_image = memory.estimate_case_bytes(params * 4, _largest_activation_bytes(model, size),
                                                          size)
            plan.append(_PlannedCase(name, size, batch, params / 1e6, macs.total / 1e9,
                                     macs.for_convention(card.reported.macs_convention) / 1e9,
                                     card.reported.macs_convention, fixed, per_image))
        del model
    return plan


def _largest_activation_bytes(model: "torch.nn.Module", size: tuple[int, int]) -> int:
    """The largest single activation of one image at the benchmarked size itself (measured, not scaled from
    a probe: global attention grows faster than the pixel count)."""
    return int(resources.largest_activation_per_pixel(model, size) * size[0] * size[1])


def _check_memory(plan: Sequence[_PlannedCase]) -> None:
    """Refuse a case whose estimated memory exceeds the RAM available now, before anything is allocated."""
    available = resources.available_memory_bytes()
    for item in plan:
        if item.needs_bytes > 0.9 * available:
            fits = max(1, int((0.9 * available - item.fixed_bytes) / item.per_image_bytes))
            raise EdgevitError(
                f"{item.model} at {item.size[0]}x{item.size[1]} with batch {item.batch} needs about "
                f"{item.needs_bytes / 1e9:.1f} GB (estimate), but {available / 1e9:.1f} GB of RAM is available; "
                f"use --batch-size {fits} or less")


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


def artifact_runtime(path: str | Path) -> str:
    """The runtime that runs a user's artifact when --runtimes is not given: the backend that reads its file
    (a ``.pte`` in ExecuTorch, an ``.ort`` folder in ORT-format ONNX Runtime; OpenVINO pinned to f32, as
    verification runs it; never an eager torch row)."""
    backend = runtimes.backend_for_path(Path(path))
    return "openvino:f32" if backend == "openvino" else backend


def case_count(models: Sequence[str], runtime_names: Sequence[str], device: str,
               resolutions: Sequence[str | int] | None) -> int:
    return len(models) * len(parse_runtimes(runtime_names, device)) * max(1, len(resolutions or []))
