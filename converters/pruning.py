"""Magnitude pruning while fine-tuning (TensorFlow Model Optimization), then int8 TFLite.

The Keras 3 model is fine-tuned as its tf_keras twin (:mod:`edgeseg.converters.tf_keras_twins`)
with tfmot's pruning wrappers; the stripped weights go back into the Keras 3 model, which
:mod:`edgeseg.converters.tflite` converts. TensorFlow, ``tf_keras`` and tfmot are imported
inside the functions (``pip install "edgeseg[train]"``).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeseg.converters.finetune import (
    IGNORE_INDEX,
    check_logits_model,
    fit,
    representative_from,
    steps_per_epoch_of,
    tf_keras_loss,
)
from edgeseg.converters.tf_keras_twins import (
    from_tf_keras,
    import_tf_keras,
    import_tfmot,
    layer_variables,
    to_tf_keras,
    weight_name,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    import tf_keras


PRUNABLE_LAYERS = ("Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "Dense")


def kernel_sparsity(model: keras.Model | tf_keras.Model) -> dict:
    """Fraction of zero kernel weights per prunable layer and overall (Keras 3 or tf_keras).

    Returns:
        ``{"layers": {name: {"weights", "zeros", "sparsity"}}, "kernel_sparsity": zeros /
        weights over those kernels, "model_sparsity": zeros / parameters over all weights}``.
    """
    layers = {}
    total_params = total_zeros = 0
    for layer in model.layers:
        inner, variables = layer_variables(layer)
        for variable in variables:
            value = np.asarray(variable)
            zeros = int(np.count_nonzero(value == 0))
            name = weight_name(variable)
            if name in ("kernel", "depthwise_kernel") and type(inner).__name__ in PRUNABLE_LAYERS:
                layers[inner.name] = {
                    "weights": int(value.size),
                    "zeros": zeros,
                    "sparsity": zeros / value.size,
                }
            if variable.trainable or name in ("moving_mean", "moving_variance"):
                total_params += value.size
                total_zeros += zeros
    kernel_weights = sum(v["weights"] for v in layers.values())
    kernel_zeros = sum(v["zeros"] for v in layers.values())
    return {
        "layers": layers,
        "kernel_sparsity": kernel_zeros / kernel_weights if kernel_weights else 0.0,
        "model_sparsity": total_zeros / total_params if total_params else 0.0,
    }


def _gzip_size(content: bytes) -> int:
    return len(gzip.compress(content, compresslevel=9))


def prune_finetune(
    model: keras.Model,
    train_data: tf.data.Dataset,
    epochs: int = 2,
    target_sparsity: float = 0.5,
    lr: float = 1e-4,
    val_data: tf.data.Dataset | None = None,
    loss=None,
    class_weights=None,
    ignore_index: int = IGNORE_INDEX,
    steps_per_epoch: int | None = None,
    frequency: int | None = None,
    representative_data: Callable[[], Iterable[np.ndarray]] | None = None,
    calibration_images: int = 32,
    io_type: str = "uint8",
    callbacks: Iterable = (),
    verbose: int = 0,
    run_eagerly: bool = False,
) -> tuple[keras.Model, bytes, dict]:
    """Magnitude pruning while fine-tuning, then a full-int8 TFLite model and a size report.

    The kernels of the Conv2D / Conv2DTranspose (and Dense, DepthwiseConv2D) layers are pruned
    with tfmot's ``prune_low_magnitude`` on a polynomial-decay schedule from 0 to
    ``target_sparsity`` over all the training steps, reached at the last pruning step (biases,
    batch norms and PReLU slopes are kept). The stripped weights go back into a copy of the
    Keras 3 model, which :func:`edgeseg.converters.tflite.convert_keras_to_tflite` converts.

    TFLite stores pruned weights densely, so the file shrinks only once compressed; the report
    gives the gzip sizes of the fp32 and int8 models before (``model`` as given) and after.

    Args:
        frequency: pruning steps between mask updates (default: about ten updates in all).
        representative_data: int8 calibration images; default: ``calibration_images`` images
            from ``train_data``.
    Returns:
        ``(pruned, tflite_int8, report)``: the pruned Keras 3 model, the int8 flatbuffer, and a
        dict with the target, the achieved sparsity (``kernel_sparsity``, ``model_sparsity``,
        per ``layers``), the byte sizes ``{fp32, int8}_{bytes, gzip_bytes}`` for ``before`` and
        ``after``, and ``non_builtin_ops`` of the int8 model ([]).
    """
    import keras

    from edgeseg.converters.tflite import convert_keras_to_tflite, non_builtin_ops

    tfmot = import_tfmot()
    tf_keras = import_tf_keras()
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity!r}")
    check_logits_model(model)
    sparsity = tfmot.sparsity.keras
    steps = steps_per_epoch_of(train_data, steps_per_epoch) * int(epochs)
    last_step = steps - 1  # UpdatePruningStep numbers the first batch 0
    if frequency is None:
        frequency = max(1, last_step // 10)
    # The target is reached at end_step, which must be a pruning step (begin + k * frequency).
    end_step = max(0, last_step - last_step % frequency)
    schedule = sparsity.PolynomialDecay(
        initial_sparsity=0.0,
        final_sparsity=float(target_sparsity),
        begin_step=0,
        end_step=end_step,
        frequency=int(frequency),
    )

    def wrap(layer):
        if type(layer).__name__ in PRUNABLE_LAYERS:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # clone_function gets the twin's own layers, so the wrapped model keeps the weights.
    pruning = tf_keras.models.clone_model(to_tf_keras(model), clone_function=wrap)
    fit(
        pruning,
        train_data,
        val_data,
        epochs,
        lr,
        loss or tf_keras_loss(class_weights, ignore_index),
        steps_per_epoch,
        [sparsity.UpdatePruningStep(), *callbacks],
        verbose,
        run_eagerly,
    )
    stripped = sparsity.strip_pruning(pruning)
    pruned = keras.models.clone_model(model)
    from_tf_keras(stripped, pruned)

    calibration = representative_data or representative_from(train_data, calibration_images)
    report: dict[str, Any] = {"target_sparsity": float(target_sparsity), **kernel_sparsity(pruned)}
    tflite_int8 = b""
    for stage, source in (("before", model), ("after", pruned)):
        fp32 = convert_keras_to_tflite(source)
        int8 = convert_keras_to_tflite(source, "int8", calibration, io_type=io_type)
        report[stage] = {
            "fp32_bytes": len(fp32),
            "fp32_gzip_bytes": _gzip_size(fp32),
            "int8_bytes": len(int8),
            "int8_gzip_bytes": _gzip_size(int8),
        }
        tflite_int8 = int8
    report["non_builtin_ops"] = non_builtin_ops(tflite_int8)
    return pruned, tflite_int8, report
