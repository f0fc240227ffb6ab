"""Quantisation-aware fine-tuning with TensorFlow Model Optimization, and its int8 TFLite export.

The Keras 3 model is fine-tuned as its tf_keras twin (:mod:`edgeseg.converters.tf_keras_twins`)
wrapped by tfmot; the result converts to TFLite directly. Quantisation decisions (tfmot's
default 8-bit scheme, TFLite's int8 kernels):

- Convolutions, transposed convolutions, ReLU, Add, Concatenate, max pooling and dropout use the
  scheme's own configs and graph transforms: conv + batch norm [+ ReLU] is quantised once, after
  the batch norm / activation, as the converter folds it into one int8 CONV_2D.
- PReLU is not in tfmot's registry; it gets one output quantiser. Its slopes stay float in the
  Keras graph and the converter quantises them as constants (TFLite's int8 PRELU).
- A batch norm that does not follow a convolution (ENet's after the initial concatenation and
  after the cropped transposed convolutions) becomes the equal 1x1 convolution with a diagonal
  kernel, frozen statistics folded in (:func:`lone_batch_norms_as_convs`): TFLite would lower it
  to MUL + ADD with one int8 scale for all the channels' multipliers.
- The edgeseg layers only move, select or pad values (strided slices, max, select, reshape,
  pad), so they get no fake quantisation: TFLite runs these operators in int8 with the input's
  scale, which the converter propagates. The pooling indices are int32 and never quantised.
- tfmot starts activation ranges at [-6, 6] and moves them 0.1% a step; :func:`qat_finetune`
  first sets them from a few batches (:func:`calibrate_ranges`), so that a short fine-tune
  ends with ranges that fit.

The converted model uses TFLite builtin operators only, all in int8 (checked: no Flex, no custom
operators, no float operator). Everything here imports TensorFlow, ``tf_keras`` and tfmot inside
functions; they come with ``pip install "edgeseg[train]"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.converters.finetune import (
    IGNORE_INDEX,
    check_logits_model,
    fit,
    representative_from,
    tf_keras_loss,
)
from edgeseg.converters.tf_keras_twins import (
    PACKAGE,
    QUANTIZER_ONLY_LAYERS,
    import_tf_keras,
    import_tfmot,
    tf_keras_layers,
    to_tf_keras,
    weight_name,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    import tf_keras


# --- quantisation configs and the QAT wrapper -----------------------------------------------------


@functools.cache
def quantize_configs() -> dict[str, type]:
    """The QuantizeConfigs used for layers outside tfmot's default 8-bit registry."""
    tfmot = import_tfmot()
    tf_keras = import_tf_keras()
    qk = tfmot.quantization.keras
    register = tf_keras.saving.register_keras_serializable(package=PACKAGE)

    @register
    class PassThroughQuantizeConfig(qk.QuantizeConfig):
        """No fake quantisation: for layers that only move, select or pad values.

        TFLite runs their operators in int8 with the scale of their input, which the converter
        propagates, so a quantiser here would only add a requantisation.
        """

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    @register
    class OutputQuantizeConfig(PassThroughQuantizeConfig):
        """One 8-bit asymmetric per-tensor quantiser on the output (PReLU, a lone batch norm)."""

        def get_output_quantizers(self, layer):
            return [
                qk.quantizers.MovingAverageQuantizer(
                    num_bits=8, per_axis=False, symmetric=False, narrow_range=False
                )
            ]

    return {cls.__name__: cls for cls in (PassThroughQuantizeConfig, OutputQuantizeConfig)}


def _inbound_layer_names(model) -> dict[str, list[str]]:
    """Layer name -> the names of the layers feeding it, in ``model``'s own graph.

    Read from the config because a layer shared with another model (``clone_model`` with a
    ``clone_function`` that returns the layer itself) also holds that model's nodes.
    """
    inbound = {}
    for layer_config in model.get_config()["layers"]:
        names = []
        for node in layer_config.get("inbound_nodes", []):
            if isinstance(node, dict):  # {"args": [...], "kwargs": {...}}
                node = [arg["config"]["keras_history"] for arg in node.get("args", [])]
            names += [item[0] for item in node]
        inbound[layer_config["name"]] = names
    return inbound


