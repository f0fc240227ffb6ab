"""Segmentation losses written with ``keras.ops`` (TensorFlow and JAX backends).

Both losses take integer label maps ``y_true`` of shape (N, H, W) or (N, H, W, 1), with
``ignore_index`` (255) marking pixels that must not contribute, and channels-last scores
``y_pred`` of shape (N, H, W, K): logits by default, probabilities with ``from_logits=False``.

Per-pixel weight maps (the U-Net border weights of :func:`edgeseg.train.weights.unet_weight_map`,
for instance) go through Keras' ordinary ``sample_weight`` path::

    model.compile(optimizer="adam", loss=WeightedSparseCrossEntropy(12, class_weights=w))
    model.fit(images, labels, sample_weight=weight_maps)  # weight_maps: (N, H, W) float
    # or a tf.data.Dataset of (image, label, weight_map) triples

A ``sample_weight`` may be per image (N,) or per pixel (N, H, W) / (N, H, W, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

PACKAGE = "edgeseg"


def _check_num_classes(num_classes) -> int:
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _label_map(y_true, y_pred):
    """Integer labels (N, H, W) from (N, H, W) or (N, H, W, 1)."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape):
        if y_true.shape[-1] != 1:
            raise ValueError(
                "y_true must be integer labels (N, H, W) or (N, H, W, 1), not one-hot; got "
                f"y_true {tuple(y_true.shape)} for y_pred {tuple(y_pred.shape)}"
            )
        y_true = ops.squeeze(y_true, axis=-1)
    if len(y_true.shape) != len(y_pred.shape) - 1:
        raise ValueError(
            f"y_true {tuple(y_true.shape)} does not match y_pred {tuple(y_pred.shape)}: expected "
            "labels (N, H, W) for scores (N, H, W, K)"
        )
    return ops.cast(y_true, "int32")


def _valid_mask(labels, num_classes: int, ignore_index: int | None):
    # Labels outside 0..K-1 cannot raise inside a compiled graph; they count as ignored.
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid = valid & (labels != ignore_index)
    return valid


def _pixel_sample_weight(sample_weight, labels, dtype):
    """Broadcasts a per-image (N,) or per-pixel (N, H, W[, 1]) weight to the label shape."""
    if sample_weight is None:
        return None
    weight = ops.convert_to_tensor(sample_weight, dtype=dtype)
    rank = len(labels.shape)
    if len(weight.shape) == 1:
        weight = ops.reshape(weight, (-1,) + (1,) * (rank - 1))
    elif len(weight.shape) == rank + 1 and weight.shape[-1] == 1:
        weight = ops.squeeze(weight, axis=-1)
    if len(weight.shape) != rank:
        raise ValueError(
            f"sample_weight must be per image (N,) or per pixel (N, H, W); got shape "
            f"{tuple(weight.shape)} for labels {tuple(labels.shape)}"
        )
    return ops.broadcast_to(weight, ops.shape(labels))


def _log_probabilities(y_pred, from_logits: bool):
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    probs = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    return ops.log(ops.clip(probs, keras.config.epsilon(), 1.0))


