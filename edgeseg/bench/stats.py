"""Latency statistics of a benchmark: median, mean, percentiles, spread, minimum."""

from __future__ import annotations

import math
from collections.abc import Sequence

STAT_NAMES = ("median", "mean", "p90", "p99", "std", "min")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ascending values, by linear interpolation.

    The rank is ``q / 100 * (n - 1)`` and the value is interpolated between its two neighbours:
    NumPy's default (``np.percentile(..., method="linear")``), Hyndman and Fan's definition 7.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    rank = q / 100 * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """Summary of latencies in milliseconds.

    Returns ``{"median", "mean", "p90", "p99", "std", "min"}`` in ms. Percentiles (the median is
    the 50th) interpolate linearly as NumPy does by default; ``std`` is the population standard
    deviation (ddof=0, as ``np.std`` and TFLite's benchmark_model report it): the spread of
    these runs, not an estimate for other runs.
    """
    values = sorted(float(t) for t in times_ms)
    if not values:
        raise ValueError("latency_stats needs at least one timing, got none")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"latencies must be finite numbers, got {list(times_ms)!r}")
    mean = math.fsum(values) / len(values)
    variance = math.fsum((v - mean) ** 2 for v in values) / len(values)
    return {
        "median": percentile(values, 50),
        "mean": mean,
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "std": math.sqrt(variance),
        "min": values[0],
    }


def fps(median_total_ms: float) -> float | None:
    """Frames per second from the median end-to-end latency (``1000 / median``)."""
    return 1000.0 / median_total_ms if median_total_ms > 0 else None
