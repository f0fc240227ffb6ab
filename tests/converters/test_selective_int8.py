"""Selective int8: chosen ops and ops with a large int8 error stay float, the rest run int8."""

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgeseg.converters.tflite import convert_selective_int8, non_builtin_ops  # noqa: E402
from edgeseg.runtime_tflite import load_interpreter, run_interpreter  # noqa: E402
from tests.helpers import graph_ops, keras_predict, random_images  # noqa: E402


@pytest.fixture(scope="module")
def three_convs():
    import keras

    keras.utils.set_random_seed(1)
    image = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="first")(image)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="keepme")(x)
    x = keras.layers.Conv2D(4, 1, name="last")(x)
    return keras.Model(image, x)


def conv_input_types(blob: bytes) -> dict[str, str]:
    """Layer name -> dtype of the input of its CONV_2D (the three run in graph order)."""
    convs = [op["inputs"][0][1] for op in graph_ops(blob) if op["op"] == "CONV_2D"]
    return dict(zip(("first", "keepme", "last"), convs, strict=True))


def test_named_ops_stay_float_and_the_rest_run_int8(three_convs):
    images = random_images(8, 16, 16)
    blob, floats, noisy = convert_selective_int8(
        three_convs, lambda: iter(images), keep_float=lambda name: "/keepme" in name)
    assert floats and all("/keepme" in name for name in floats) and noisy == []
    assert conv_input_types(blob) == {"first": "int8", "keepme": "float32", "last": "int8"}
    assert non_builtin_ops(blob) == []
    # The int8 graph computes the Keras model's function to within a few int8 steps.
    x = images[:1]
    expected = keras_predict(three_convs, x)
    got = run_interpreter(load_interpreter(model_content=blob), x)
    assert got.dtype == np.float32
    step = (expected.max() - expected.min()) / 255
    assert np.abs(got - expected).max() < 8 * step
    assert np.abs(got - expected).mean() < step


def test_ops_above_the_error_bound_stay_float(three_convs):
    images = random_images(8, 16, 16)
    # Rounding alone makes every int8 op's error about 0.29 steps: a bound of 0 keeps them all
    # float, a bound far above rounding keeps none.
    blob, floats, noisy = convert_selective_int8(three_convs, lambda: iter(images),
                                                 max_layer_error=0.0)
    assert set(conv_input_types(blob).values()) == {"float32"}
    assert len(noisy) >= 3 and noisy == floats
    blob, floats, noisy = convert_selective_int8(three_convs, lambda: iter(images),
                                                 max_layer_error=100.0)
    assert floats == [] and noisy == []
    assert set(conv_input_types(blob).values()) == {"int8"}
