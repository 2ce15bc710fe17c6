"""Timing loop and statistics (no model knowledge here)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimingPolicy:
    """Warm up by iterations *and* time (first calls pay allocation, JIT and cache costs), then time at least
    ``iters`` calls and at least ``min_seconds``; repeat the timed part ``repeats`` times so the report can
    give a median and a spread instead of one lucky or unlucky run."""

    warmup_iters: int = 3
    warmup_seconds: float = 1.0
    iters: int = 20
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    repeats: int = 3


@dataclass(frozen=True)
class LatencyStats:
    """Latencies of one timed run (milliseconds per call of ``batch`` images)."""

    batch: int
    samples_ms: tuple[float, ...]

    @property
    def count(self) -> int:
        return len(self.samples_ms)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def images_per_s(self) -> float:
        """Total images over total time, as the papers' throughput tables count it."""
        return self.batch * self.count / (sum(self.samples_ms) / 1000.0)


@dataclass(frozen=True)
class Measurement:
    """Several timed runs of the same case: throughput as median over runs, latency pooled over runs."""

    runs: tuple[LatencyStats, ...]

    @property
    def pooled(self) -> LatencyStats:
        return LatencyStats(self.runs[0].batch, tuple(s for r in self.runs for s in r.samples_ms))

    @property
    def images_per_s(self) -> float:
        return statistics.median(r.images_per_s for r in self.runs)

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-run throughputs: 0.05 means runs differed by 5%."""
        ips = [r.images_per_s for r in self.runs]
        return (max(ips) - min(ips)) / statistics.median(ips)

    def to_dict(self) -> dict[str, float | int | list[float]]:
        p = self.pooled
        return {"images_per_s": self.images_per_s, "images_per_s_runs": [r.images_per_s for r in self.runs],
                "spread": self.spread, "latency_ms_mean": p.mean, "latency_ms_p50": p.p50,
                "latency_ms_p90": p.p90, "latency_ms_p99": p.p99, "iterations": p.count}


def warm_up(fn: Callable[[], object], policy: TimingPolicy) -> None:
    start = time.perf_counter()
    n = 0
    while n < policy.warmup_iters or time.perf_counter() - start < policy.warmup_seconds:
        fn()
        n += 1


def measure(fn: Callable[[], object], batch: int, policy: TimingPolicy,
            on_iteration: Callable[[int, int], None] | None = None) -> LatencyStats:
    """One timed run: call ``fn`` repeatedly, return per-call wall-clock latencies (ms). No warm-up here."""
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < policy.iters or time.perf_counter() - start < policy.min_seconds:
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
        if on_iteration:
            on_iteration(len(samples), policy.iters)
        if time.perf_counter() - start > policy.max_seconds and len(samples) >= 3:
            break
    return LatencyStats(batch, tuple(samples))


def measure_repeated(fn: Callable[[], object], batch: int, policy: TimingPolicy,
                     on_progress: Callable[[int, int], None] | None = None) -> Measurement:
    """Warm up once, then ``policy.repeats`` timed runs; progress is reported in calls over all runs."""
    warm_up(fn, policy)
    runs: list[LatencyStats] = []
    planned = policy.iters * policy.repeats
    for r in range(policy.repeats):
        done_before = sum(x.count for x in runs)
        cb = (lambda i, _n, d=done_before: on_progress(min(d + i, planned), planned)) if on_progress else None
        runs.append(measure(fn, batch, policy, cb))
    return Measurement(tuple(runs))


def median_spread(values: Sequence[float]) -> tuple[float, float]:
    med = statistics.median(values)
    return med, (max(values) - min(values)) / med if med else 0.0
