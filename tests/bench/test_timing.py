import pytest

from edgevit.bench import environment
from edgevit.bench.timing import LatencyStats, TimingPolicy, measure


def test_stats_from_known_samples() -> None:
    s = LatencyStats(batch=4, samples_ms=tuple(float(v) for v in range(1, 101)))
    assert s.p50 == pytest.approx(50.5) and s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)
    assert s.mean == pytest.approx(50.5)
    # 100 calls x 4 images over 5.05 s
    assert s.images_per_s == pytest.approx(400 / 5.05)


def test_measure_honours_warmup_and_iteration_policy() -> None:
    calls = []
    policy = TimingPolicy(warmup_iters=2, warmup_seconds=0.0, iters=5, min_seconds=0.0)
    stats = measure(lambda: calls.append(1), batch=1, policy=policy)
    assert len(calls) == 7 and stats.count == 5


def test_environment_record() -> None:
    env = environment.collect()
    assert env["logical_cores"] >= 1 and "torch" in env["libraries"]
    assert isinstance(env["isa_flags"], list) and env["cpu_model"]
