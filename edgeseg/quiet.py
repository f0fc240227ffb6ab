"""A quiet TensorFlow start: its start-up noise never reaches the user, its real errors do.

TensorFlow's native libraries write to file descriptor 2 while they load: absl's "All log
messages before absl::InitializeLog() ..." line, oneDNN and CPU-feature notices, "Could not find
cuda drivers" and, on a machine without a GPU, ``E0000 ... failed call to cuInit``. Setting
``TF_CPP_MIN_LOG_LEVEL`` from Python does not silence the lines written before absl reads it, and
setting it high enough to hide the cuInit line would hide real errors too. So
:func:`import_tensorflow_quietly` loads TensorFlow (and lets it look for GPUs, where cuInit
runs) with descriptor 2 captured, then writes back every captured line that is not one of the
known start-up notices (:data:`STARTUP_NOISE`). Nothing is switched off: a GPU that is there
is still found and used.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["CONVERTER_NOISE", "STARTUP_NOISE", "filtered_native_stderr",
           "import_tensorflow_quietly", "is_noise"]

STARTUP_NOISE = re.compile(
    r"^(?:"
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\]"  # absl info / warning lines
    r"|E\d{4} .*(?:failed call to cuInit|Unable to register cu(?:DNN|FFT|BLAS) factory)"
    r"|To enable the following instructions: .*rebuild TensorFlow"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r")"
)
"""Lines TensorFlow writes while it starts that say nothing wrong (the cuInit failure only says
that this machine has no GPU)."""


CONVERTER_NOISE = re.compile(
    r"^(?:"
    r"[IW]\d{4} \d\d:\d\d:[\d.]+ +\d+ (?:tf_tfl_flatbuffer_helpers|flatbuffer_export|"
    r"saver|loader|reader|fingerprinting_utils)\.cc:\d+\]"
    r"|fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, "
    r"output_inference_type: \w+"
    r")"
)
"""What the TFLite converter writes on every conversion that says nothing wrong ("Ignored
output_format.", "Skipping runtime version metadata", the quantiser's settings line)."""


def is_noise(line: str, noise: re.Pattern = STARTUP_NOISE) -> bool:
    return bool(noise.match(line))


@contextlib.contextmanager
def filtered_native_stderr(noise: re.Pattern = STARTUP_NOISE) -> Iterator[None]:
    """Captures file descriptor 2 (native libraries write there, not to ``sys.stderr``) for the
    block, then writes back the lines that ``noise`` does not match, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_noise(line, noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def keras_backend() -> str:
    """The Keras backend a Keras import will use (``KERAS_BACKEND``, else keras.json), without
    importing Keras."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        return backend
    config = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")),
                          "keras.json")
    try:
        import json

        with open(config) as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow (and Keras, on the TensorFlow backend) with the start-up noise removed.

    Does nothing when TensorFlow is already imported, or when Keras runs on another backend (a
    JAX machine need not have TensorFlow at all). ``TF_CPP_MIN_LOG_LEVEL`` is set to 1 unless
    the user set it, so later info lines stay out and warnings and errors still show.
    """
    if "tensorflow" in sys.modules or keras_backend() != "tensorflow":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    with filtered_native_stderr():
        try:
            import tensorflow as tf
        except ImportError:
            return  # the command that needs it says how to install it
        tf.config.list_physical_devices("GPU")  # cuInit runs here, not at import
        import keras  # noqa: F401  (its first import initialises the backend)
