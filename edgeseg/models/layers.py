"""Layers shared by the model families, written with ``keras.ops`` only.

Every layer here runs under the TensorFlow and JAX backends and converts to TFLite with builtin
operators only: pooling indices are computed with strided slices, a reduction and ``argmax``
instead of ``tf.nn.max_pool_with_argmax`` (which has no TFLite builtin, tensorflow issue 23320),
and unpooling with comparisons, selects and reshapes instead of a scatter.

All layers are channels-last (NHWC) and need static spatial sizes: the models are built for one
input size, which is what TFLite, TensorRT and fixed-shape accelerators want.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

PACKAGE = "edgeseg"


def first_argmax(x, axis: int = -1):
    """Index of the first maximum along ``axis`` (int32), with TFLite builtin operators only.

    ``keras.ops.argmax`` on the TensorFlow backend adds a sign-bit test (``BitwiseAnd``) that has
    no TFLite builtin; max + equal + select + min converts everywhere and makes the tie rule
    explicit: the lowest index wins.
    """
    size = x.shape[axis]
    positions = ops.reshape(
        ops.arange(size, dtype="int32"), [size if i == axis % len(x.shape) else 1 for i in range(len(x.shape))]
    )
    is_max = ops.equal(x, ops.max(x, axis=axis, keepdims=True))
    return ops.min(ops.where(is_max, positions, size), axis=axis)


def _static_hw(shape, layer_name: str) -> tuple[int, int]:
    height, width = shape[1], shape[2]
    if height is None or width is None:
        raise ValueError(
            f"{layer_name} needs a static height and width, got input shape {tuple(shape)}; "
            "build the model with a fixed input_shape=(H, W, C)"
        )
    return int(height), int(width)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MaxPoolWithIndices(keras.layers.Layer):
    """k x k max pooling with stride k that also returns where each maximum was.

    The indices are window-local: ``r * k + c`` for the row ``r`` and column ``c`` of the maximum
    inside its k x k window (0..k*k-1, int32). That is all max-unpooling needs, it stays small,
    and it is exact after int8 quantisation. ``flat_indices`` converts them to the flat
    ``(y * W + x) * C + ch`` indices of ``tf.nn.max_pool_with_argmax``.

    Ties are resolved to the first maximum in row-major order inside the window (the lowest
    index), as NumPy's ``argmax`` and TensorFlow's CPU ``max_pool_with_argmax`` do.

    A height or width that is not a multiple of k is handled as "ceil mode": the last row / column
    is repeated to fill the window. Because ties go to the first occurrence, an index never
    points at a repeated (padding) element.

    Returns:
        ``(pooled, indices)``, both of shape ``(N, ceil(H / k), ceil(W / k), C)``.
    """

    def __init__(self, pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        if int(pool_size) < 2:
            raise ValueError(f"pool_size must be an integer >= 2, got {pool_size!r}")
        self.pool_size = int(pool_size)

    def call(self, inputs):
        k = self.pool_size
        x = _pad_to_windows(inputs, k, self.name)
        pooled = ops.max_pool(x, pool_size=k, strides=k, padding="valid")
        # The window element at (r, c) is the strided slice x[r::k, c::k]. Fold from the last
        # position back to the first, so that the first maximum wins. Elementwise selects on
        # 4-D maps: the stacked 5-D windows with a reduction over them cost 18 ms per layer in
        # LiteRT's reference reduce kernel at ENet's 120x160x16, this a fraction of a millisecond.
        last = k * k - 1
        indices = ops.full_like(pooled, last, dtype="int32")
        for position in range(last - 1, -1, -1):
            r, c = divmod(position, k)
            window = x[:, r::k, c::k, :]
            indices = ops.where(ops.equal(window, pooled), position, indices)
        return pooled, indices

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        k = self.pool_size
        out = (n, math.ceil(h / k), math.ceil(w / k), c)
        return out, out

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class UnpoolWithIndices(keras.layers.Layer):
    """Max-unpooling: puts each value back where ``MaxPoolWithIndices`` found its maximum.

    Every other position of the k x k window is zero (SegNet section 3, ENet section 3). The
    output is cropped to ``output_size`` (the height and width of the map that was pooled), so
    that odd sizes round-trip.

    Call with ``[values, indices]`` where both have shape ``(N, h, w, C)``.
    """

    def __init__(self, output_size: tuple[int, int], pool_size: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.pool_size = int(pool_size)

    def call(self, inputs):
        values, indices = inputs
        k = self.pool_size
        h, w = _static_hw(values.shape, self.name)
        channels = values.shape[-1]
        zeros = ops.zeros_like(values)
        rows = []
        for r in range(k):
            # (N, h, w, k, C) -> (N, h, w*k, C): column c of window j lands at x = j*k + c.
            row = ops.stack(
                [ops.where(ops.equal(indices, r * k + c), values, zeros) for c in range(k)],
                axis=3,
            )
            rows.append(ops.reshape(row, (-1, h, w * k, channels)))
        # (N, h, k, w*k, C) -> (N, h*k, w*k, C): row r of window i lands at y = i*k + r.
        out = ops.reshape(ops.stack(rows, axis=2), (-1, h * k, w * k, channels))
        out_h, out_w = self.output_size
        if (out_h, out_w) != (h * k, w * k):
            out = out[:, :out_h, :out_w, :]
        return out

    def compute_output_shape(self, input_shape):
        values_shape = input_shape[0]
        return (values_shape[0], *self.output_size, values_shape[-1])

    def get_config(self):
        return {
            **super().get_config(),
            "output_size": list(self.output_size),
            "pool_size": self.pool_size,
        }


def space_to_depth(x, k: int):
    """(N, H, W, C) -> (N, H/k, W/k, k*k*C): window position ``p = r*k + c`` holds channels
    ``p*C .. p*C + C - 1`` (reshape / transpose / reshape; XNNPACK runs all three)."""
    _, height, width, channels = x.shape
    x = ops.reshape(x, (-1, height // k, k, width // k, k, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, height // k, width // k, k * k * channels))


def depth_to_space(x, k: int):
    """The inverse of :func:`space_to_depth`."""
    _, h, w, depth = x.shape
    channels = depth // (k * k)
    x = ops.reshape(x, (-1, h, w, k, k, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, h * k, w * k, channels))


def _pad_to_windows(x, k: int, layer_name: str):
    """Ceil mode: repeats the last row / column until height and width are multiples of k."""
    height, width = _static_hw(x.shape, layer_name)
    if -height % k:
        x = ops.concatenate([x] + [x[:, -1:, :, :]] * (-height % k), axis=1)
    if -width % k:
        x = ops.concatenate([x] + [x[:, :, -1:, :]] * (-width % k), axis=2)
    return x


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwitchMaxPool(MaxPoolWithIndices):
    """:class:`MaxPoolWithIndices` for export: the same maxima, and the indices as switches.

    The switches are the one-hot form of the window-local index, laid out as
    :func:`space_to_depth` lays out the windows: ``(N, h, w, k*k*C)``, 1 at the first maximum
    of each window, 0 elsewhere. Every operator is one XNNPACK runs, in float and in int8
    (max-pool, reshape / transpose, slices, subtract, multiply, CEIL), where the index form needs
    EQUAL and SELECT_V2, which XNNPACK does not run: each of those splits the graph into another
    delegate partition and runs in the reference kernels (ENet: 5 partitions and a third of the
    fp32 time at 480x320). The switches are exact after int8 quantisation: they are 0 or 1, and
    "is not the maximum" is ``min(ceil(max - x), 1)``, which is 0 only where x equals the
    maximum (in int8 both come from the same quantised values; the converter runs CEIL in float).
    :class:`SwitchUnpool` consumes them. ``deployable`` swaps the pair in for export.
    """

    def call(self, inputs):
        k = self.pool_size
        x = _pad_to_windows(inputs, k, self.name)
        channels = x.shape[-1]
        pooled = ops.max_pool(x, pool_size=k, strides=k, padding="valid")
        windows = space_to_depth(x, k)
        below = ops.minimum(ops.ceil(ops.concatenate([pooled] * (k * k), axis=-1) - windows), 1.0)
        # The first maximum: switch_p = before_p - before_(p+1), where before_p = 1 while every
        # position before p is below the maximum (before_0 = 1); the last position needs no test.
        switches = []
        before = None
        for p in range(k * k - 1):
            below_p = below[..., p * channels:(p + 1) * channels]
            after = below_p if before is None else before * below_p
            switches.append(1.0 - below_p if before is None else before - after)
            before = after
        switches.append(before)
        return pooled, ops.concatenate(switches, axis=-1)

    def compute_output_shape(self, input_shape):
        pooled, _ = super().compute_output_shape(input_shape)
        k = self.pool_size
        return pooled, (*pooled[:-1], None if pooled[-1] is None else pooled[-1] * k * k)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SwitchUnpool(UnpoolWithIndices):
    """:class:`UnpoolWithIndices` from :class:`SwitchMaxPool`'s switches: each value times its
    window's switches, back to the full map (concatenate, multiply, :func:`depth_to_space`)."""

    def call(self, inputs):
        values, switches = inputs
        k = self.pool_size
        out = depth_to_space(switches * ops.concatenate([values] * (k * k), axis=-1), k)
        out_h, out_w = self.output_size
        if tuple(out.shape[1:3]) != (out_h, out_w):
            out = out[:, :out_h, :out_w, :]
        return out