@keras.saving.register_keras_serializable(package=PACKAGE)
class WeightedSparseCrossEntropy(keras.losses.Loss):
    """Pixel-wise softmax cross-entropy with class weights and an ignore label.

    With the default reduction the loss is the weighted mean of PyTorch's
    ``CrossEntropyLoss(weight=w, ignore_index=255)``::

        loss = sum_i s_i * w[y_i] * CE_i / sum_i s_i * w[y_i]

    over the pixels i of the batch whose label is not ignored, where ``w`` are the class weights
    (ENet's ``1 / ln(1.02 + p)``, SegNet's median frequency, see :mod:`edgeseg.train.weights`) and
    ``s`` the ``sample_weight`` map (the U-Net weight map, 1 when not given). Ignored pixels have
    zero weight, so neither their logits nor their sample weight change the loss.

    Args:
        num_classes: K, the number of channels of ``y_pred``.
        class_weights: K non-negative weights, or None for all ones.
        ignore_index: label value that contributes nothing (None: none). Labels outside
            ``0..K-1`` contribute nothing either (a compiled graph cannot raise on them).
        from_logits: whether ``y_pred`` are logits (the models' output) or probabilities.
        reduction: Keras' reductions over the weighted per-pixel losses ``s * w[y] * CE``:
            ``"mean_with_sample_weight"`` (default, divides by ``sum(s * w[y])`` as above),
            ``"sum_over_batch_size"`` / ``"mean"`` (divides by N * H * W), ``"sum"``, or
            ``None`` / ``"none"`` (the (N, H, W) map, 0 at ignored pixels).
        name, dtype: as for every Keras loss; the computation runs in ``dtype`` (float32).
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | np.ndarray | None = None,
        ignore_index: int | None = 255,
        from_logits: bool = True,
        reduction: str | None = "mean_with_sample_weight",
        name: str = "weighted_sparse_cross_entropy",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        if class_weights is not None:
            weights = np.asarray(class_weights, dtype=np.float64).reshape(-1)
            if weights.shape != (self.num_classes,):
                raise ValueError(
                    f"class_weights must have one weight per class ({self.num_classes}), got "
                    f"{weights.size}"
                )
            if not np.all(np.isfinite(weights)) or np.any(weights < 0):
                raise ValueError(
                    f"class_weights must be finite and non-negative, got {weights.tolist()}"
                )
            class_weights = [float(w) for w in weights]
        self.class_weights = class_weights
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Class weights, the ignore mask and the weight map are folded into Keras' sample weight
        # so that Keras' own reduction (and its tf.distribute scaling) does the rest.
        y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        labels = _label_map(y_true, y_pred)
        valid = _valid_mask(labels, self.num_classes, self.ignore_index)
        if self.class_weights is None:
            weight = ops.cast(valid, self.dtype)
        else:
            class_weights = ops.convert_to_tensor(self.class_weights, dtype=self.dtype)
            in_range = ops.clip(labels, 0, self.num_classes - 1)
            weight = ops.where(valid, ops.take(class_weights, in_range), 0.0)
        pixel_weight = _pixel_sample_weight(sample_weight, labels, self.dtype)
        if pixel_weight is not None:
            weight = weight * pixel_weight
        return super().__call__(labels, y_pred, sample_weight=weight)

    def call(self, y_true, y_pred):
        """Unweighted cross-entropy per pixel (N, H, W); 0 where the label is out of range."""
        labels = _label_map(y_true, y_pred)
        one_hot = ops.one_hot(labels, self.num_classes, dtype=y_pred.dtype)
        return -ops.sum(one_hot * _log_probabilities(y_pred, self.from_logits), axis=-1)

    def get_config(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "class_weights": self.class_weights,
            "ignore_index": self.ignore_index,
            "from_logits": self.from_logits,
            "reduction": self.reduction,
            "name": self.name,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class DiceLoss(keras.losses.Loss):
    """Soft multi-class Dice loss: ``1 - mean_k (2 |P_k G_k| + smooth) / (|P_k| + |G_k| + smooth)``.

    ``P_k`` are the softmax probabilities of class k, ``G_k`` the one-hot labels; the sums run
    over all non-ignored pixels of the batch (one Dice per class for the whole batch, not per
    image, so classes missing from one image do not dominate). Every class takes part in the
    mean: a class absent from the batch scores close to 1 when the network predicts it nowhere.
    A ``sample_weight`` (N,) or (N, H, W) weights each pixel's contribution to the sums.

    Args:
        num_classes: K.
        ignore_index: label value that contributes nothing (None: none).
        smooth: added to numerator and denominator; keeps empty classes finite.
        from_logits: whether ``y_pred`` are logits or probabilities.
        name, dtype: as for every Keras loss.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        from_logits: bool = True,
        name: str = "dice_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction="sum", dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        if not smooth >= 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}")
        self.smooth = float(smooth)
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Dice is a ratio of batch sums, not a mean of per-pixel terms, so Keras' reduction does
        # not apply; the weights enter the sums instead.
        with keras.name_scope(self.name):
            y_pred = ops.convert_to_tensor(y_pred, dtype=self.dtype)
            labels = _label_map(y_true, y_pred)
            weight = ops.cast(_valid_mask(labels, self.num_classes, self.ignore_index), self.dtype)
            pixel_weight = _pixel_sample_weight(sample_weight, labels, self.dtype)
            if pixel_weight is not None:
                weight = weight * pixel_weight
            return self._dice_loss(labels, y_pred, weight)

    def call(self, y_true, y_pred):
        labels = _label_map(y_true, y_pred)
        weight = ops.cast(_valid_mask(labels, self.num_classes, self.ignore_index), y_pred.dtype)
        return self._dice_loss(labels, y_pred, weight)

    def _dice_loss(self, labels, y_pred, weight):
        probs = ops.softmax(y_pred, axis=-1) if self.from_logits else y_pred
        one_hot = ops.one_hot(labels, self.num_classes, dtype=y_pred.dtype)
        weight = ops.expand_dims(weight, axis=-1)
        axes = tuple(range(len(y_pred.shape) - 1))
        intersection = ops.sum(weight * probs * one_hot, axis=axes)
        cardinality = ops.sum(weight * (probs + one_hot), axis=axes)
        dice = (2.0 * intersection + self.smooth) / (cardinality + self.smooth)
        return 1.0 - ops.mean(dice)

    def get_config(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "smooth": self.smooth,
            "from_logits": self.from_logits,
            "name": self.name,
            "dtype": self.dtype,
        }
