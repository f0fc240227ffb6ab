"""Helpers shared by the tests: small model configurations and a LiteRT runner."""

from __future__ import annotations

import numpy as np

# Every registered model, at a width small enough for a 2-core CI machine. The full-width models
# are built (not run) by the parameter-count tests.
SMALL_MODELS = {
    "enet": {},
    "segnet": {"width": 0.125},
    "unet": {"filters": 8, "depth": 3},
    "fcn8s": {"width": 0.125, "fc_channels": 32},
}
# Sizes not divisible by any of the networks' strides.
ODD_SIZES = ((45, 61), (37, 50))


def keras_predict(model, x: np.ndarray) -> np.ndarray:
    from keras import ops

    return ops.convert_to_numpy(model(x, training=False))


def random_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, height, width, 3), dtype=np.float32)


# The start of a ``python -c`` script for a device's Python: TensorFlow, Keras and JAX cannot be
# imported (as where only the base install is), whatever this environment has.
BLOCK_TENSORFLOW = """
import sys, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "jax"):
            raise ImportError(f"{name} is not installed on this device")
sys.meta_path.insert(0, Block())
"""


# The start of a ``python -c`` script for a GPU box without TensorFlow: Keras on JAX, and
# TensorFlow (with TensorBoard and tf_keras) cannot be imported, whatever this environment has.
WITHOUT_TENSORFLOW = """
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
class NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorboard", "tf_keras"):
            raise ModuleNotFoundError(f"No module named {name!r} (not installed on this machine)")
sys.meta_path.insert(0, NoTensorFlow())
"""


def edgeseg_without_tensorflow(*args: str) -> list[str]:
    """The command line of ``edgeseg ARGS`` on Keras' JAX backend with TensorFlow unimportable;
    it fails if anything imported TensorFlow after all."""
    import sys

    script = WITHOUT_TENSORFLOW + (
        "from edgeseg.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
        "sys.exit(code)\n"
    )
    return [sys.executable, "-c", script, *args]


def graph_ops(blob: bytes) -> list[dict]:
    """The operators of a TFLite flatbuffer as written (before any delegate takes a subgraph):
    ``{"op", "inputs", "outputs"}``, the tensors as ``(name, dtype name, shape)``."""
    from edgeseg.runtime_tflite import interpreter_class

    interpreter = interpreter_class()(model_content=blob)
    tensors = {t["index"]: (t["name"], np.dtype(t["dtype"]).name, tuple(t["shape"]))
               for t in interpreter.get_tensor_details()}
    return [{"op": op["op_name"], "inputs": [tensors[i] for i in op["inputs"] if i >= 0],
             "outputs": [tensors[i] for i in op["outputs"] if i >= 0]}
            for op in interpreter._get_ops_details()]


def spread_unet(num_classes: int, height: int, width: int):
    """A small untrained U-Net whose argmax picks several classes: untrained logits barely vary
    over an image, so the classifier is scaled up and given a random bias per class, and the
    IoUs a test compares are not all 0."""
    import keras

    from edgeseg.models import build

    keras.utils.set_random_seed(0)
    model = build("unet", num_classes, (height, width, 3), filters=4, depth=2)
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    rng = np.random.default_rng(0)
    classifier.set_weights([kernel * 20, rng.normal(0, 0.05, bias.shape).astype(bias.dtype)])
    return model
