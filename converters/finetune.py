"""Fine-tuning a tf_keras twin (:mod:`edgeseg.converters.tf_keras_twins`): the loss and the fit
loop that quantisation-aware training and pruning share.

TensorFlow and ``tf_keras`` are imported inside the functions (``pip install "edgeseg[train]"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from edgeseg.converters.tf_keras_twins import import_tf_keras

IGNORE_INDEX = 255


def masked_sparse_cross_entropy(
    labels, logits, sample_weight=None, class_weights=None, ignore_index: int = IGNORE_INDEX
):
    """Softmax cross-entropy over the pixels whose label is not ``ignore_index`` (TensorFlow).

    ``sum(s * w[y] * CE) / sum(s * w[y])`` over the valid pixels, as edgeseg's Keras 3
    ``WeightedSparseCrossEntropy``; ``s`` is a per-pixel (N, H, W) or per-image (N,) weight,
    ``w`` the class weights (ones when None). Labels outside ``0..K-1`` count as ignored.
    """
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == logits.shape.rank:
        labels = tf.squeeze(labels, axis=-1)
    num_classes = logits.shape[-1]
    valid = (labels >= 0) & (labels < num_classes) & (labels != ignore_index)
    safe_labels = tf.where(valid, labels, tf.zeros_like(labels))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
    weight = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weight *= tf.gather(tf.constant(class_weights, tf.float32), safe_labels)
    if sample_weight is not None:
        sample_weight = tf.cast(sample_weight, tf.float32)
        if sample_weight.shape.rank == 1:
            sample_weight = tf.reshape(sample_weight, (-1, 1, 1))
        elif sample_weight.shape.rank == 4:
            sample_weight = tf.squeeze(sample_weight, axis=-1)
        weight *= sample_weight
    return tf.reduce_sum(ce * weight) / tf.maximum(tf.reduce_sum(weight), 1e-12)


def tf_keras_loss(class_weights, ignore_index: int):
    """:func:`masked_sparse_cross_entropy` as a tf_keras loss."""
    tf_keras = import_tf_keras()

    class MaskedSparseCrossEntropy(tf_keras.losses.Loss):
        # __call__ is replaced so that per-pixel sample weights reach the normalisation
        # (tf_keras' Loss would multiply the reduced loss by them).
        def __call__(self, y_true, y_pred, sample_weight=None):
            return masked_sparse_cross_entropy(
                y_true, y_pred, sample_weight, class_weights, ignore_index
            )

    return MaskedSparseCrossEntropy(name="masked_sparse_cross_entropy")


def check_logits_model(model) -> None:
    """A ValueError unless ``model`` ends in logits (fine-tuning trains on them)."""
    last = type(model.layers[-1]).__name__
    if last in ("ClassMask", "Softmax"):
        raise ValueError(
            f"fine-tuning needs a model that outputs logits; {model.name!r} ends in {last} "
            "(build it with output='logits' and copy the weights over)"
        )


def steps_per_epoch_of(train_data, steps_per_epoch: int | None) -> int:
    """``steps_per_epoch``, or the number of batches of a finite ``train_data``."""
    if steps_per_epoch is not None:
        return int(steps_per_epoch)
    cardinality = int(train_data.cardinality())
    if cardinality < 1:
        raise ValueError(
            "train_data has an unknown or infinite number of batches; pass steps_per_epoch"
        )
    return cardinality


def fit(
    model, train_data, val_data, epochs, lr, loss, steps_per_epoch, callbacks, verbose, run_eagerly
):
    """Compiles ``model`` (a tf_keras model) with Adam at ``lr`` and fits it; returns it."""
    tf_keras = import_tf_keras()
    model.compile(optimizer=tf_keras.optimizers.Adam(lr), loss=loss, run_eagerly=run_eagerly)
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=list(callbacks),
        verbose=verbose,
    )
    return model


def representative_from(data, count: int) -> Callable[[], Iterable[np.ndarray]]:
    """Calibration images (1, H, W, C) from the first batches of a dataset of (image, label)."""

    def images():
        seen = 0
        for batch in data:
            for image in np.asarray(batch[0]):
                if seen >= count:
                    return
                seen += 1
                yield image[None]

    return images
