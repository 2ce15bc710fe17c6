"""Benchmarks: timing, environment, memory, the model x runtime suite and its reports."""

from .suite import BenchCase, BenchReport, BenchRow, RuntimeSpec, run
from .timing import LatencyStats, Measurement, TimingPolicy, measure, measure_repeated

__all__ = ["BenchCase", "BenchReport", "BenchRow", "LatencyStats", "Measurement", "RuntimeSpec", "TimingPolicy",
           "measure", "measure_repeated", "run"]
