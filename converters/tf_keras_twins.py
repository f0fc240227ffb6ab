"""The tf_keras (Keras 2) twin of a Keras 3 edgeseg model, for TF Model Optimization.

TF Model Optimization (tfmot) wraps ``tf_keras`` layers only, and edgeseg's models are Keras 3.
So the model is rebuilt as the same graph in ``tf_keras`` (:func:`to_tf_keras`): every built-in
layer from its Keras 3 config, every edgeseg layer (pooling with indices, unpooling, padding,
cropping) from a ``tf_keras`` twin written with the same TensorFlow operators
(:func:`tf_keras_layers`), and the weights copied by layer and weight name, each one accounted
for. After fine-tuning (:mod:`edgeseg.converters.qat`, :mod:`edgeseg.converters.pruning`) the
weights go back into the Keras 3 model (:func:`from_tf_keras`).

Everything here imports TensorFlow, ``tf_keras`` and tfmot inside functions; they come with
``pip install "edgeseg[train]"``. Importing tfmot sets ``TF_USE_LEGACY_KERAS=1`` in the process
environment (its ``compat`` module); that would route ``tf.keras`` to ``tf_keras`` for the rest
of the process and for any subprocess. :func:`import_tfmot` resolves ``tf.keras`` first and
restores the variable.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import keras
    import tf_keras

INSTALL_HINT = 'pip install "edgeseg[train]"'
PACKAGE = "edgeseg"
# Keras 3 call arguments that the tf_keras twin graph must not fix: tf_keras sets the training
# flag from fit / predict, and a mask of None is the default.
_DROPPED_CALL_KWARGS = ("training", "mask")
# tfmot layers that hold only quantiser state (no counterpart in the Keras 3 model).
QUANTIZER_ONLY_LAYERS = ("QuantizeLayer",)


# --- optional dependencies ----------------------------------------------------------------------


def import_tf_keras():
    try:
        import tf_keras
    except ImportError:
        raise ImportError(
            f"quantisation-aware training and pruning need tf_keras: {INSTALL_HINT}"
        ) from None
    return tf_keras


def import_tfmot():
    """tensorflow_model_optimization, imported without changing how ``tf.keras`` resolves."""
    import_tf_keras()
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

    tf_keras = import_tf_keras()
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

    tf_keras = import_tf_keras()
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
    _copy_weights(named_weights(model.layers), named_weights(twin.layers), "Keras 3", "tf_keras")
    return twin


def from_tf_keras(tf_keras_model: tf_keras.Model, keras3_model: keras.Model) -> keras.Model:
    """Copies the weights of a tf_keras twin (plain, QAT or pruned) into the Keras 3 model.

    Wrappers (tfmot's quantize and prune wrappers) are looked through: their inner layer's
    float weights are copied, their quantiser ranges and pruning masks are not. Strip a pruned
    model first (``strip_pruning``) so that the copied kernels hold the zeros.

    Returns:
        ``keras3_model``, updated in place.
    """
    source = _batch_norms_from_convs(named_weights(tf_keras_model.layers), keras3_model)
    _copy_weights(source, named_weights(keras3_model.layers), "tf_keras", "Keras 3")
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


def weight_name(variable) -> str:
    # Keras 3: "kernel" (path "conv/kernel"); tf_keras: "conv/kernel:0".
    return variable.name.split(":")[0].rsplit("/", 1)[-1]


def layer_variables(layer):
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


def named_weights(layers) -> dict[tuple[str, str], Any]:
    named = {}
    for layer in layers:
        if type(layer).__name__ in QUANTIZER_ONLY_LAYERS:
            continue
        inner, variables = layer_variables(layer)
        for variable in variables:
            key = (inner.name, weight_name(variable))
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


def _batch_norms_from_convs(source: dict, keras3_model) -> dict:
    """Turns the diagonal 1x1 convolutions of ``edgeseg.converters.qat``'s
    ``lone_batch_norms_as_convs`` back into weights
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
