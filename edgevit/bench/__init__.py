from .suite import BenchCase, BenchReport, BenchRow, run
from .timing import LatencyStats, TimingPolicy, measure

__all__ = ['BenchCase', 'BenchReport', 'BenchRow', 'LatencyStats', 'TimingPolicy', 'measure', 'run']
