"""Quantisation-aware fine-tuning and magnitude pruning with TensorFlow Model Optimization.

TF Model Optimization (tfmot) wraps ``tf_keras`` (Keras 2) layers only, and edgeseg's models are
Keras 3. So the model is rebuilt as the same graph in ``tf_keras`` (:func:`to_tf_keras`): every
built-in layer from its Keras 3 config, every edgeseg layer (pooling with indices, unpooling,
padding, cropping) from a ``tf_keras`` twin written with the same TensorFlow operators, and the
weights copied by layer and weight name, each one accounted for. Fine-tuning then runs in
``tf_keras``; the result converts to TFLite directly (QAT) or goes back into the Keras 3 model
(:func:`from_tf_keras`, pruning) and through :mod:`edgeseg.converters.tflite`.

Quantisation decisions (tfmot's default 8-bit scheme, TFLite's int8 kernels):

- Convolutions, transposed convolutions, ReLU, Add, Concatenate, max pooling and dropout use the
  scheme's own configs and graph transforms (conv + batch norm [+ ReLU] is quantised once, after
  the batch norm / activation, as the converter folds it).
- PReLU is not in tfmot's registry; it gets one output quantiser. Its slopes stay float in the
  Keras graph and the converter quantises them as constants (TFLite's int8 PRELU takes int8
  slopes), so its kernel is int8 like the rest.
- A batch norm that does not follow a convolution (ENet's after the initial concatenation and
  after a cropped transposed convolution) is not in the registry either; it also gets an output
  quantiser, and converts to an int8 MUL + ADD.
- The edgeseg layers only move, select or pad values (strided slices, max, select, reshape,
  pad), so they get no fake quantisation: TFLite runs these operators in int8 with the input's
  scale, which the converter propagates. The pooling indices are int32 and never quantised.

The converted model uses TFLite builtin operators only (``TFLITE_BUILTINS_INT8``); no Flex and no
custom operators. Everything here imports TensorFlow, ``tf_keras`` and tfmot inside functions;
they come with ``pip install "edgeseg[train]"``.

Importing tfmot sets ``TF_USE_LEGACY_KERAS=1`` in the process environment (its ``compat``
module); that would route ``tf.keras`` to ``tf_keras`` for the rest of the process and for any
subprocess. :func:`_import_tfmot` resolves ``tf.keras`` first and restores the variable.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

INSTALL_HINT = 'pip install "edgeseg[train]"'
IGNORE_INDEX = 255
PACKAGE = "edgeseg"
# Keras 3 call arguments that the tf_keras twin graph must not fix: tf_keras sets the training
# flag from fit / predict, and a mask of None is the default.
_DROPPED_CALL_KWARGS = ("training", "mask")
# tfmot layers that hold only quantiser state (no counterpart in the Keras 3 model).
_QUANTIZER_ONLY_LAYERS = ("QuantizeLayer",)


# --- optional dependencies ----------------------------------------------------------------------


def _import_tf_keras():
    try:
        import tf_keras
    except ImportError:
        raise ImportError(
            f"quantisation-aware training and pruning need tf_keras: {INSTALL_HINT}"
        ) from None
    return tf_keras


def _import_tfmot():
    """tensorflow_model_optimization, imported without changing how ``tf.keras`` resolves."""
    _import_tf_keras()
    try:
        import tensorflow as tf

        # Resolve tf.keras (Keras 3 unless the user chose otherwise) before tfmot sets
        # TF_USE_LEGACY_KERAS; tfmot then picks tf_keras itself.
        getattr(tf.keras, "version", None)
        before = os.environ.get("TF_USE_LEGACY_KERAS")
        try:
            import tensorflow_model_optimization as tfmot
        finally:
            if before is None:
                os.environ.pop("TF_USE_LEGACY_KERAS", None)
            else:
                os.environ["TF_USE_LEGACY_KERAS"] = before
    except ImportError:
        raise ImportError(
            "quantisation-aware training and pruning need tensorflow-model-optimization: "
            f"{INSTALL_HINT}"
        ) from None
    return tfmot


# --- tf_keras twins of edgeseg's layers ---------------------------------------------------------


@functools.cache
def tf_keras_layers() -> dict[str, type]:
    """tf_keras twins of :mod:`edgeseg.models.layers`, by class name (registered as ``edgeseg>``).

    They run the same TensorFlow operators as the Keras 3 layers do under the TensorFlow backend
    (strided slices, max, equal, select, min, stack, reshape, pad), so they convert to the same
    builtin TFLite operators and give the same numbers.
    """
    import tensorflow as tf

    tf_keras = _import_tf_keras()
    register = tf_keras.saving.register_keras_serializable(package=PACKAGE)

    def static_hw(shape, layer_name):
        height, width = shape[1], shape[2]
        if height is None or width is None:
            raise ValueError(
                f"{layer_name} needs a static height and width, got input shape {tuple(shape)}"
            )
        return int(height), int(width)

    def first_argmax(x, axis):
        # Not tf.argmax: max + equal + select + min makes the tie rule (lowest index) explicit
        # and is what the Keras 3 layer converts to.
        rank = len(x.shape)
        size = int(x.shape[axis])
        positions = tf.reshape(
            tf.range(size, dtype=tf.int32), [size if i == axis % rank else 1 for i in range(rank)]
        )
        is_max = tf.equal(x, tf.reduce_max(x, axis=axis, keepdims=True))
        return tf.reduce_min(tf.where(is_max, positions, size), axis=axis)

    @register
    class MaxPoolWithIndices(tf_keras.layers.Layer):
        """k x k max pooling with window-local first-max indices (see the Keras 3 layer)."""

        def __init__(self, pool_size=2, **kwargs):
            super().__init__(**kwargs)
            self.pool_size = int(pool_size)

        def call(self, inputs):
            k = self.pool_size
            height, width = static_hw(inputs.shape, self.name)
            x = inputs
            if -height % k:
                x = tf.concat([x] + [x[:, -1:, :, :]] * (-height % k), axis=1)
            if -width % k:
                x = tf.concat([x] + [x[:, :, -1:, :]] * (-width % k), axis=2)
            windows = tf.stack([x[:, r::k, c::k, :] for r in range(k) for c in range(k)], axis=-1)
            return tf.reduce_max(windows, axis=-1), first_argmax(windows, -1)

        def get_config(self):
            return {**super().get_config(), "pool_size": self.pool_size}

    @register
    class UnpoolWithIndices(tf_keras.layers.Layer):
        """Max-unpooling with the indices of ``MaxPoolWithIndices`` (see the Keras 3 layer)."""

        def __init__(self, output_size, pool_size=2, **kwargs):
            super().__init__(**kwargs)
            self.output_size = (int(output_size[0]), int(output_size[1]))
            self.pool_size = int(pool_size)

        def call(self, inputs):
            values, indices = inputs
            k = self.pool_size
            h, w = static_hw(values.shape, self.name)
            channels = values.shape[-1]
            zeros = tf.zeros_like(values)
            rows = []
            for r in range(k):
                row = tf.stack(
                    [tf.where(tf.equal(indices, r * k + c), values, zeros) for c in range(k)],
                    axis=3,
                )
                rows.append(tf.reshape(row, (-1, h, w * k, channels)))
            out = tf.reshape(tf.stack(rows, axis=2), (-1, h * k, w * k, channels))
            out_h, out_w = self.output_size
            if (out_h, out_w) != (h * k, w * k):
                out = out[:, :out_h, :out_w, :]
            return out

        def get_config(self):
            return {
                **super().get_config(),
                "output_size": list(self.output_size),
                "pool_size": self.pool_size,
            }

    @register
    class PadToMultiple(tf_keras.layers.Layer):
        """Zero-pads bottom and right to a multiple of ``multiple``."""

        def __init__(self, multiple, **kwargs):
            super().__init__(**kwargs)
            self.multiple = int(multiple)

        def call(self, inputs):
            height, width = static_hw(inputs.shape, self.name)
            pad_h, pad_w = -height % self.multiple, -width % self.multiple
            if not (pad_h or pad_w):
                return inputs
            return tf.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

        def get_config(self):
            return {**super().get_config(), "multiple": self.multiple}

    @register
    class PadChannels(tf_keras.layers.Layer):
        """Zero-pads the channel axis up to ``channels``."""

        def __init__(self, channels, **kwargs):
            super().__init__(**kwargs)
            self.channels = int(channels)

        def call(self, inputs):
            extra = self.channels - inputs.shape[-1]
            if extra < 0:
                raise ValueError(f"{self.name}: input has {inputs.shape[-1]} channels > {self.channels}")
            if extra == 0:
                return inputs
            return tf.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, extra]])

        def get_config(self):
            return {**super().get_config(), "channels": self.channels}

    @register
    class CropTo(tf_keras.layers.Layer):
        """Crops to ``size`` from the top-left or the centre."""

        def __init__(self, size, centre=False, **kwargs):
            super().__init__(**kwargs)
            self.size = (int(size[0]), int(size[1]))
            self.centre = bool(centre)

        def call(self, inputs):
            height, width = static_hw(inputs.shape, self.name)
            out_h, out_w = self.size
            if out_h > height or out_w > width:
                raise ValueError(f"{self.name}: cannot crop {height}x{width} to {out_h}x{out_w}")
            top, left = ((height - out_h) // 2, (width - out_w) // 2) if self.centre else (0, 0)
            if (top, left) == (0, 0) and (height, width) == self.size:
                return inputs
            return inputs[:, top : top + out_h, left : left + out_w, :]

        def get_config(self):
            return {**super().get_config(), "size": list(self.size), "centre": self.centre}

    @register
    class ClassMask(tf_keras.layers.Layer):
        """In-graph first argmax over the classes, as uint8."""

        def call(self, inputs):
            return tf.cast(first_argmax(inputs, -1), tf.uint8)

    twins = (MaxPoolWithIndices, UnpoolWithIndices, PadToMultiple, PadChannels, CropTo, ClassMask)
    return {cls.__name__: cls for cls in twins}


# --- Keras 3 -> tf_keras ------------------------------------------------------------------------


def _policy_name(dtype) -> Any:
    # Keras 3 serialises a dtype policy as {"class_name": "DTypePolicy", "config": {"name": ..}};
    # tf_keras takes the policy name.
    if isinstance(dtype, dict):
        return dtype.get("config", {}).get("name", "float32")
    return dtype


def _tf_keras_config(config: dict) -> dict:
    converted = {}
    for key, value in config.items():
        if key.endswith("_initializer"):
            # Every weight is copied from the Keras 3 model, so initial values never matter, and
            # Keras 3 initialisers (FCN's bilinear one, new config keys) need not exist in tf_keras.
            continue
        if key == "dtype":
            value = _policy_name(value)
        elif isinstance(value, dict) and "class_name" in value:
            # Regularisers, constraints, activations: Keras 3's {"module", "class_name",
            # "config", "registered_name"} -> tf_keras' {"class_name", "config"}.
            value = {"class_name": value["class_name"], "config": value.get("config") or {}}
        converted[key] = value
    return converted


def _make_tf_keras_layer(layer_config: dict, tf_keras, twins: dict):
    class_name = layer_config["class_name"]
    name = layer_config.get("name", layer_config["config"].get("name"))
    registered = layer_config.get("registered_name") or ""
    module = layer_config.get("module") or ""
    if registered.startswith(f"{PACKAGE}>") or module.startswith("edgeseg."):
        cls = twins.get(class_name)
    elif module.startswith("keras.layers") or module == "keras.src.layers":
        cls = getattr(tf_keras.layers, class_name, None)
    else:
        cls = None
    if cls is None:
        raise ValueError(
            f"layer {name!r} of class {class_name} (module {module or '?'}) has no tf_keras "
            f"equivalent; supported: the built-in Keras layers and edgeseg's {', '.join(twins)}"
        )
    config = _tf_keras_config(layer_config["config"])
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"layer {name!r} ({class_name}): tf_keras cannot take its Keras 3 config {config}: {error}"
        ) from error


def _resolve(value, tensors: dict):
    """Replaces serialised Keras 3 tensors in call arguments with the tf_keras tensors."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = tuple(value["config"]["keras_history"])
            return tensors[history]
        return {k: _resolve(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, tensors) for v in value)
    return value