def _follows_linear_conv(layer, model, inbound: dict) -> bool:
    """Whether a batch norm directly follows a linear Conv2D / DepthwiseConv2D (tfmot folds it)."""
    previous = inbound.get(layer.name, [])
    if len(previous) != 1:
        return False
    conv = model.get_layer(previous[0])
    return type(conv).__name__ in ("Conv2D", "DepthwiseConv2D") and (
        conv.get_config().get("activation") == "linear"
    )


def _is_lone_batch_norm(layer, model, inbound: dict) -> bool:
    """A channels-last batch norm with scale and offset that tfmot cannot fold into a conv."""
    if type(layer).__name__ != "BatchNormalization" or _follows_linear_conv(layer, model, inbound):
        return False
    axes = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return layer.center and layer.scale and len(layer.input_shape) == 4 and axes in ([-1], [3])


@functools.cache
def _diagonal_kernel_class() -> type:
    import tensorflow as tf

    tf_keras = import_tf_keras()

    @tf_keras.saving.register_keras_serializable(package=PACKAGE)
    class DiagonalKernel(tf_keras.constraints.Constraint):
        """Keeps a 1x1 C -> C convolution kernel diagonal, i.e. a per-channel scale."""

        def __call__(self, w):
            return w * tf.eye(w.shape[-1], dtype=w.dtype)[None, None]

        def get_config(self):
            return {}

    return DiagonalKernel


def lone_batch_norms_as_convs(model):
    """Replaces each lone batch norm by the equal 1x1 convolution with a diagonal kernel.

    TFLite lowers a batch norm it cannot fold into a convolution to MUL + ADD, and quantises the
    per-channel multipliers with one scale for all channels: after ENet's initial concatenation
    the multipliers span an order of magnitude, and the small ones lose most of their bits
    (6 int8 steps of error at ``initial_bn`` in a test). A 1x1 convolution with the folded scale
    on its diagonal converts to an int8 CONV_2D with one scale per output channel, which holds
    each multiplier to 8 bits. Its statistics are frozen (folded), as is usual for QAT
    fine-tuning; the kernel stays diagonal while training (``DiagonalKernel`` constraint) and
    :func:`from_tf_keras` turns it back into the batch norm. The cost is C * C multiply-adds per
    pixel instead of C (C = 16 at ENet's 1/2 resolution).
    """
    tf_keras = import_tf_keras()
    inbound = _inbound_layer_names(model)
    lone = {
        layer.name: layer for layer in model.layers if _is_lone_batch_norm(layer, model, inbound)
    }
    if not lone:
        return model
    diagonal = _diagonal_kernel_class()

    def replace(layer):
        if layer.name not in lone:
            return layer
        return tf_keras.layers.Conv2D(
            int(layer.gamma.shape[-1]),
            1,
            kernel_constraint=diagonal(),
            name=layer.name,
            dtype=layer.dtype_policy,
        )

    with tf_keras.utils.custom_object_scope(tf_keras_layers()):
        converted = tf_keras.models.clone_model(model, clone_function=replace)
    for name, bn in lone.items():
        gamma, beta, mean, variance = (
            np.asarray(v, np.float64)
            for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)
        )
        scale = gamma / np.sqrt(variance + bn.epsilon)
        converted.get_layer(name).set_weights(
            [
                np.diag(scale)[None, None].astype(np.float32),
                (beta - mean * scale).astype(np.float32),
            ]
        )
    return converted



