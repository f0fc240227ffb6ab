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
  scheme's own configs and graph transforms: conv + batch norm [+ ReLU] is quantised once, after
  the batch norm / activation, as the converter folds it into one int8 CONV_2D.
- PReLU is not in tfmot's registry; it gets one output quantiser. Its slopes stay float in the
  Keras graph and the converter quantises them as constants (TFLite's int8 PRELU).
- A batch norm that does not follow a convolution (ENet's after the initial concatenation and
  after the cropped transposed convolutions) becomes the equal 1x1 convolution with a diagonal
  kernel, frozen statistics folded in (:func:`_lone_batch_norms_as_convs`): TFLite would lower it
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

Importing tfmot sets ``TF_USE_LEGACY_KERAS=1`` in the process environment (its ``compat``
module); that would route ``tf.keras`` to ``tf_keras`` for the rest of the process and for any
subprocess. :func:`_import_tfmot` resolves ``tf.keras`` first and restores the variable.
"""

from __future__ import annotations

import functools
import gzip
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    import tf_keras

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
                raise ValueError(
                    f"{self.name}: input has {inputs.shape[-1]} channels > {self.channels}"
                )
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


def to_tf_keras(model: keras.Model) -> tf_keras.Model:
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


def from_tf_keras(tf_keras_model: tf_keras.Model, keras3_model: keras.Model) -> keras.Model:
    """Copies the weights of a tf_keras twin (plain, QAT or pruned) into the Keras 3 model.

    Wrappers (tfmot's quantize and prune wrappers) are looked through: their inner layer's
    float weights are copied, their quantiser ranges and pruning masks are not. Strip a pruned
    model first (``strip_pruning``) so that the copied kernels hold the zeros.

    Returns:
        ``keras3_model``, updated in place.
    """
    source = _batch_norms_from_convs(_named_weights(tf_keras_model.layers), keras3_model)
    _copy_weights(source, _named_weights(keras3_model.layers), "tf_keras", "Keras 3")
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


def _layer_variables(layer):
    """The layer that holds the model's weights (inside tfmot's wrappers) and its variables."""
    inner = _inner_layer(layer)
    if inner is layer:
        return inner, list(layer.weights)
    # A QAT wrapper swaps the inner layer's kernel attribute for a fake-quantised tensor, which
    # drops the variable from the inner layer's tracked weights; the wrapper still holds it,
    # under the inner layer's name scope (its quantiser ranges and pruning masks are under its own).
    return inner, [
        v for v in layer.weights if v.name.split(":")[0].split("/")[-2:-1] == [inner.name]
    ]


def _named_weights(layers) -> dict[tuple[str, str], Any]:
    named = {}
    for layer in layers:
        if type(layer).__name__ in _QUANTIZER_ONLY_LAYERS:
            continue
        inner, variables = _layer_variables(layer)
        for variable in variables:
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

    tf_keras = _import_tf_keras()

    @tf_keras.saving.register_keras_serializable(package=PACKAGE)
    class DiagonalKernel(tf_keras.constraints.Constraint):
        """Keeps a 1x1 C -> C convolution kernel diagonal, i.e. a per-channel scale."""

        def __call__(self, w):
            return w * tf.eye(w.shape[-1], dtype=w.dtype)[None, None]

        def get_config(self):
            return {}

    return DiagonalKernel


def _lone_batch_norms_as_convs(model):
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
    tf_keras = _import_tf_keras()
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


def _batch_norms_from_convs(source: dict, keras3_model) -> dict:
    """Turns the diagonal 1x1 convolutions of ``_lone_batch_norms_as_convs`` back into weights
    of the Keras 3 batch norms they replaced (scale, offset, mean 0, variance 1 - epsilon)."""
    source = dict(source)
    for layer in keras3_model.layers:
        name = layer.name
        if (
            type(layer).__name__ != "BatchNormalization"
            or (name, "moving_mean") in source
            or (name, "kernel") not in source
        ):
            continue
        kernel = np.asarray(source.pop((name, "kernel")))
        channels = kernel.shape[-1]
        source[(name, "gamma")] = np.diagonal(kernel[0, 0]).copy()
        source[(name, "beta")] = np.asarray(source.pop((name, "bias")))
        source[(name, "moving_mean")] = np.zeros(channels, np.float32)
        source[(name, "moving_variance")] = np.full(channels, 1.0 - layer.epsilon, np.float32)
    return source


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
    tfmot = _import_tfmot()
    tf_keras = _import_tf_keras()
    qk = tfmot.quantization.keras
    configs = quantize_configs()

    model = _lone_batch_norms_as_convs(tf_keras_model)
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
        if type(layer).__name__ in _QUANTIZER_ONLY_LAYERS:
            continue  # AllValuesQuantizer: min / max of all values seen, meant to move
        for variable in layer.non_trainable_weights:
            (ranges if _weight_name(variable) in _EMA_RANGES else restore).append(variable)
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


def _fit(
    model, train_data, val_data, epochs, lr, loss, steps_per_epoch, callbacks, verbose, run_eagerly
):
    tf_keras = _import_tf_keras()
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
        loss: a tf_keras loss; default: :func:`masked_sparse_cross_entropy` with
            ``class_weights`` and ``ignore_index``.
        calibration_batches: batches of ``train_data`` that set the activation ranges before
            training (:func:`calibrate_ranges`); 0 keeps tfmot's initial [-6, 6].
        run_eagerly: run the steps eagerly; skips tracing the training graph (a minute for
            ENet on two cores), which pays off only for a handful of steps.
    Returns:
        The QAT tf_keras model (fake-quantised); convert it with :func:`convert_qat_to_tflite`.
        Its ``history`` attribute holds the fit history.
    """
    _check_logits_model(model)
    qat_model = quantize_aware(to_tf_keras(model))
    if calibration_batches:
        calibrate_ranges(qat_model, train_data, calibration_batches)
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

    from edgeseg.converters.tflite import IO_TYPES, _configure, non_builtin_ops

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
    content = converter.convert()
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

    from edgeseg.runtime_tflite import _interpreter_class

    interpreter_class = _interpreter_class()
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


def kernel_sparsity(model: keras.Model | tf_keras.Model) -> dict:
    """Fraction of zero kernel weights per prunable layer and overall (Keras 3 or tf_keras).

    Returns:
        ``{"layers": {name: {"weights", "zeros", "sparsity"}}, "kernel_sparsity": zeros /
        weights over those kernels, "model_sparsity": zeros / parameters over all weights}``.
    """
    layers = {}
    total_params = total_zeros = 0
    for layer in model.layers:
        inner, variables = _layer_variables(layer)
        for variable in variables:
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
        run_eagerly,
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

    _check_logits_model(model)
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
        representative = _representative_from([(calibration,)], len(calibration))
        return convert_qat_to_tflite(qat_model, representative, io_type=io_type)
