"""The benchmark and tiling modules stay light: no TensorFlow, Keras or matplotlib on import."""

import subprocess
import sys

CHECK = """
import sys
import edgeseg.bench, edgeseg.runtime.tiling
heavy = sorted(m for m in ("tensorflow", "keras", "matplotlib") if m in sys.modules)
print(",".join(heavy))
"""


def test_bench_and_tiling_import_without_tensorflow_or_matplotlib():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