def _quantize_config_for(layer, model, inbound: dict, configs: dict):
    kind = type(layer).__name__
    if kind in tf_keras_layers():
        return configs["PassThroughQuantizeConfig"]()
    if kind == "PReLU":
        return configs["OutputQuantizeConfig"]()
    if kind == "BatchNormalization" and not _follows_linear_conv(layer, model, inbound):
        return configs["OutputQuantizeConfig"]()  # one without scale or offset
    return None  # tfmot's registry and transforms decide


def quantize_aware(tf_keras_model: tf_keras.Model) -> tf_keras.Model:
    """Wraps a tf_keras twin for quantisation-aware training (tfmot's default 8-bit scheme).

    Every layer is quantised: the registry's layers by tfmot, PReLU with an output quantiser,
    lone batch norms as diagonal 1x1 convolutions, edgeseg's pooling / unpooling / pad / crop
    layers with none (see the module docstring). The function computed is kept (up to the fake
    quantisation), and so are the weights.
    """
    tfmot = import_tfmot()
    tf_keras = import_tf_keras()
    qk = tfmot.quantization.keras
    configs = quantize_configs()

    model = lone_batch_norms_as_convs(tf_keras_model)
    inbound = _inbound_layer_names(model)

    def annotate(layer):
        return qk.quantize_annotate_layer(
            layer, _quantize_config_for(layer, model, inbound, configs)
        )

    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    custom_objects = {**tf_keras_layers(), **configs, "DiagonalKernel": _diagonal_kernel_class()}
    with qk.quantize_scope(custom_objects):
        return qk.quantize_apply(annotated)


# The MovingAverageQuantizer ranges of tfmot's default 8-bit scheme (activations and outputs).
_EMA_RANGES = tuple(
    f"{kind}_{end}"
    for kind in ("output", "pre_activation", "post_activation")
    for end in ("min", "max")
)
TFMOT_EMA_DECAY = 0.999  # MovingAverageQuantizer's, fixed in tfmot


def calibrate_ranges(qat_model: tf_keras.Model, data: tf.data.Dataset, batches: int = 4) -> int:
    """Sets the activation ranges of a QAT model from data instead of tfmot's initial [-6, 6].

    tfmot starts every activation range at [-6, 6] and moves it towards each batch's range by
    0.1% a step, so a fine-tune of a few hundred steps ends with ranges near [-6, 6] and an
    int8 model that wastes most of its 256 levels (the logits of a fresh fine-tune may span
    0.1). Each calibration batch runs the model in training mode, as ``fit`` does; the batch
    range ``r`` is recovered exactly from tfmot's update ``v1 = v0 - (v0 - r) * (1 - decay)``
    and each range is set to the mean ``r`` over the batches so far. Batch-norm statistics and
    every other variable the pass changed are restored; the input range (all values seen)
    keeps what it saw.

    Args:
        data: a ``tf.data.Dataset`` of (image, label[, weight]) batches; ``batches`` are used.
    Returns:
        The number of ranges set.
    """
    ranges, restore = [], []
    for layer in qat_model.layers:
        if type(layer).__name__ in QUANTIZER_ONLY_LAYERS:
            continue  # AllValuesQuantizer: min / max of all values seen, meant to move
        for variable in layer.non_trainable_weights:
            (ranges if weight_name(variable) in _EMA_RANGES else restore).append(variable)
    rate = np.float64(np.float32(1.0 - TFMOT_EMA_DECAY))  # as assign_moving_average computes it
    sums = [np.zeros(v.shape, np.float64) for v in ranges]
    count = 0
    for batch in data.take(batches):
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        before = [np.asarray(v, np.float64) for v in ranges]
        saved = [np.asarray(v) for v in restore]
        qat_model(images, training=True)
        count += 1
        for variable, v0, total in zip(ranges, before, sums, strict=True):
            v1 = np.asarray(variable, np.float64)
            total += v0 - (v0 - v1) / rate
            variable.assign((total / count).astype(np.float32))
        for variable, value in zip(restore, saved, strict=True):
            variable.assign(value)
    return len(ranges) if count else 0