def _endpoints(value) -> list[tuple]:
    # Functional configs hold ["name", node, tensor] for one endpoint, a list of them for several.
    if value and isinstance(value[0], str):
        return [tuple(value)]
    return [tuple(v) for v in value]


def to_tf_keras(model):
    """Rebuilds a Keras 3 functional edgeseg model as the same graph in tf_keras, same weights.

    Layer names, the call graph and every weight carry over; the result computes the same
    function (up to float rounding) and can be wrapped by TF Model Optimization.

    Raises:
        ValueError: the model is not functional, has a layer with no tf_keras equivalent, or a
            weight could not be matched by layer and weight name.
    """
    import tensorflow as tf

    tf_keras = _import_tf_keras()
    twins = tf_keras_layers()
    config = model.get_config()
    if not isinstance(config, dict) or "layers" not in config or "output_layers" not in config:
        raise ValueError(
            f"to_tf_keras needs a functional Keras model (keras.Model(inputs, outputs)); "
            f"got {type(model).__name__}"
        )
    tensors: dict[tuple, Any] = {}
    for layer_config in config["layers"]:
        name = layer_config["name"]
        if layer_config["class_name"] == "InputLayer":
            input_config = layer_config["config"]
            shape = input_config.get("batch_shape") or input_config.get("batch_input_shape")
            tensors[(name, 0, 0)] = tf_keras.Input(
                batch_shape=tuple(shape), dtype=_policy_name(input_config.get("dtype")), name=name
            )
            continue
        layer = _make_tf_keras_layer(layer_config, tf_keras, twins)
        for node_index, node in enumerate(layer_config["inbound_nodes"]):
            args = _resolve(node.get("args", []), tensors)
            kwargs = {
                key: _resolve(value, tensors)
                for key, value in node.get("kwargs", {}).items()
                if key not in _DROPPED_CALL_KWARGS
            }
            outputs = layer(*args, **kwargs)
            for tensor_index, tensor in enumerate(tf.nest.flatten(outputs)):
                tensors[(name, node_index, tensor_index)] = tensor
    inputs = [tensors[key] for key in _endpoints(config["input_layers"])]
    outputs = [tensors[key] for key in _endpoints(config["output_layers"])]
    twin = tf_keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )
    _copy_weights(_named_weights(model.layers), _named_weights(twin.layers), "Keras 3", "tf_keras")
    return twin


