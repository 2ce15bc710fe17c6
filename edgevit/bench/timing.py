"""Timing loop and latency statistics (no model knowledge here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TimingPolicy:
    """Warm up by iterations *and* time (first calls pay allocation and JIT costs), then time at least
    ``iters`` runs and at least ``min_seconds``."""

    warmup_iters: int = 3
    warmup_seconds: float = 1.0
    iters: int = 20
    min_seconds: float = 2.0
    max_seconds: float = 60.0


@dataclass(frozen=True)
class LatencyStats:
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

    def to_dict(self) -> dict[str, float]:
        return {"images_per_s": self.images_per_s, "latency_ms_mean": self.mean, "latency_ms_p50": self.p50,
                "latency_ms_p90": self.p90, "latency_ms_p99": self.p99, "iterations": self.count}


def measure(fn: Callable[[], object], batch: int, policy: TimingPolicy,
            on_iteration: Callable[[int, int], None] | None = None) -> LatencyStats:
    """Call ``fn`` repeatedly; return per-call wall-clock latencies (ms) after warm-up."""
    start = time.perf_counter()
    n = 0
    while n < policy.warmup_iters or time.perf_counter() - start < policy.warmup_seconds:
        fn()
        n += 1
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