# --- fine-tuning and conversion -------------------------------------------------------------------


def qat_finetune(
    model: keras.Model,
    train_data: tf.data.Dataset,
    val_data: tf.data.Dataset | None = None,
    epochs: int = 2,
    lr: float = 1e-4,
    loss=None,
    class_weights=None,
    ignore_index: int = IGNORE_INDEX,
    steps_per_epoch: int | None = None,
    calibration_batches: int = 4,
    callbacks: Iterable = (),
    verbose: int = 0,
    run_eagerly: bool = False,
) -> tf_keras.Model:
    """Quantisation-aware fine-tuning of a trained Keras 3 edgeseg model.

    Args:
        model: a Keras 3 functional model with a logits output.
        train_data: a ``tf.data.Dataset`` of (image float32 [0, 1] (N, H, W, 3), label int
            (N, H, W)) batches, optionally with a third element, per-pixel weights.
        val_data: the same for validation, or None.
        lr: Adam's learning rate; small (1e-4 to 1e-5), the weights are already trained.
        loss: a tf_keras loss; default: ``finetune.masked_sparse_cross_entropy`` with
            ``class_weights`` and ``ignore_index``.
        calibration_batches: batches of ``train_data`` that set the activation ranges before
            training (:func:`calibrate_ranges`); 0 keeps tfmot's initial [-6, 6].
        run_eagerly: run the steps eagerly; skips tracing the training graph (a minute for
            ENet on two cores), which pays off only for a handful of steps.
    Returns:
        The QAT tf_keras model (fake-quantised); convert it with :func:`convert_qat_to_tflite`.
        Its ``history`` attribute holds the fit history.
    """
    check_logits_model(model)
    qat_model = quantize_aware(to_tf_keras(model))
    if calibration_batches:
        calibrate_ranges(qat_model, train_data, calibration_batches)
    return fit(
        qat_model,
        train_data,
        val_data,
        epochs,
        lr,
        loss or tf_keras_loss(class_weights, ignore_index),
        steps_per_epoch,
        callbacks,
        verbose,
        run_eagerly,
    )


def convert_qat_to_tflite(
    qat_model: tf_keras.Model,
    representative_data: Callable[[], Iterable[np.ndarray]] | None = None,
    io_type: str = "uint8",
) -> bytes:
    """Converts a QAT tf_keras model to a full-int8 TFLite flatbuffer (batch 1, builtins only).

    The fake-quantisation ranges learnt in training set the scales; the converter propagates
    them through the pass-through layers, so edgeseg's models need no calibration data.
    ``representative_data`` (a callable returning float32 images (H, W, C) or batches
    (1, H, W, C), as for :func:`edgeseg.converters.tflite.convert_keras_to_tflite`) adds
    post-training calibration on top, with ``TFLITE_BUILTINS_INT8`` only, for a graph where some
    tensor has no range.

    Raises:
        ValueError: bad ``io_type``, or the flatbuffer has a non-builtin operator or an operator
            that computes in float.
    """
    import tensorflow as tf

    from edgeseg.converters.tflite import IO_TYPES, _configure, non_builtin_ops, run_converter

    if io_type not in IO_TYPES:
        raise ValueError(f"io_type must be one of {', '.join(IO_TYPES)}; got {io_type!r}")
    input_shape = (1, *qat_model.inputs[0].shape[1:])

    @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32, name="image")])
    def serve(image):
        return qat_model(image, training=False)

    # The converter saves the trackable object it is given; a tf.Module holding the variables
    # avoids tf_keras' SavedModel serialisation of every layer (minutes for ENet).
    holder = tf.Module()
    holder.model_variables = list(qat_model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], holder
    )
    if representative_data is None:
        # The QAT path: TFLite detects the fake-quantisation ops. (Setting supported_ops to
        # TFLITE_BUILTINS_INT8 here would demand a representative dataset.)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if io_type != "float32":
            converter.inference_input_type = getattr(tf, io_type)
            converter.inference_output_type = getattr(tf, io_type)
    else:
        _configure(converter, "int8", representative_data, io_type)
    content = run_converter(converter)
    bad = non_builtin_ops(content)
    if bad:
        raise ValueError(f"the QAT model converted with non-builtin TFLite operators: {bad}")
    in_float = float_ops(content)
    if in_float:
        raise ValueError(
            f"the QAT model did not convert to full int8: these operators compute in float: "
            f"{in_float} (a tensor without a quantisation range; pass representative_data)"
        )
    return content