def from_tf_keras(tf_keras_model, keras3_model):
    """Copies the weights of a tf_keras twin (plain, QAT or pruned) into the Keras 3 model.

    Wrappers (tfmot's quantize and prune wrappers) are looked through: their inner layer's
    float weights are copied, their quantiser ranges and pruning masks are not. Strip a pruned
    model first (``strip_pruning``) so that the copied kernels hold the zeros.

    Returns:
        ``keras3_model``, updated in place.
    """
    _copy_weights(
        _named_weights(tf_keras_model.layers), _named_weights(keras3_model.layers), "tf_keras", "Keras 3"
    )
    return keras3_model


def _inner_layer(layer):
    # tfmot's QuantizeWrapper / PruneLowMagnitude keep the wrapped layer in `.layer`.
    while hasattr(layer, "layer") and type(layer).__name__ in (
        "QuantizeWrapper",
        "QuantizeWrapperV2",
        "PruneLowMagnitude",
    ):
        layer = layer.layer
    return layer


def _weight_name(variable) -> str:
    # Keras 3: "kernel" (path "conv/kernel"); tf_keras: "conv/kernel:0".
    return variable.name.split(":")[0].rsplit("/", 1)[-1]


def _named_weights(layers) -> dict[tuple[str, str], Any]:
    named = {}
    for layer in layers:
        if type(layer).__name__ in _QUANTIZER_ONLY_LAYERS:
            continue
        inner = _inner_layer(layer)
        for variable in inner.weights:
            key = (inner.name, _weight_name(variable))
            if key in named:
                raise ValueError(f"two weights named {key[1]!r} in layer {key[0]!r}")
            named[key] = variable
    return named


