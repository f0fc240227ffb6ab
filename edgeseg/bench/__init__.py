"""Benchmarks of exported models on the devices they are meant for, and reports across devices.

On each device: ``write_jsonl(benchmark(["enet.tflite"], sizes=[(640, 360)]), "results.jsonl")``
appends one row per model and frame size. Anywhere: ``write_report(merge_results([...]), dir)``
tabulates and plots the rows of several devices next to the ENet paper's published timings.
Importing this package needs neither TensorFlow nor matplotlib.
"""

from edgeseg.bench.fingerprint import device_fingerprint
from edgeseg.bench.report import PAPER_ROWS, device_label, merge_results, write_report
from edgeseg.bench.runner import (
    DEFAULT_SIZES,
    benchmark,
    format_row,
    parse_size,
    parse_sizes,
    resolve_artifacts,
    write_jsonl,
)
from edgeseg.bench.stats import fps, latency_stats

__all__ = [
    "DEFAULT_SIZES",
    "PAPER_ROWS",
    "benchmark",
    "device_fingerprint",
    "device_label",
    "format_row",
    "fps",
    "latency_stats",
    "merge_results",
    "parse_size",
    "parse_sizes",
    "resolve_artifacts",
    "write_jsonl",
    "write_report",
]
