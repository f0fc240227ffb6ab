"""A compiled Keras predictor of a Mask R-CNN, for its validation during training and export.

``keras_predictor(model)`` is a callable from a (S, S, 3) uint8 model input to the detection
dict of ``build_mobile_mask_rcnn`` (NumPy arrays, batch 1), what
:func:`edgeseg.instances.evaluate_instances` scores; exported copies run through
``edgeseg.runtime.instances.detect`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from edgeseg.artifacts import DEFAULT_NORMALISATION

Predictor = Callable[[np.ndarray], dict]


def keras_predictor(model, normalisation: Mapping[str, float] | None = None) -> Predictor:
    """A compiled predictor over a Keras Mask R-CNN inference model (uint8 image in, normalised
    as ``normalisation`` says: ``image * scale + offset``, default RGB / 255)."""
    import tensorflow as tf

    norm = normalisation or DEFAULT_NORMALISATION
    scale, offset = np.float32(norm["scale"]), np.float32(norm["offset"])

    @tf.function(reduce_retracing=True)
    def run(x):
        return model(x, training=False)

    def predict(image: np.ndarray) -> dict:
        x = tf.convert_to_tensor(image[None].astype(np.float32) * scale + offset)
        return {k: np.asarray(v) for k, v in run(x).items()}

    return predict