def _copy_weights(source: dict, target: dict, source_kind: str, target_kind: str) -> None:
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    if missing or extra:
        raise ValueError(
            f"the {source_kind} and {target_kind} models do not have the same weights: "
            f"{len(missing)} {target_kind} weight(s) have no source (first: "
            f"{['/'.join(k) for k in missing[:5]]}), {len(extra)} {source_kind} weight(s) no "
            f"destination (first: {['/'.join(k) for k in extra[:5]]})"
        )
    for key, variable in target.items():
        value = np.asarray(source[key])
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"weight {'/'.join(key)} has shape {tuple(value.shape)} in the {source_kind} "
                f"model but {tuple(variable.shape)} in the {target_kind} model"
            )
        variable.assign(value)


# --- quantisation-aware training ----------------------------------------------------------------


@functools.cache
def quantize_configs() -> dict[str, type]:
    """The QuantizeConfigs used for layers outside tfmot's default 8-bit registry."""
    tfmot = _import_tfmot()
    tf_keras = _import_tf_keras()
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


def _follows_linear_conv(layer) -> bool:
    """Whether a batch norm directly follows a linear Conv2D / DepthwiseConv2D (tfmot folds it)."""
    inbound = [n.inbound_layers for n in layer._inbound_nodes]
    if len(inbound) != 1 or isinstance(inbound[0], (list, tuple)):
        return False
    previous = inbound[0]
    return type(previous).__name__ in ("Conv2D", "DepthwiseConv2D") and (
        previous.get_config().get("activation") == "linear"
    )


