"""The tf.data input pipeline: parallel decoding, caching, the papers' augmentation, prefetching.

Samples are read by the dataset readers (OpenCV, in ``tf.numpy_function`` calls that run in
parallel), cached in memory when the decoded split fits ``cache_bytes``, augmented in the graph,
batched and prefetched. Images reach the model as float32 in [0, 1] (``edgeseg.artifacts.DEFAULT_NORMALISATION``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edgeseg.data import IGNORE_INDEX, DataError, SegmentationDataset
from edgeseg.train.weights import unet_weight_map


@dataclass(frozen=True)
class AugmentConfig:
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    jitter: float = 0.2  # brightness / contrast / saturation strength; hue is a quarter of it
    elastic: bool = False
    elastic_sigma: float = 10.0


def instance_map(label: np.ndarray, thing_ids) -> np.ndarray:
    """Connected components of the thing classes as instance ids (0 = background)."""
    instances = np.zeros(label.shape, np.int32)
    next_id = 1
    for class_id in thing_ids:
        count, components = cv2.connectedComponents((label == class_id).astype(np.uint8), 8)
        if count > 1:
            mask = components > 0
            instances[mask] = components[mask] + next_id - 1
            next_id += count - 1
    return instances


def border_weight_map(label: np.ndarray, class_weights: np.ndarray, thing_ids) -> np.ndarray:
    """U-Net's w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2) for one label map."""
    valid = label != IGNORE_INDEX
    w_c = np.where(valid, class_weights[np.where(valid, label, 0)], 0).astype(np.float32)
    weights = unet_weight_map(instance_map(label, thing_ids), w_c)
    return np.where(valid, weights, 0).astype(np.float32)


def _read_sample(dataset: SegmentationDataset):
    def read(index):
        image, label = dataset[int(index)]
        return image, label

    return read


def make_dataset(
    dataset: SegmentationDataset,
    size: tuple[int, int],
    batch: int,
    training: bool,
    augment: AugmentConfig | None = None,
    class_weights: np.ndarray | None = None,
    weight_map_things: list[int] | None = None,
    cache_bytes: int = 2 << 30,
    seed: int = 0,
    drop_remainder: bool = False,
):
    """A batched ``tf.data.Dataset`` of (image float32 [0,1], label int32[, pixel weights]).

    Args:
        size: (width, height) of the crops (training) or of the resized images (evaluation).
        class_weights: per-class loss weights; with ``weight_map_things`` the U-Net weight map
            (class weights plus the border term around the thing instances) is the third element.
    """
    import tensorflow as tf

    from edgeseg.train import augment as aug

    width, height = size
    augment = augment or AugmentConfig()
    autotune = tf.data.AUTOTUNE
    count = len(dataset)
    if count == 0:
        raise ValueError(f"dataset {dataset.name!r} split {dataset.split!r} has no samples")

    ds = tf.data.Dataset.range(count)
    read = _read_sample(dataset)

    def load(index):
        image, label = tf.numpy_function(read, [index], [tf.uint8, tf.uint8], stateful=False)
        image.set_shape([None, None, 3])
        label.set_shape([None, None])
        return image, label

    ds = ds.map(load, num_parallel_calls=autotune, deterministic=not training)
    first_image, _ = dataset[0]
    if first_image.nbytes * 4 / 3 * count <= cache_bytes:
        ds = ds.cache()  # decoded samples of this split fit: decode once
    if training:
        ds = ds.shuffle(min(count, 1000), seed=seed, reshuffle_each_iteration=True)

    def train_transform(image, label):
        label = label[..., None]
        image, label = aug.random_scale_crop(
            image, label, (height, width), augment.scale_range, ignore_index=IGNORE_INDEX
        )
        if augment.flip:
            image, label = aug.random_flip(image, label)
        image = tf.image.convert_image_dtype(image, tf.float32)
        if augment.jitter:
            j = augment.jitter
            image = aug.color_jitter(image, j, j, j, j / 4)
        if augment.elastic:
            image, label = aug.elastic_deform(
                image, label, sigma=augment.elastic_sigma, ignore_index=IGNORE_INDEX
            )
        return image, tf.cast(label[..., 0], tf.int32)

    def eval_transform(image, label):
        image = tf.image.resize(image, (height, width), method="bilinear")
        label = tf.image.resize(label[..., None], (height, width), method="nearest")[..., 0]
        return image / 255.0, tf.cast(label, tf.int32)

    ds = ds.map(train_transform if training else eval_transform, num_parallel_calls=autotune)

    if class_weights is not None and weight_map_things is not None:
        weights = np.asarray(class_weights, np.float32)
        things = list(weight_map_things)

        def add_weight_map(image, label):
            w = tf.numpy_function(
                lambda lab: border_weight_map(lab, weights, things), [label], tf.float32
            )
            w.set_shape([height, width])
            return image, label, w

        ds = ds.map(add_weight_map, num_parallel_calls=autotune)
    return ds.batch(batch, drop_remainder=drop_remainder).prefetch(autotune)


# --- errors ------------------------------------------------------------------------------------

# The last line of a Python traceback: "edgeseg.data.base.DataError: image x.png is ...".
_PYTHON_ERROR_LINE = re.compile(r"^(?P<kind>[A-Za-z_][\w.]*): (?P<message>\S.*)$")


def python_error_in(text: str) -> tuple[str, str] | None:
    """``(exception class, message)`` of the Python exception that a TensorFlow error reports.

    An exception raised inside ``tf.numpy_function`` reaches the caller as an
    ``InvalidArgumentError`` whose text holds the whole Python traceback; its last line names
    the original exception. None when the text holds none.
    """
    found = None
    for line in str(text).splitlines():
        match = _PYTHON_ERROR_LINE.match(line.strip())
        if match and match["kind"].rsplit(".", 1)[-1].endswith(("Error", "Exception")):
            found = (match["kind"].rsplit(".", 1)[-1], match["message"].strip())
    return found


@contextlib.contextmanager
def pipeline_errors() -> Iterator[None]:
    """Turns an error raised inside the input pipeline into one line for the user.

    A bad sample found while training (a file that changed after the check, say) is re-raised
    as the :class:`DataError` the reader raised; any other error of the pipeline as a
    RuntimeError that carries the original exception's class and message. Errors of the
    training step itself pass through unchanged.
    """
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as error:
        found = python_error_in(error.message)
        if found is None:
            raise
        kind, message = found
        if kind == "DataError":
            raise DataError(message) from None
        raise RuntimeError(f"the input pipeline failed: {kind}: {message}") from None
