"""Bench rows name the runtime that ran them and whether XNNPACK ran the convolutions; an int8
model left to tflite-runtime 2.14's own int8 kernels is warned about once for the whole
benchmark, though each of its rows runs in a process of its own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from edgeseg.bench.report import table_rows
from tests.bench.small_models import conv_stack, write_tflite
from tests.side_envs import side_python

BENCH_SCRIPT = """
import json, sys
from edgeseg.bench.runner import benchmark, format_row
rows = list(benchmark(sys.argv[1:], sizes=[(24, 16), (48, 32)], warmup=0, runs=1,
                      min_seconds=0, fingerprint={"label": "test machine"}))
print(json.dumps({"rows": rows, "lines": [format_row(row) for row in rows]}))
"""


def test_tflite_runtime_rows_say_xnnpack_did_not_run_the_int8_convolutions(tmp_path):
    python = side_python("tflite-runtime", "tflite_runtime.interpreter")
    model = conv_stack()
    int8 = write_tflite(model, tmp_path / "conv_int8.tflite", "int8")
    fp32 = write_tflite(model, tmp_path / "conv_fp32.tflite")
    # -W always: once per artifact is the runner's rule, not Python's per-location filter.
    done = subprocess.run([str(python), "-W", "always", "-c", BENCH_SCRIPT, str(int8), str(fp32)],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = result["rows"]
    assert [(Path(r["artifact"]).name, r["size"]) for r in rows] == [
        ("conv_int8.tflite", "24x16"), ("conv_int8.tflite", "48x32"),
        ("conv_fp32.tflite", "24x16"), ("conv_fp32.tflite", "48x32")]
    assert all(r["error"] is None and r["runtime"] == "tflite-runtime 2.14.0" for r in rows)
    for row in rows[:2]:
        assert row["xnnpack"] is False and row["xnnpack_partitions"] == 0
        assert row["ops_outside_delegate"] == {"ADD": 1, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 1}
        (warning,) = row["warnings"]
        assert warning.startswith("conv_int8.tflite: tflite-runtime 2.14.0 runs 4 of its 4 int8 "
                                  "convolutions on TFLite's own int8 kernels, not XNNPACK")
    for row in rows[2:]:
        assert row["xnnpack"] is True and row["ops_outside_delegate"] == {}
        assert row["warnings"] == []
    assert result["lines"][0].startswith("conv_int8 [tflite, tflite-runtime 2.14.0] 24x16")
    # Two int8 rows, each from its own process: one warning in the benchmark's process.
    said = [line for line in done.stderr.splitlines() if "Int8WithoutXNNPACKWarning:" in line]
    assert len(said) == 1, done.stderr
    assert said[0].endswith(rows[0]["warnings"][0])
    # The report's tables name the runtime.
    assert {record["runtime"] for record in table_rows(rows)} == {"tflite-runtime 2.14.0"}
