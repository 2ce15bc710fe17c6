"""Benchmark a matrix of models x runtimes; every case that fails becomes a row with its error."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .. import pipeline, runtimes
from ..errors import EdgevitError
from ..models import count_macs, count_params, get_model_card, resolve_name
from ..verify import seeded_inputs
from . import environment
from .timing import LatencyStats, TimingPolicy, measure


@dataclass(frozen=True)
class BenchCase:
    model: str
    runtime: str
    batch: int
    input_size: tuple[int, int]
    threads: int


@dataclass
class BenchRow:
    case: BenchCase
    params_m: float | None = None
    gmacs: float | None = None
    precision: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    stats: LatencyStats | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {**asdict(self.case), "params_m": self.params_m, "gmacs": self.gmacs,
                                  "precision": self.precision, "details": self.details, "error": self.error}
        out["input_size"] = list(self.case.input_size)
        if self.stats is not None:
            out.update(self.stats.to_dict())
        return out


@dataclass
class BenchReport:
    environment: dict[str, object]
    policy: TimingPolicy
    rows: list[BenchRow]

    def to_dict(self) -> dict[str, object]:
        return {"environment": self.environment, "policy": asdict(self.policy),
                "results": [r.to_dict() for r in self.rows]}


ProgressFn = Callable[[BenchCase, int, int], None]  # (case, iterations done, iterations planned)


def make_runner(case: BenchCase) -> runtimes.Runner:
    """A runner for one case; artifacts are exported (and verified) once into the cache."""
    if case.runtime == "torch":
        return runtimes.load(pipeline.build_model(case.model), "torch", threads=case.threads,
                             input_size=case.input_size)
    if case.runtime == "onnxruntime":
        path = pipeline.cached_onnx(case.model, case.input_size, case.batch)
        return runtimes.load(path, "onnxruntime", threads=case.threads)
    raise EdgevitError(f"runtime {case.runtime!r} cannot be benchmarked on CPU; choose torch or onnxruntime")


def run_case(case: BenchCase, policy: TimingPolicy, progress: ProgressFn | None = None) -> BenchRow:
    row = BenchRow(case)
    try:
        runner = make_runner(case)
        row.precision = runner.info.precision
        row.details = dict(runner.info.details)
        x = seeded_inputs(case.batch, case.input_size)
        row.stats = measure(lambda: runner.run(x), case.batch, policy,
                            (lambda i, n: progress(case, i, n)) if progress else None)
    except (EdgevitError, RuntimeError, ValueError, MemoryError) as exc:
        row.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return row


def run(models: Sequence[str], runtime_names: Sequence[str], *, batch: int = 1,
        input_size: tuple[int, int] | None = None, threads: int | None = None,
        policy: TimingPolicy = TimingPolicy(), progress: ProgressFn | None = None) -> BenchReport:
    """Benchmark every (model, runtime) pair on CPU."""
    names = [resolve_name(m) for m in models]  # fail fast on a typo, before any timing
    unknown = [r for r in runtime_names if r not in runtimes.backends()]
    if unknown:
        raise EdgevitError(f"unknown runtime {unknown[0]!r}; choose from {', '.join(runtimes.backends())}")
    n_threads = threads or environment.logical_cores()
    torch.set_num_threads(n_threads)
    rows = []
    for name in names:
        card = get_model_card(name)
        size = pipeline.parse_input_size(input_size, card)
        model = pipeline.build_model(name)
        params, macs = count_params(model) / 1e6, count_macs(model, size).total / 1e9
        for runtime in runtime_names:
            row = run_case(BenchCase(name, runtime, batch, size, n_threads), policy, progress)
            row.params_m, row.gmacs = params, macs
            rows.append(row)
    env = environment.collect()
    env["threads"] = n_threads
    env["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return BenchReport(env, policy, rows)