def _quantize_config_for(layer, configs: dict):
    kind = type(layer).__name__
    if kind in tf_keras_layers():
        return configs["PassThroughQuantizeConfig"]()
    if kind == "PReLU":
        return configs["OutputQuantizeConfig"]()
    if kind == "BatchNormalization" and not _follows_linear_conv(layer):
        return configs["OutputQuantizeConfig"]()
    return None  # tfmot's registry and transforms decide


def quantize_aware(tf_keras_model):
    """Wraps a tf_keras twin for quantisation-aware training (tfmot's default 8-bit scheme).

    Every layer is quantised: the registry's layers by tfmot, PReLU and lone batch norms with
    an output quantiser, edgeseg's pooling / unpooling / pad / crop layers with none (see the
    module docstring). The weights are kept.
    """
    tfmot = _import_tfmot()
    tf_keras = _import_tf_keras()
    qk = tfmot.quantization.keras
    configs = quantize_configs()

    def annotate(layer):
        return qk.quantize_annotate_layer(layer, _quantize_config_for(layer, configs))

    annotated = tf_keras.models.clone_model(tf_keras_model, clone_function=annotate)
    with qk.quantize_scope({**tf_keras_layers(), **configs}):
        return qk.quantize_apply(annotated)


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


def _tf_keras_loss(class_weights, ignore_index: int):
    tf_keras = _import_tf_keras()

    class MaskedSparseCrossEntropy(tf_keras.losses.Loss):
        # __call__ is replaced so that per-pixel sample weights reach the normalisation
        # (tf_keras' Loss would multiply the reduced loss by them).
        def __call__(self, y_true, y_pred, sample_weight=None):
            return masked_sparse_cross_entropy(
                y_true, y_pred, sample_weight, class_weights, ignore_index
            )

    return MaskedSparseCrossEntropy(name="masked_sparse_cross_entropy")


def _check_logits_model(model) -> None:
    last = type(model.layers[-1]).__name__
    if last in ("ClassMask", "Softmax"):
        raise ValueError(
            f"fine-tuning needs a model that outputs logits; {model.name!r} ends in {last} "
            "(build it with output='logits' and copy the weights over)"
        )


def _steps(train_data, steps_per_epoch: int | None) -> int:
    if steps_per_epoch is not None:
        return int(steps_per_epoch)
    cardinality = int(train_data.cardinality())
    if cardinality < 1:
        raise ValueError(
            "train_data has an unknown or infinite number of batches; pass steps_per_epoch"
        )
    return cardinality


def _fit(model, train_data, val_data, epochs, lr, loss, steps_per_epoch, callbacks, verbose):
    tf_keras = _import_tf_keras()
    model.compile(optimizer=tf_keras.optimizers.Adam(lr), loss=loss)
    model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=list(callbacks),
        verbose=verbose,
    )
    return model


