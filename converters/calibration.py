"""Model inputs for calibration and validation: images as the model takes them.

An edgeseg model takes ``image * scale + offset`` (its artifact's ``normalisation``, by default
``edgeseg.artifacts.DEFAULT_NORMALISATION``: RGB in [0, 1]); int8 calibration and the checks of
an export feed it exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

from edgeseg.artifacts import DEFAULT_NORMALISATION


def normalise(images: np.ndarray, normalisation: Mapping | None = None) -> np.ndarray:
    """uint8 (or float) pixels -> float32 model input: ``pixels * scale + offset``.

    ``scale`` and ``offset`` are numbers or one value per channel.
    """
    norm = normalisation or DEFAULT_NORMALISATION
    scale = np.asarray(norm["scale"], np.float32)
    offset = np.asarray(norm["offset"], np.float32)
    return (np.asarray(images, np.float32) * scale + offset).astype(np.float32)


def prepare_images(dataset, count: int, size: tuple[int, int], seed: int = 0,
                   normalisation: Mapping | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` (model input float32, label) pairs of a semantic dataset, resized to
    ``size`` (W, H), chosen at random with ``seed``."""
    order = np.random.default_rng(seed).permutation(len(dataset))[:count]
    images, labels = [], []
    for index in order:
        image, label = dataset[int(index)]
        images.append(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
        labels.append(cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))
    return normalise(np.stack(images), normalisation), np.stack(labels)