def float_ops(model_content: bytes) -> list[str]:
    """Operators of a TFLite model that read or write float32 tensors, I/O conversion excepted.

    A full-int8 model has none; with float32 I/O only its first QUANTIZE and last DEQUANTIZE
    touch floats. The interpreter runs without delegates so that every operator is listed.
    """
    import importlib

    from edgeseg.runtime_tflite import interpreter_class as litert_interpreter

    interpreter_class = litert_interpreter()
    resolver = importlib.import_module(interpreter_class.__module__).OpResolverType
    interpreter = interpreter_class(
        model_content=model_content,
        experimental_op_resolver_type=resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    model_inputs = {d["index"] for d in interpreter.get_input_details()}
    model_outputs = {d["index"] for d in interpreter.get_output_details()}
    found = set()
    for op in interpreter._get_ops_details():
        inputs = [i for i in op["inputs"] if i >= 0]
        outputs = [i for i in op["outputs"] if i >= 0]
        if op["op_name"] == "QUANTIZE" and set(inputs) <= model_inputs:
            continue
        if op["op_name"] == "DEQUANTIZE" and set(outputs) <= model_outputs:
            continue
        if any(dtypes[i] == np.float32 for i in inputs + outputs):
            found.add(op["op_name"])
    return sorted(found)


# --- edgeseg export --quant qat -------------------------------------------------------------------


def qat_export_tflite(
    model: keras.Model,
    train_spec: str,
    calibration: np.ndarray | None = None,
    io_type: str = "float32",
    epochs: int = 2,
    batch: int = 4,
    steps_per_epoch: int | None = None,
    lr: float = 1e-4,
) -> bytes:
    """``edgeseg export --quant qat``: QAT fine-tuning on ``train_spec``, then a full-int8 TFLite.

    Args:
        model: the trained Keras 3 model with a logits output, at the export size.
        train_spec: a data spec (``synthetic``, ``camvid:/data/CamVid``, ...); its train split
            is the fine-tuning data, cropped to the model's input size, with ENet class weights.
        calibration: float32 images (N, H, W, 3) for post-training calibration, used only when
            the QAT graph converts with some tensor lacking a range.
        steps_per_epoch: default: one pass over the train split, at most 200 steps.
    """
    from edgeseg.data import open_dataset
    from edgeseg.data.stats import class_pixel_counts
    from edgeseg.train.pipeline import make_dataset
    from edgeseg.train.weights import enet_class_weights

    check_logits_model(model)
    height, width = model.inputs[0].shape[1:3]
    dataset = open_dataset(train_spec, "train")
    weights = enet_class_weights(class_pixel_counts(dataset))
    data = make_dataset(dataset, (width, height), batch, training=True, drop_remainder=True)
    steps = steps_per_epoch or max(1, min(200, len(dataset) // batch))
    qat_model = qat_finetune(model, data.repeat(), epochs=epochs, lr=lr, class_weights=weights,
                             steps_per_epoch=steps)
    try:
        return convert_qat_to_tflite(qat_model, io_type=io_type)
    except ValueError as error:
        if calibration is None or "operators compute in float" not in str(error):
            raise
        representative = representative_from([(calibration,)], len(calibration))
        return convert_qat_to_tflite(qat_model, representative, io_type=io_type)
