"""Latency statistics against NumPy's definitions."""

import numpy as np
import pytest

from edgeseg.bench.stats import fps, latency_stats, percentile


def test_latency_stats_of_1_to_100_ms_match_numpy():
    times = list(range(100, 0, -1))  # unsorted on purpose
    stats = latency_stats(times)
    assert stats["median"] == 50.5
    assert stats["p90"] == pytest.approx(np.percentile(times, 90))  # 90.1
    assert stats["p99"] == pytest.approx(np.percentile(times, 99))  # 99.01
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["std"] == pytest.approx(np.std(times))  # population, ddof=0
    assert stats["min"] == 1
    assert fps(stats["median"]) == pytest.approx(1000 / 50.5)


@pytest.mark.parametrize("count", [1, 2, 7, 33])
def test_percentiles_interpolate_like_numpy_on_random_timings(count):
    times = np.random.default_rng(count).gamma(2.0, 8.0, count)
    values = sorted(times)
    for q in (0, 5, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(times, q))
    stats = latency_stats(times)
    assert stats["std"] == pytest.approx(np.std(times))
    assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["p99"]


def test_empty_or_invalid_timings_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        latency_stats([])
    with pytest.raises(ValueError, match="finite"):
        latency_stats([1.0, float("nan")])
    assert fps(0) is None