def qat_finetune(
    model,
    train_data,
    val_data=None,
    epochs: int = 2,
    lr: float = 1e-4,
    loss=None,
    class_weights=None,
    ignore_index: int = IGNORE_INDEX,
    steps_per_epoch: int | None = None,
    callbacks: Iterable = (),
    verbose: int = 0,
):
    """Quantisation-aware fine-tuning of a trained Keras 3 edgeseg model.

    Args:
        model: a Keras 3 functional model with a logits output.
        train_data: a ``tf.data.Dataset`` of (image float32 [0, 1] (N, H, W, 3), label int
            (N, H, W)) batches, optionally with a third element, per-pixel weights.
        val_data: the same for validation, or None.
        lr: Adam's learning rate; small (1e-4 to 1e-5), the weights are already trained.
        loss: a tf_keras loss; default: :func:`masked_sparse_cross_entropy` with
            ``class_weights`` and ``ignore_index``.
    Returns:
        The QAT tf_keras model (fake-quantised); convert it with :func:`convert_qat_to_tflite`.
        Its ``history`` attribute holds the fit history.
    """
    _check_logits_model(model)
    qat_model = quantize_aware(to_tf_keras(model))
    return _fit(
        qat_model,
        train_data,
        val_data,
        epochs,
        lr,
        loss or _tf_keras_loss(class_weights, ignore_index),
        steps_per_epoch,
        callbacks,
        verbose,
    )


def convert_qat_to_tflite(
    qat_model,
    representative_data: Callable[[], Iterable[np.ndarray]] | None = None,
    io_type: str = "uint8",
) -> bytes:
    """Converts a QAT tf_keras model to a full-int8 TFLite flatbuffer (batch 1, builtins only).

    The fake-quantisation ranges learnt in training set the scales; ``representative_data``
    (a callable returning float32 images (H, W, C) or batches (1, H, W, C)) calibrates the
    tensors that carry none (those of the pass-through layers, before the converter propagates
    scales), as for :func:`edgeseg.converters.tflite.convert_keras_to_tflite`.

    Raises:
        ValueError: bad ``io_type``, or the flatbuffer has a non-builtin operator.
    """
    import tensorflow as tf

    from edgeseg.converters.tflite import IO_TYPES, _configure, non_builtin_ops

    if io_type not in IO_TYPES:
        raise ValueError(f"io_type must be one of {', '.join(IO_TYPES)}; got {io_type!r}")
    input_shape = (1, *qat_model.inputs[0].shape[1:])

    @tf.function(input_signature=[tf.TensorSpec(input_shape, tf.float32, name="image")])
    def serve(image):
        return qat_model(image, training=False)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], qat_model
    )
    if representative_data is None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_type != "float32":
            converter.inference_input_type = getattr(tf, io_type)
            converter.inference_output_type = getattr(tf, io_type)
    else:
        _configure(converter, "int8", representative_data, io_type)
    content = converter.convert()
    bad = non_builtin_ops(content)
    if bad:
        raise ValueError(f"the QAT model converted with non-builtin TFLite operators: {bad}")
    return content


# --- pruning ------------------------------------------------------------------------------------


PRUNABLE_LAYERS = ("Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "Dense")


def _representative_from(data, count: int) -> Callable[[], Iterable[np.ndarray]]:
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


def kernel_sparsity(model) -> dict:
    """Fraction of zero kernel weights per prunable layer and overall (Keras 3 or tf_keras).

    Returns:
        ``{"layers": {name: {"weights", "zeros", "sparsity"}}, "kernel_sparsity": zeros /
        weights over those kernels, "model_sparsity": zeros / parameters over all weights}``.
    """
    layers = {}
    total_params = total_zeros = 0
    for layer in model.layers:
        inner = _inner_layer(layer)
        for variable in inner.weights:
            value = np.asarray(variable)
            zeros = int(np.count_nonzero(value == 0))
            name = _weight_name(variable)
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
    model,
    train_data,
    epochs: int = 2,
    target_sparsity: float = 0.5,
    lr: float = 1e-4,
    val_data=None,
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
):
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

    tfmot = _import_tfmot()
    tf_keras = _import_tf_keras()
    if not 0.0 <= target_sparsity < 1.0:
        raise ValueError(f"target_sparsity must be in [0, 1), got {target_sparsity!r}")
    _check_logits_model(model)
    sparsity = tfmot.sparsity.keras
    steps = _steps(train_data, steps_per_epoch) * int(epochs)
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
    _fit(
        pruning,
        train_data,
        val_data,
        epochs,
        lr,
        loss or _tf_keras_loss(class_weights, ignore_index),
        steps_per_epoch,
        [sparsity.UpdatePruningStep(), *callbacks],
        verbose,
    )
    stripped = sparsity.strip_pruning(pruning)
    pruned = keras.models.clone_model(model)
    from_tf_keras(stripped, pruned)

    calibration = representative_data or _representative_from(train_data, calibration_images)
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
