"""Tiny model files for the benchmark tests, written where a test asks (seconds each)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

# (H, W) of the tiny graphs: a frame of another size shows whether the network ran at it.
TINY_HW = (16, 24)


def save_small_enet(folder: Path) -> Path:
    """A small ENet (3 classes, seeded) saved as ``folder/enet_64x48.keras``. ENet is fully
    convolutional: ``--model-size frame`` rebuilds it at any frame size."""
    import keras

    from edgeseg.models import build

    keras.utils.set_random_seed(0)
    path = Path(folder) / "enet_64x48.keras"
    build("enet", 3, (48, 64, 3)).save(path)
    return path


def conv_prelu(input_hw=TINY_HW):
    """Conv2D then Keras' PReLU: XNNPACK runs PReLU in float, not in int8."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((*input_hw, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    x = keras.layers.PReLU(shared_axes=[1, 2])(x)
    return keras.Model(image, x)


def conv_stack(input_hw=TINY_HW):
    """Convolutions of two kinds (Conv2D x3, DepthwiseConv2D) and a residual ADD: XNNPACK
    runs all of them in float and in int8, except tflite-runtime 2.14's, which takes no int8
    operator."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((*input_hw, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Add()([keras.layers.Conv2D(8, 1)(x), x])
    x = keras.layers.Conv2D(4, 3, padding="same")(x)
    return keras.Model(image, x)


def fixed_reshape(input_hw=TINY_HW):
    """A graph with its shapes as constants: a softmax over each row's W*C values, between
    reshapes to (H, W*C) and back."""
    import keras

    keras.utils.set_random_seed(0)
    height, width = input_hw
    image = keras.Input((height, width, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(image)
    x = keras.layers.Reshape((height, width * 4))(x)
    x = keras.layers.Softmax(axis=-1)(x)
    x = keras.layers.Reshape((height, width, 4))(x)
    return keras.Model(image, x)


def write_tflite(model, path: Path, quant: str = "none") -> Path:
    """``model`` converted as it is (no layer rewritten, unlike ``convert_keras_to_tflite``):
    float, or full int8 with int8 input and output, calibrated on random images."""
    from edgeseg.converters.tflite import _configure, _saved_model_converter, run_converter

    rng = np.random.default_rng(0)
    shape = (1, *model.inputs[0].shape[1:])

    def calibration():
        for _ in range(8):
            yield rng.random(shape, dtype=np.float32)

    with tempfile.TemporaryDirectory() as folder:
        converter = _saved_model_converter(model, folder)
        _configure(converter, quant, calibration, "int8" if quant == "int8" else "float32")
        path.write_bytes(run_converter(converter))
    path.with_name(path.name + ".json").write_text(json.dumps(
        {"model": path.stem, "classes": ["a", "b", "c", "d"], "quant": quant}))
    return path
