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
