"""``import edgeseg`` and the LiteRT runtime must not import TensorFlow or Keras."""

import subprocess
import sys

CHECK = """
import sys
import edgeseg, edgeseg.models, edgeseg.runtime_tflite, edgeseg.cli
edgeseg.models.list_models()
heavy = sorted(m for m in ("tensorflow", "keras", "jax", "tf_keras") if m in sys.modules)
print(",".join(heavy))
"""


def test_import_edgeseg_does_not_import_tensorflow():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_models_command_runs_without_tensorflow():
    code = (
        "import sys; from edgeseg.cli import main; main(['models']); "
        "assert 'tensorflow' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "enet" in result.stdout and "segnet" in result.stdout
