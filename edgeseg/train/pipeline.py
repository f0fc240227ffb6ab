"""The input pipelines: one sample path (decode, cache, the papers' augmentation, the U-Net
weight map) behind two batchers, tf.data on the TensorFlow backend and ``keras.utils.PyDataset``
on the others.

:class:`Samples` makes every example: it reads a sample with the dataset's reader (OpenCV),
keeps the decoded split in memory when it fits ``cache_bytes``, augments it with
:mod:`edgeseg.train.augment` (NumPy and OpenCV, one implementation for both pipelines) and adds
U-Net's pixel weights. :func:`make_dataset` batches it with tf.data (parallel
``tf.numpy_function`` calls, prefetching; what ``tf.distribute`` strategies take),
:func:`make_py_dataset` with a PyDataset whose worker threads do the same without TensorFlow,
for Keras on JAX or PyTorch. Images reach the model as float32 in [0, 1]
(``edgeseg.artifacts.DEFAULT_NORMALISATION``), labels as int32.

Randomness: the training stream is a sequence of shuffled passes over the split; the pass order
and each example's augmentation come from generators seeded with (seed, place in the stream),
so a PyDataset run repeats exactly, epoch boundaries and resumes included.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import threading
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


# --- the samples ---------------------------------------------------------------------------------


class Samples:
    """The examples of one split as the model takes them: ``(image, label[, pixel weights])``.

    Args:
        size: (width, height) of the crops (training) or of the resized images (evaluation).
        training: augmented random crops; otherwise the whole image resized to ``size``.
        class_weights, weight_map_things: with both, a third array, U-Net's weight map (the
            class weights plus the border term around the thing instances).
        cache_bytes: the decoded split is kept in memory when it needs no more than this.
    """

    def __init__(self, dataset: SegmentationDataset, size: tuple[int, int], training: bool,
                 augment: AugmentConfig | None = None, class_weights: np.ndarray | None = None,
                 weight_map_things: list[int] | None = None, cache_bytes: int = 2 << 30):
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} split {dataset.split!r} has no samples")
        self.dataset = dataset
        self.width, self.height = (int(v) for v in size)
        self.training = training
        self.augment = augment or AugmentConfig()
        self.weights = None
        if class_weights is not None and weight_map_things is not None:
            self.weights = (np.asarray(class_weights, np.float32), list(weight_map_things))
        first = dataset[0]
        fits = first[0].nbytes * 4 / 3 * len(dataset) <= cache_bytes
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {0: first} if fits else None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def with_weights(self) -> bool:
        return self.weights is not None

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded sample (uint8 image, uint8 label), from memory after its first read."""
        if self._cache is None:
            return self.dataset[index]
        sample = self._cache.get(index)
        if sample is None:
            sample = self._cache[index] = self.dataset[index]
        return sample

    def example(self, index: int, rng: np.random.Generator | None = None) -> tuple:
        """Sample ``index`` made ready for the model; ``rng`` drives the augmentation."""
        from edgeseg.train import augment as aug

        image, label = self.read(int(index))
        size = (self.height, self.width)
        if self.training:
            settings = self.augment
            image, label = aug.random_scale_crop(image, label, size, settings.scale_range,
                                                 IGNORE_INDEX, rng)
            if settings.flip:
                image, label = aug.random_flip(image, label, rng)
            image = image.astype(np.float32) / 255.0
            if settings.jitter:
                j = settings.jitter
                image = aug.color_jitter(image, j, j, j, j / 4, rng)
            if settings.elastic:
                image, label = aug.elastic_deform(image, label, sigma=settings.elastic_sigma,
                                                  rng=rng, ignore_index=IGNORE_INDEX)
        else:
            image = cv2.resize(image, (self.width, self.height),
                               interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
            label = cv2.resize(label, (self.width, self.height),
                               interpolation=cv2.INTER_NEAREST_EXACT)
        label = label.astype(np.int32)
        if self.weights is None:
            return image, label
        return image, label, border_weight_map(label, *self.weights)

    def batch(self, indices, seeds) -> tuple:
        """The examples at ``indices`` stacked, each augmented by ``default_rng(seed)``."""
        examples = [self.example(i, np.random.default_rng(s)) for i, s in zip(indices, seeds,
                                                                               strict=True)]
        return tuple(np.stack(parts) for parts in zip(*examples, strict=True))


# --- tf.data (TensorFlow backend) ---------------------------------------------------------------


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

    The examples are :class:`Samples` ones, made in parallel ``tf.numpy_function`` calls; a
    training split is reshuffled every pass, and each example's augmentation is seeded from
    ``tf.data.Dataset.random(seed)``.
    """
    import tensorflow as tf

    samples = Samples(dataset, size, training, augment, class_weights, weight_map_things,
                      cache_bytes)
    autotune = tf.data.AUTOTUNE
    width, height = samples.width, samples.height
    out_types = [tf.float32, tf.int32] + ([tf.float32] if samples.with_weights else [])
    shapes = [[height, width, 3], [height, width]] + (
        [[height, width]] if samples.with_weights else [])

    def make(index, example_seed):
        def run(i, s):
            return samples.example(int(i), np.random.default_rng(int(s) & 0x7FFFFFFFFFFFFFFF))

        parts = tf.numpy_function(run, [index, example_seed], out_types, stateful=False)
        for part, shape in zip(parts, shapes, strict=True):
            part.set_shape(shape)
        return tuple(parts)

    ds = tf.data.Dataset.range(len(samples))
    if training:
        ds = ds.shuffle(min(len(samples), 1000), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, seeds)).map(make, num_parallel_calls=autotune,
                                              deterministic=not training)
    return ds.batch(batch, drop_remainder=drop_remainder).prefetch(autotune)


# --- PyDataset (any backend, no TensorFlow) ------------------------------------------------------


def make_py_dataset(
    dataset: SegmentationDataset,
    size: tuple[int, int],
    batch: int,
    training: bool,
    augment: AugmentConfig | None = None,
    class_weights: np.ndarray | None = None,
    weight_map_things: list[int] | None = None,
    cache_bytes: int = 2 << 30,
    seed: int = 0,
    steps_per_epoch: int | None = None,
    first_epoch: int = 0,
    workers: int | None = None,
):
    """The same batches as :func:`make_dataset` as a ``keras.utils.PyDataset``, with worker
    threads and no TensorFlow: ``model.fit`` takes it on every Keras backend.

    Training: ``steps_per_epoch`` full batches per epoch (default: one pass, rounded up) from
    an endless stream of shuffled passes; ``first_epoch`` is the epoch ``model.fit`` starts at
    (a resumed run continues the stream where it stopped). Evaluation: the split in order, the
    last batch short.
    """
    samples = Samples(dataset, size, training, augment, class_weights, weight_map_things,
                      cache_bytes)
    return _py_dataset_class()(samples, batch, seed, steps_per_epoch, first_epoch,
                               workers or min(4, os.cpu_count() or 1))


@functools.cache
def _py_dataset_class():
    import keras

    class SampleBatches(keras.utils.PyDataset):
        """Batches of :class:`Samples`; see :func:`make_py_dataset`."""

        def __init__(self, samples: Samples, batch: int, seed: int, steps: int | None,
                     first_epoch: int, workers: int):
            # Threads: OpenCV releases the GIL, and the decoded cache is shared.
            super().__init__(workers=workers, use_multiprocessing=False,
                             max_queue_size=2 * workers)
            self.samples, self.batch_size, self.seed = samples, batch, seed
            count = len(samples)
            self.steps = (steps or math.ceil(count / batch)) if samples.training else \
                math.ceil(count / batch)
            self.epoch = first_epoch
            self._lock = threading.Lock()
            self._orders: dict[int, np.ndarray] = {}

        def __len__(self) -> int:
            return self.steps

        def on_epoch_end(self):
            # Keras calls this after its workers stopped. It also calls it after reading a
            # pass only to build a model, so the trainer sets ``epoch`` as each epoch begins
            # (edgeseg.train.semantic.EpochSeeding); counting keeps other loops going.
            self.epoch += 1

        def _order(self, shuffled_pass: int) -> np.ndarray:
            with self._lock:
                order = self._orders.get(shuffled_pass)
                if order is None:
                    if len(self._orders) > 4:  # workers are at most a pass apart
                        self._orders.clear()
                    order = np.random.default_rng([self.seed, 0, shuffled_pass]).permutation(
                        len(self.samples))
                    self._orders[shuffled_pass] = order
                return order

        def __getitem__(self, index: int):
            if not 0 <= index < self.steps:
                raise IndexError(f"batch {index} of {self.steps}")
            count = len(self.samples)
            if not self.samples.training:
                indices = range(index * self.batch_size,
                                min((index + 1) * self.batch_size, count))
                return self.samples.batch(indices, [[self.seed, 2, i] for i in indices])
            start = (self.epoch * self.steps + index) * self.batch_size
            places = range(start, start + self.batch_size)
            indices = [self._order(p // count)[p % count] for p in places]
            return self.samples.batch(indices, [[self.seed, 1, p] for p in places])

        def __iter__(self):
            for index in range(len(self)):
                yield self[index]

    return SampleBatches


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
