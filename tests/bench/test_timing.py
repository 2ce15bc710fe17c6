import pytest

from edgevit.bench import environment
from edgevit.bench.timing import LatencyStats, Measurement, TimingPolicy, measure, measure_repeated


def test_stats_from_known_samples() -> None:
    s = LatencyStats(batch=4, samples_ms=tuple(float(v) for v in range(1, 101)))
    assert s.p50 == pytest.approx(50.5) and s.p90 == pytest.approx(90.1) and s.p99 == pytest.approx(99.01)
    assert s.mean == pytest.approx(50.5)
    # 100 calls x 4 images over 5.05 s
    assert s.images_per_s == pytest.approx(400 / 5.05)


def test_measure_honours_warmup_repeats_and_iteration_policy() -> None:
    calls = []
    policy = TimingPolicy(warmup_iters=2, warmup_seconds=0.0, iters=5, min_seconds=0.0, repeats=3)
    m = measure_repeated(lambda: calls.append(1), batch=2, policy=policy)
    assert len(calls) == 2 + 15 and len(m.runs) == 3 and m.pooled.count == 15
    assert measure(lambda: None, batch=1, policy=policy).count == 5  # a single run has no warm-up


def test_median_and_spread_over_runs() -> None:
    runs = tuple(LatencyStats(1, (ms,)) for ms in (10.0, 20.0, 40.0))  # 100, 50, 25 images/s
    m = Measurement(runs)
    assert m.images_per_s == pytest.approx(50.0)
    assert m.spread == pytest.approx((100 - 25) / 50)
    assert m.to_dict()["images_per_s_runs"] == pytest.approx([100.0, 50.0, 25.0])


def test_environment_record() -> None:
    env = environment.collect()
    assert env["logical_cores"] >= 1 and "torch" in env["libraries"]
    assert isinstance(env["isa_flags"], list) and env["cpu_model"]


def test_theoretical_peak_counts_physical_cores_the_run_used() -> None:
    from edgevit.bench import uarch

    one = uarch.theoretical_peak("fp32", cores=1)
    assert one.gmacs_per_s > 0 and "MAC/cycle" in one.source
    assert uarch.theoretical_peak("fp32", cores=4).gmacs_per_s == pytest.approx(4 * one.gmacs_per_s)
