"""Streaming Keras metrics for segmentation, written with ``keras.ops`` (TensorFlow and JAX).

These run inside ``model.fit`` / ``model.evaluate``. For exact offline scoring and the full
per-class table use the NumPy :class:`edgeseg.metrics.ConfusionMatrix`, which needs no Keras.

A saved model compiled with ``MeanIoUMetric`` reloads with ``keras.saving.load_model`` once this
module has been imported (the class is registered as ``"edgeseg>MeanIoUMetric"``).
"""

from __future__ import annotations

import keras
from keras import ops

PACKAGE = "edgeseg"


@keras.saving.register_keras_serializable(package=PACKAGE)
class MeanIoUMetric(keras.metrics.Metric):
    """Mean IoU ("class IoU" of the ENet paper) accumulated over batches, from logits.

    The state is a (K, K) confusion matrix (rows ground truth, columns prediction). Each batch is
    counted exactly in int32, then added to a float32 accumulator so that the state behaves the
    same on every backend (JAX has no int64 without x64 mode) and never overflows; counts stay
    exact up to 2**24 pixels per cell and are within a relative 1e-5 or so beyond that.

    The mean is over the classes present in the ground truth or the predictions seen so far,
    like ``edgeseg.metrics.scores_from_confusion(...)["miou"]``; 0 before any pixel is counted.

    Args:
        num_classes: K.
        ignore_index: label value that is not scored (None: score every pixel). Labels outside
            ``0..K-1`` are not scored either: a compiled graph cannot raise on them, so check
            datasets with ``edgeseg.metrics.confusion_matrix``, which does.
        name, dtype: as for every Keras metric.

    ``update_state(y_true, y_pred, sample_weight=None)`` takes labels (N, H, W) or (N, H, W, 1)
    and either logits / probabilities (N, H, W, K), reduced with argmax, or class ids with the
    same shape as the labels. ``sample_weight`` (per image or per pixel) weights the counts.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        name: str = "mean_iou",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self._direction = "up"
        self.confusion = self.add_variable(
            shape=(num_classes, num_classes),
            initializer="zeros",
            dtype="float32",
            name="confusion",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        num_classes = self.num_classes
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        same_rank = len(y_true.shape) == len(y_pred.shape)
        if same_rank and y_true.shape[-1] == 1 and y_pred.shape[-1] != 1:
            y_true = ops.squeeze(y_true, axis=-1)  # (N, H, W, 1) labels with (N, H, W, K) scores
        if len(y_pred.shape) == len(y_true.shape) + 1:
            y_pred = ops.argmax(y_pred, axis=-1)
        elif len(y_pred.shape) != len(y_true.shape):
            raise ValueError(
                f"y_pred must be scores (N, H, W, K) or class ids shaped like y_true; got y_true "
                f"{tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)}"
            )
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        preds = ops.reshape(ops.cast(y_pred, "int32"), (-1,))
        valid = (labels >= 0) & (labels < num_classes) & (preds >= 0) & (preds < num_classes)
        if self.ignore_index is not None:
            valid = valid & (labels != self.ignore_index)
        # Invalid pixels are sent to cell (0, 0) with a count of 0, which keeps shapes static.
        indices = ops.stack([ops.where(valid, labels, 0), ops.where(valid, preds, 0)], axis=1)
        if sample_weight is None:
            counts = ops.scatter(
                indices, ops.cast(valid, "int32"), (num_classes, num_classes)
            )
        else:
            weights = ops.convert_to_tensor(sample_weight, dtype="float32")
            batch = ops.shape(y_true)[0]
            if len(weights.shape) == 1:
                weights = ops.reshape(weights, (batch,) + (1,) * (len(y_true.shape) - 1))
            elif len(weights.shape) == len(y_true.shape) + 1 and weights.shape[-1] == 1:
                weights = ops.squeeze(weights, axis=-1)
            weights = ops.reshape(ops.broadcast_to(weights, ops.shape(y_true)), (-1,))
            counts = ops.scatter(
                indices, ops.where(valid, weights, 0.0), (num_classes, num_classes)
            )
        self.confusion.assign_add(ops.cast(counts, "float32"))

    def result(self):
        confusion = self.confusion
        true_positives = ops.diagonal(confusion)
        union = ops.sum(confusion, axis=0) + ops.sum(confusion, axis=1) - true_positives
        present = ops.cast(union > 0, "float32")
        iou = ops.divide_no_nan(true_positives, union)
        miou = ops.divide_no_nan(ops.sum(iou * present), ops.sum(present))
        return ops.cast(miou, self.dtype)

    def get_config(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "name": self.name,
            "dtype": self.dtype,
        }