@keras.saving.register_keras_serializable(package=PACKAGE)
class PadToMultiple(keras.layers.Layer):
    """Zero-pads the bottom and right so that height and width are multiples of ``multiple``.

    Models with an output stride s use it on their input and ``CropTo`` on their output, so that
    any input size (640x360, 1920x1080) gives an output of the same size.
    """

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        self.multiple = int(multiple)

    def _pads(self, shape):
        height, width = _static_hw(shape, self.name)
        return -height % self.multiple, -width % self.multiple

    def call(self, inputs):
        pad_h, pad_w = self._pads(inputs.shape)
        if not (pad_h or pad_w):
            return inputs
        return ops.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])

    def compute_output_shape(self, input_shape):
        pad_h, pad_w = self._pads(input_shape)
        return (input_shape[0], input_shape[1] + pad_h, input_shape[2] + pad_w, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PadChannels(keras.layers.Layer):
    """Zero-pads the channel axis up to ``channels`` (ENet's downsampling shortcut)."""

    def __init__(self, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)

    def call(self, inputs):
        extra = self.channels - inputs.shape[-1]
        if extra < 0:
            raise ValueError(f"{self.name}: input has {inputs.shape[-1]} channels > {self.channels}")
        if extra == 0:
            return inputs
        return ops.pad(inputs, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package=PACKAGE)
class CropTo(keras.layers.Layer):
    """Crops a map to ``size`` (height, width), from the top-left or the centre.

    Top-left undoes ``PadToMultiple``; centre is U-Net's crop of the encoder map before
    concatenation (Ronneberger et al., section 2).
    """

    def __init__(self, size: tuple[int, int], centre: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.size = (int(size[0]), int(size[1]))
        self.centre = bool(centre)

    def _offsets(self, shape):
        height, width = _static_hw(shape, self.name)
        out_h, out_w = self.size
        if out_h > height or out_w > width:
            raise ValueError(f"{self.name}: cannot crop {height}x{width} to {out_h}x{out_w}")
        if not self.centre:
            return 0, 0
        return (height - out_h) // 2, (width - out_w) // 2

    def call(self, inputs):
        top, left = self._offsets(inputs.shape)
        out_h, out_w = self.size
        if (top, left) == (0, 0) and tuple(inputs.shape[1:3]) == self.size:
            return inputs
        return inputs[:, top : top + out_h, left : left + out_w, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "centre": self.centre}


@keras.saving.register_keras_serializable(package=PACKAGE)
class LeakyDecomposedPReLU(keras.layers.Layer):
    """PReLU rewritten with operators that integer accelerators run: ``L + k * (x - L)``.

    ``L = leaky_relu(x, s)`` with a fixed scalar slope ``s`` and ``k = (alpha - s) / (1 - s)`` per
    channel, which equals ``max(x, 0) + alpha * min(x, 0)``. XNNPACK (LiteRT's CPU delegate) runs
    int8 LEAKY_RELU, SUB, MUL and ADD but not int8 PRELU: a full-int8 ENet with PRELU falls back
    to the reference kernel at every one of its 67 activations and runs slower than fp32. The
    export swaps this layer in for ``keras.layers.PReLU`` (same ``alpha`` weight) before int8
    conversion; training keeps PReLU.
    """

    def __init__(self, shared_axes=None, slope: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        if not 0 < slope < 1:
            raise ValueError(f"slope must be in (0, 1) (XNNPACK skips 0); got {slope}")
        self.shared_axes = None if shared_axes is None else list(shared_axes)
        self.slope = float(slope)

    def build(self, input_shape):
        shape = list(input_shape[1:])
        for axis in self.shared_axes or ():
            shape[axis - 1] = 1
        self.alpha = self.add_weight(shape=tuple(shape), initializer="zeros", name="alpha")

    def call(self, inputs):
        leaky = ops.leaky_relu(inputs, negative_slope=self.slope)
        k = (self.alpha - self.slope) / (1.0 - self.slope)
        return leaky + k * (inputs - leaky)

    def get_config(self):
        return {**super().get_config(), "shared_axes": self.shared_axes, "slope": self.slope}


def subpixel_taps(kernel_size: int, stride: int, padding: str) -> tuple[int, list[list[tuple]]]:
    """Which kernel taps feed which output phase of a 1-D transposed convolution.

    A transposed convolution adds ``x[i] * K[t]`` at output ``s*i + t - p`` (``p`` the padding
    before, as in the forward convolution it is the gradient of). Output ``s*m + r`` (phase
    ``r``) therefore reads ``x[m + d]`` through tap ``t`` where ``d = (r + p - t) / s`` is whole.

    Returns:
        ``(p, taps)``: ``taps[r]`` lists ``(t, d)`` for phase ``r``.
    """
    p = max(kernel_size - stride, 0) // 2 if padding == "same" else 0
    taps = [[(t, (r + p - t) // stride) for t in range(kernel_size) if (r + p - t) % stride == 0]
            for r in range(stride)]
    return p, taps


@keras.saving.register_keras_serializable(package=PACKAGE)
class SubpixelConvTranspose(keras.layers.Layer):
    """A strided transposed convolution as one convolution and a depth-to-space (no zeros inserted).

    Each of the ``s x s`` output phases is a small convolution of the input with some of the
    kernel's taps (:func:`subpixel_taps`); their kernels are stacked on the output channels of one
    convolution, whose ``s*s*C`` channels a reshape / transpose / reshape interleaves into the
    ``s``-times larger map. The layer holds the same ``kernel`` ``(k, k, out, in)`` and ``bias``
    as ``keras.layers.Conv2DTranspose`` and computes the same function, for ``padding="same"``
    and for ``"valid"`` with ``k <= s``. LiteRT runs ENet's final 2x2 full convolution this way in
    0.5 ms instead of 2 ms (fp32) and 13 ms (int8: XNNPACK's deconvolution with few channels) at
    320x240.
    """

    def __init__(self, filters: int, kernel_size: int, stride: int, padding: str = "valid",
                 use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if padding not in ("same", "valid") or (padding == "valid" and kernel_size > stride):
            raise ValueError(
                f"SubpixelConvTranspose computes padding 'same', or 'valid' with kernel_size <= "
                f"stride; got padding {padding!r}, kernel_size {kernel_size}, stride {stride}"
            )
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.padding = padding
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(shape=(k, k, self.filters, input_shape[-1]), name="kernel")
        self.bias = self.add_weight(shape=(self.filters,), initializer="zeros",
                                    name="bias") if self.use_bias else None

    def _phase_kernel(self):
        """(n, n, in, s*s*out): the phases' kernels, zero where a phase has no tap."""
        s, k = self.stride, self.kernel_size
        _, taps = subpixel_taps(k, s, self.padding)
        offsets = [d for phase in taps for _, d in phase]
        low, size = min(offsets), max(offsets) - min(offsets) + 1
        zeros = ops.zeros_like(ops.transpose(self.kernel[0, 0], (1, 0)))  # (in, out)
        rows = []
        for a in range(size):
            cols = []
            for b in range(size):
                blocks = []
                for tr in taps:
                    for tc in taps:
                        t_r = next((t for t, d in tr if d - low == a), None)
                        t_c = next((t for t, d in tc if d - low == b), None)
                        blocks.append(zeros if t_r is None or t_c is None
                                      else ops.transpose(self.kernel[t_r, t_c], (1, 0)))
                cols.append(ops.concatenate(blocks, axis=-1))  # (in, s*s*out), phase-major
            rows.append(ops.stack(cols, axis=0))
        return ops.stack(rows, axis=0), low, size

    def call(self, inputs):
        s = self.stride
        _static_hw(inputs.shape, self.name)  # a fixed size, as depth_to_space needs
        kernel, low, size = self._phase_kernel()
        # Output phase m reads inputs m + low .. m + low + size - 1: pad so every m in 0..H-1
        # has them (zeros outside the map, as the transposed convolution has).
        before, after = -low, low + size - 1
        x = inputs
        if before or after:
            x = ops.pad(x, [[0, 0], [max(before, 0), max(after, 0)],
                            [max(before, 0), max(after, 0)], [0, 0]])
        y = ops.conv(x, kernel, strides=1, padding="valid")
        if self.bias is not None:
            # Added before the depth-to-space, once per phase (phase-major channels), so that
            # the converter folds it into the convolution's bias: a separate int8 ADD of a bias
            # far smaller than the map is outside the input / output scale ratio XNNPACK takes.
            y = y + ops.tile(self.bias, [s * s])
        return depth_to_space(y, s)

    def _output_hw(self, height, width):
        # Keras' lengths: s*H for "same", s*H + max(k - s, 0) for "valid" (here k <= s).
        return height * self.stride, width * self.stride

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        return (n, *self._output_hw(h, w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "stride": self.stride, "padding": self.padding, "use_bias": self.use_bias}


NEGLIGIBLE_SLOPE = 1 / 512
"""A full-int8 export runs a PReLU whose slopes are all below this as a ReLU. The difference,
``alpha * x`` for negative ``x``, is under half of one int8 step of the layer's range (1/255 of
it), and the three-operator form would not stay in XNNPACK: its ``alpha * x`` tensor has a
quantisation scale under 1/1024 of the sum's, outside what XNNPACK's int8 ADD and SUB take."""


def _is_subpixel_transpose(layer) -> bool:
    if not isinstance(layer, keras.layers.Conv2DTranspose):
        return False
    config = layer.get_config()
    kernel, strides = tuple(config["kernel_size"]), tuple(config["strides"])
    square = kernel[0] == kernel[1] and strides[0] == strides[1] > 1
    padding_ok = config["padding"] == "same" or kernel[0] <= strides[0]
    return (square and padding_ok and tuple(config["dilation_rate"]) == (1, 1)
            and config.get("output_padding") is None and config["activation"] == "linear"
            and config["data_format"] == "channels_last")


def deployable(model: keras.Model, integer: bool = False) -> keras.Model:
    """The same function with layers LiteRT runs faster; ``model`` itself if nothing changes.

    Replaces pooling indices and unpooling by their switch form (:class:`SwitchMaxPool`,
    :class:`SwitchUnpool`), non-overlapping transposed convolutions by
    :class:`SubpixelConvTranspose`, and with ``integer`` (a full-int8 export) ``PReLU`` by
    :class:`LeakyDecomposedPReLU`, or by a ReLU where every slope is below
    :data:`NEGLIGIBLE_SLOPE` (an untrained PReLU's are all 0), in nested models too (a
    detector's mask head). Weights are carried over unchanged, layer by layer.

    Of the PReLU forms XNNPACK runs in int8, the four-operator one keeps the most accuracy: on
    the trained ENet of ``tests/converters/test_export.py`` its int8 mIoU drop is 1.4 points
    where ``alpha * x + relu(x - alpha * x)`` (three operators, 2% faster) loses 2.0 and
    ``x + relu((alpha - 1) * x)`` (two) 1.95: both pass the positive side through two
    requantised terms or the negative side through a cancellation.
    """

    def replace(layer):
        if type(layer) is MaxPoolWithIndices:
            return SwitchMaxPool(layer.pool_size, name=layer.name)
        if type(layer) is UnpoolWithIndices:
            return SwitchUnpool(layer.output_size, layer.pool_size, name=layer.name)
        if integer and isinstance(layer, keras.layers.PReLU):
            alpha = keras.ops.convert_to_numpy(layer.alpha)
            if float(np.abs(alpha).max()) < NEGLIGIBLE_SLOPE:
                return keras.layers.ReLU(name=layer.name)
            return LeakyDecomposedPReLU(shared_axes=layer.get_config().get("shared_axes"),
                                        name=layer.name)
        if _is_subpixel_transpose(layer):
            config = layer.get_config()
            return SubpixelConvTranspose(config["filters"], config["kernel_size"][0],
                                         config["strides"][0], config["padding"],
                                         use_bias=config["use_bias"], name=layer.name)
        if isinstance(layer, keras.Model):
            nested = deployable(layer, integer)
            return nested if nested is not layer else None
        return None

    replacements = {id(layer): new for layer in model.layers
                    if (new := replace(layer)) is not None}
    if not replacements:
        return model

    def clone(layer):
        new = replacements.get(id(layer))
        return new if new is not None else layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer, new in zip(model.layers, copy.layers, strict=True):
        # A nested model's copy came with its weights; a PReLU that became a ReLU has none.
        if not (isinstance(new, keras.Model) and id(layer) in replacements) and new.weights:
            new.set_weights(layer.get_weights())
    return copy


class ClassMask(keras.layers.Layer):
    """In-graph argmax over the class axis, as a uint8 label map (what an app on a device wants)."""

    def call(self, inputs):
        return ops.cast(first_argmax(inputs, axis=-1), "uint8")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape[:-1], dtype="uint8")


OUTPUTS = ("logits", "probs", "mask")


def segmentation_output(logits, output: str):
    """Turns per-pixel class logits into the requested output: logits, probs or mask."""
    if output == "logits":
        return logits
    if output == "probs":
        return keras.layers.Softmax(axis=-1, name="probs", dtype="float32")(logits)
    if output == "mask":
        return ClassMask(name="mask")(logits)
    raise ValueError(f"output must be one of {', '.join(OUTPUTS)}; got {output!r}")


def flat_indices(window_indices, input_shape: tuple[int, int, int], pool_size: int = 2):
    """Converts window-local indices to ``tf.nn.max_pool_with_argmax``'s flat indices (NumPy).

    Args:
        window_indices: array (N, h, w, C) from ``MaxPoolWithIndices``.
        input_shape: (H, W, C) of the map that was pooled.
    Returns:
        int64 array (N, h, w, C) of ``(y * W + x) * C + c`` with y, x clamped into the map.
    """
    import numpy as np

    idx = np.asarray(window_indices).astype(np.int64)
    height, width, channels = input_shape
    _, h, w, c = idx.shape
    k = pool_size
    y = np.arange(h)[None, :, None, None] * k + idx // k
    x = np.arange(w)[None, None, :, None] * k + idx % k
    y = np.minimum(y, height - 1)
    x = np.minimum(x, width - 1)
    return (y * width + x) * channels + np.arange(c)[None, None, None, :]
